"""The Kafka client libraries stay behind ``segstream.kafka_client``: only its backend
modules import kafka-python or confluent-kafka (and the ingest benchmark's bare-consumer
peer, which measures each library without segstream on purpose)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ALLOWED = {
    "kafka": {"shared/segstream/kafka_client/kafka_python.py", "bench/bench_ingest.py"},
    "confluent_kafka": {"shared/segstream/kafka_client/confluent.py", "bench/bench_ingest.py"},
}


def imported_roots(tree: ast.AST) -> list[tuple[str, int]]:
    """(top-level package, line) of every absolute import in ``tree``."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name.split(".")[0], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module.split(".")[0], node.lineno))
    return sorted(found, key=lambda f: f[1])


def test_imported_roots_sees_every_import_form() -> None:
    tree = ast.parse("import kafka\nimport kafka.errors as e\nfrom kafka.admin import X\n"
                     "def f():\n    from confluent_kafka import Consumer\n"
                     "from segstream.kafka_client import kafka_clients\nfrom . import kafka\n")
    assert imported_roots(tree) == [("kafka", 1), ("kafka", 2), ("kafka", 3),
                                    ("confluent_kafka", 5), ("segstream", 6)]


@pytest.mark.parametrize("library", sorted(ALLOWED))
def test_only_the_backend_modules_import_the_client_library(library: str) -> None:
    offenders = []
    for folder in ("shared", "services", "bench", "tests"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel in ALLOWED[library]:
                continue
            tree = ast.parse(path.read_text(), filename=rel)
            offenders += [f"{rel}:{line}" for root, line in imported_roots(tree)
                          if root == library]
    assert not offenders, (f"{library} imported outside segstream.kafka_client "
                           f"(use its interface): {', '.join(offenders)}")
