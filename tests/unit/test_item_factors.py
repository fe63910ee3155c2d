"""Item factors in a model directory: the table, its files, the encoder that carries it,
``segstream factors build`` and ``fit --model`` on such a directory."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from segstream import item_factors
from segstream.encoding import Encoder, default_model_path
from segstream.errors import ConfigError
from segstream.interest import hybrid_item_vectors
from tests.unit.test_hybrid_items import baskets, cosine
from tests.unit.test_offline_cli import MAP, events_file, run  # noqa: F401 - fixture


def test_a_table_from_events_keeps_co_taken_items_together_and_survives_a_file() -> None:
    table = item_factors.from_events(baskets(), dims=3, weight=0.5)
    assert len(table) == 7 and table.dim == 3
    assert cosine(table.factor("guitar"), table.factor("amp")) > 0.99  # type: ignore[arg-type]
    assert abs(cosine(table.factor("guitar"), table.factor("sax"))) < 0.1  # type: ignore[arg-type]
    assert table.factor("unknown") is None
    assert all(abs(np.linalg.norm(v) - 1) < 1e-6 for v in table.table().values())


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    table = item_factors.from_events(baskets(), dims=3, weight=0.25, meta={"source": "x"})
    table.save(tmp_path)
    again = item_factors.load(tmp_path)
    assert again is not None and again.items == table.items and again.weight == 0.25
    assert np.array_equal(again.matrix, table.matrix)
    assert again.meta == {"dims": 3, "scaled": True, "seed": 0, "source": "x"}
    assert item_factors.load(tmp_path / "nothing-here") is None


def test_compose_is_the_offline_hybrid_table() -> None:
    table = item_factors.from_events(baskets(), dims=3, weight=0.5)
    rng = np.random.default_rng(0)
    texts = {i: rng.normal(size=4) for i in ("guitar", "amp", "sax", "text-only")}
    wanted = ["guitar", "amp", "sax", "reed", "text-only", "neither"]
    online = table.compose(wanted, texts, 4)
    offline = hybrid_item_vectors(texts, table.table(), 0.5, (4, 3))
    assert set(online) == set(wanted) - {"neither"}
    for item, vec in online.items():
        assert np.allclose(vec, offline[item]), item
    assert np.allclose(online["reed"][:4], 0) and np.allclose(online["text-only"][4:], 0)
    assert np.isclose(np.linalg.norm(online["guitar"][4:]), 0.5)
    assert set(table.apply(texts, 4)) == set(offline)


@pytest.mark.parametrize(("matrix", "weight", "fragment"), [
    (np.ones((2, 3)), 0.0, "weight"),
    (np.full((2, 3), np.nan), 0.5, "NaN"),
    (np.ones((3, 3)), 0.5, "matrix"),
])
def test_a_bad_table_is_refused(matrix: np.ndarray, weight: float, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        item_factors.ItemFactors(["a", "b"], matrix, weight)


def test_a_corrupt_file_or_too_little_data_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / item_factors.FACTORS_FILE).write_bytes(b"not a zip")
    with pytest.raises(ConfigError, match=item_factors.FACTORS_FILE):
        item_factors.load(tmp_path)
    with pytest.raises(ConfigError, match="at least 2 users"):
        item_factors.from_events(baskets()[:1])


def test_the_encoder_of_a_factor_directory_keeps_the_base_text_version(tmp_path: Path) -> None:
    base = Encoder(default_model_path(), device="cpu", dtype="float32")
    assert base.item_factors is None and base.text_version == base.model_version
    versions = set()
    for weight, copy in ((0.5, False), (1.0, True)):  # linked, then copied
        out = tmp_path / f"w{weight}"
        table = item_factors.from_events(baskets(), dims=3, weight=weight)
        item_factors.write_model_dir(base.path, out, table, base.name, base.model_version,
                                     copy=copy)
        assert (out / "config.json").is_symlink() != copy
        enc = Encoder(out, device="cpu", dtype="float32")
        assert enc.item_factors is not None and enc.item_factors.weight == weight
        assert enc.text_version == base.model_version  # item texts are not re-embedded
        assert enc.item_dim == base.dim + 3
        assert np.allclose(enc.encode(["a red guitar"]), base.encode(["a red guitar"]))
        versions.add(enc.model_version)
    assert len(versions | {base.model_version}) == 3  # each table is its own version
    with pytest.raises(ConfigError, match="not an empty directory"):
        item_factors.write_model_dir(base.path, tmp_path / "w0.5", table, base.name,
                                     base.model_version)


def test_factors_build_then_fit_on_the_directory(events_file: Path,  # noqa: F811
                                                 tmp_path: Path) -> None:
    out = tmp_path / "factors"
    done = run("factors", "build", str(events_file), *MAP, "--dims", "8", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(out)
    table = item_factors.load(out)
    assert table is not None and table.dim == 8 and len(table) > 10
    assert table.meta["base_name"] == "all-MiniLM-L6-v2" and table.meta["until"] == "-"
    fit = run("fit", str(events_file), *MAP, "--k", "4", "--model", str(out), "--json",
              "--out", str(tmp_path / "fit"))
    assert fit.returncode == 0, fit.stderr
    summary = json.loads(fit.stdout)
    assert summary["users"] == 48 and summary["k"] == 4
    again = run("factors", "build", str(events_file), *MAP, "--base", str(out), "--out",
                str(tmp_path / "again"))
    assert again.returncode == 2 and "already carries item factors" in again.stderr


@pytest.mark.parametrize(("args", "fragment"), [
    (("--weight", "0"), "--weight"),
    (("--dims", "0"), "--dims"),
    (("--until", "someday"), "--until"),
    (("--until", "1990-01-01"), "no event before it"),
])
def test_factors_build_bad_input_is_one_line(events_file: Path, tmp_path: Path,  # noqa: F811
                                             args: tuple[str, ...], fragment: str) -> None:
    done = run("factors", "build", str(events_file), *MAP, *args, "--out", str(tmp_path / "x"))
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], done.stderr
