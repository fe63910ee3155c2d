"""deploy/ validated by the tools that run here: promtool (config, rules, rule unit tests,
PromQL of the dashboard), Docker Compose v2 ``config`` (compose schema + interpolation),
hadolint (Dockerfile), kubernetes-validate (Kubernetes JSON schemas, strict), redis-server
(the compose ACL line), and cross-checks between them and the services' metric names."""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from pydantic import SecretStr

from segstream.config import RedisSettings, Settings
from segstream.redis_io import check_redis, redis_client
from segstream_services.dev.local_redis import ensure_redis_installed
from tests import tooling
from tests.helpers import wait_until

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
PROM = DEPLOY / "prometheus"
K8S = DEPLOY / "k8s"
SERVICES = {"ingest": 9401, "encoder": 9402, "segmenter": 9403}
REQUIRED_ALERTS = {
    "SegstreamServiceDown", "SegstreamConsumerLagGrowing", "SegstreamDeadLetterRateHigh",
    "SegstreamEncoderFallingBehind", "SegstreamEncodeLatencyHigh", "SegstreamSegmentChurnSpike",
}


def tool(get: Any) -> Any:
    try:
        return get()
    except tooling.ToolMissing as exc:
        pytest.skip(f"validation tool unavailable on this machine: {exc}")


@pytest.fixture(scope="module")
def promtool() -> str:
    return tool(tooling.ensure_prometheus)[0]


def run(cmd: list[str], cwd: Path = ROOT, env: dict[str, str] | None = None
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300,
                          env=env)


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, f"{shlex.join(done.args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


def load_all(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


# ---------------------------------------------------------------- Prometheus


def test_promtool_check_config(promtool: str) -> None:
    out = ok(run([promtool, "check", "config", str(PROM / "prometheus.yml")]))
    assert "SUCCESS" in out


def test_promtool_check_rules(promtool: str) -> None:
    out = ok(run([promtool, "check", "rules", str(PROM / "alerts.yml")]))
    assert "SUCCESS" in out
    alerts = {r["alert"] for g in yaml.safe_load((PROM / "alerts.yml").read_text())["groups"]
              for r in g["rules"] if "alert" in r}
    assert alerts >= REQUIRED_ALERTS


def test_promtool_alert_unit_tests(promtool: str) -> None:
    out = ok(run([promtool, "test", "rules", "alerts_test.yml"], cwd=PROM))
    assert "SUCCESS" in out
    # every alert has a case where it fires and one where it must stay silent
    cases = [c for t in yaml.safe_load((PROM / "alerts_test.yml").read_text())["tests"]
             for c in t.get("alert_rule_test", [])]
    alerts = {r["alert"] for g in yaml.safe_load((PROM / "alerts.yml").read_text())["groups"]
              for r in g["rules"] if "alert" in r}
    for alert in alerts:
        mine = [c for c in cases if c["alertname"] == alert]
        assert any(c.get("exp_alerts") for c in mine), f"{alert} never fires in a test"
        assert any(not c.get("exp_alerts") for c in mine), f"{alert} never stays silent"


def test_scrape_config_matches_the_service_ports() -> None:
    config = yaml.safe_load((PROM / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    defaults = Settings.model_fields
    for name, port in SERVICES.items():
        sd = jobs[f"segstream-{name}"]["dns_sd_configs"][0]
        assert sd["port"] == port, name
        section = defaults[name].default_factory()  # type: ignore[misc]
        assert section.metrics_port == port, f"{name}.metrics_port default moved"


def _exposed_names() -> set[str]:
    """Every series name the three services can expose (from their real registries)."""
    from segstream_services.encoder.metrics import EncoderMetrics
    from segstream_services.ingest.metrics import IngestMetrics
    from segstream_services.segmenter.metrics import SegmenterMetrics

    names: set[str] = set()
    for registry in (IngestMetrics().service.registry, EncoderMetrics().base.registry,
                     SegmenterMetrics().base.registry):
        for family in registry.collect():
            suffixes = {"counter": ["_total"], "gauge": [""], "info": ["_info"],
                        "histogram": ["_bucket", "_sum", "_count"],
                        "summary": ["", "_sum", "_count"]}.get(family.type, [""])
            names |= {family.name + s for s in suffixes}
    return names


def _dashboard_exprs() -> list[str]:
    dash = json.loads((DEPLOY / "grafana" / "dashboard.json").read_text())
    return [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]


def test_rules_and_dashboard_use_only_exposed_metrics() -> None:
    exposed = _exposed_names()
    rules = yaml.safe_load((PROM / "alerts.yml").read_text())["groups"]
    recorded = {r["record"] for g in rules for r in g["rules"] if "record" in r}
    exprs = [r["expr"] for g in rules for r in g["rules"]] + _dashboard_exprs()
    for expr in exprs:
        for name in re.findall(r"\bsegstream_[a-z0-9_]+", expr):
            assert name in exposed, f"{name} (in {expr!r}) is exposed by no service"
        for name in re.findall(r"\bsegstream:[a-z0-9_:]+", expr):
            assert name in recorded, f"recording rule {name} is not defined"
    # label values the rules select on are ones the services really set
    from segstream_services.segmenter.metrics import REASONS

    assert "moved" in REASONS
    encoder_src = (ROOT / "services" / "segstream_services" / "encoder" / "pressure.py").read_text()
    assert 'queue="dirty"' in encoder_src


def test_dashboard_is_valid_and_its_promql_parses(promtool: str, tmp_path: Path) -> None:
    dash = json.loads((DEPLOY / "grafana" / "dashboard.json").read_text())
    assert dash["uid"] and dash["title"] and dash["schemaVersion"] >= 30
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in dash["panels"]:
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"])
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        if panel["type"] != "row":
            assert panel["targets"], panel["title"]
    exprs = _dashboard_exprs()
    # the key series of each service are on it
    joined = "\n".join(exprs)
    for series in ("segstream_ingest_consumer_lag_records",
                   "segstream_ingest_records_dead_lettered_total",
                   "segstream_encoder_encode_seconds_bucket", "segstream_encoder_queue_depth",
                   "segstream:segment_churn_ratio:rate10m", "up{"):
        assert series in joined, series
    # promtool parses each expression as a recording rule (Grafana's range variable aside)
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:expr_{i}", "expr": e.replace("$__rate_interval", "5m")}
        for i, e in enumerate(exprs)]}]}
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump(rules))
    ok(run([promtool, "check", "rules", str(path)]))
    provisioning = DEPLOY / "grafana" / "provisioning"
    ds = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    assert ds["datasources"][0]["uid"] == "prometheus"


# ---------------------------------------------------------------- compose and Docker


COMPOSE_ENV = {"REDIS_PASSWORD": "compose-test-password", "GRAFANA_ADMIN_PASSWORD": "g-test"}


def test_compose_file_validates_with_docker_compose() -> None:
    binary = tool(tooling.docker_compose)
    env = {k: v for k, v in os.environ.items() if k not in COMPOSE_ENV}
    out = ok(run([binary, "-f", "compose.yaml", "config", "--format", "json"], cwd=DEPLOY,
                 env={**env, **COMPOSE_ENV}))
    project = json.loads(out[out.index("{"):])
    services = set(project["services"])
    assert {"kafka", "redis", "ingest", "encoder", "segmenter", "prometheus",
            "grafana"} <= services
    for name in SERVICES:
        build = project["services"][name]["build"]
        assert build["target"] == name
        assert Path(build["context"], build["dockerfile"]).resolve() == (
            DEPLOY / "docker" / "Dockerfile").resolve()
    # secrets are required from the environment, never defaults in the file
    missing = run([binary, "-f", "compose.yaml", "config", "--quiet"], cwd=DEPLOY, env=env)
    assert missing.returncode != 0 and "REDIS_PASSWORD" in missing.stderr


def test_compose_file_parses_and_mounts_exist() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name} mounts missing {source}"
        for key, value in (service.get("environment") or {}).items():
            if "PASSWORD" in key:
                assert str(value).startswith("${"), f"{name}: literal secret in {key}"
    for name in SERVICES:
        assert compose["services"][name]["stop_grace_period"] == "60s"


def _dockerfile_targets(text: str) -> dict[str, str]:
    return {m.group(2): m.group(1)
            for m in re.finditer(r"^FROM\s+(\S+)\s+AS\s+(\S+)\s*$", text, re.M | re.I)}


def test_dockerfile_lints_and_has_a_target_per_service() -> None:
    dockerfile = DEPLOY / "docker" / "Dockerfile"
    ok(run([tool(tooling.hadolint), str(dockerfile)]))
    text = dockerfile.read_text()
    targets = _dockerfile_targets(text)
    for name, port in SERVICES.items():
        assert targets.get(name) == "runtime", f"no target {name} on the runtime stage"
        section = text[text.index(f"AS {name}\n"):]
        section = section[: section.find("\nFROM ", 1) if "\nFROM " in section[1:] else None]
        assert f"EXPOSE {port}" in section and f'CMD ["run", "{name}"]' in section
        assert f"127.0.0.1:{port}/healthz" in section
    assert re.search(r"^USER 10001", text, re.M), "the runtime must not run as root"
    # the image binds /metrics and /healthz to loopback; deployments opt in explicitly
    assert "SEGSTREAM_METRICS_ADDR=127.0.0.1" in text and "0.0.0.0" not in text
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    assert compose["x-segstream-env"]["SEGSTREAM_METRICS_ADDR"] == "0.0.0.0"
    ignore = (DEPLOY / "docker" / "Dockerfile.dockerignore").read_text()
    for needed in ("pyproject.toml", "requirements.lock", "README.md", "shared/", "services/"):
        assert f"!{needed}" in ignore
        assert (ROOT / needed.rstrip("/")).exists()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def compose_acl_redis(tmp_path: Path) -> Iterator[int]:
    """redis-server started with the exact ACL arguments of compose.yaml's redis service."""
    command = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]["redis"]
    script = command["command"][-1].replace("$$REDIS_PASSWORD", "$REDIS_PASSWORD")
    args = shlex.split(script.replace("exec redis-server", "", 1)
                       .replace("$REDIS_PASSWORD", COMPOSE_ENV["REDIS_PASSWORD"]))
    port = free_port()
    proc = subprocess.Popen([ensure_redis_installed(), "--port", str(port), "--bind",
                             "127.0.0.1", "--dir", str(tmp_path), *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: proc.poll() is not None
                   or socket.socket().connect_ex(("127.0.0.1", port)) == 0,
                   timeout_s=20, what="redis-server with the compose ACL")
        assert proc.poll() is None, "redis-server refused the compose.yaml arguments"
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.integration
def test_compose_redis_acl_allows_segstream_keys_only(compose_acl_redis: int) -> None:
    env = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["x-segstream-env"]
    settings = RedisSettings(port=compose_acl_redis, username=env["SEGSTREAM_REDIS__USERNAME"],
                             password=SecretStr(COMPOSE_ENV["REDIS_PASSWORD"]))
    client = redis_client(settings)
    check_redis(client)
    # the key shapes of segstream.redis_io.Keys, a Lua script, INFO and MEMORY USAGE
    client.set("ss:u:{u1}:text", "t")
    client.zadd("{ss:q}:dirty", {"u1": 1})
    client.xadd("{ss:q}:embedded", {"u": "u1"})
    assert client.eval("return redis.call('GET', KEYS[1])", 1, "ss:u:{u1}:text") == b"t"
    assert client.info("server")["redis_version"]
    assert client.memory_usage("ss:u:{u1}:text")
    for forbidden in (lambda: client.set("other:key", 1), lambda: client.flushall(),
                      lambda: client.config_get("*")):
        with pytest.raises(redis.exceptions.NoPermissionError):
            forbidden()
    client.close()
    # (a client without credentials is refused: tests/integration/test_security.py)


# ---------------------------------------------------------------- Kubernetes


def k8s_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def test_k8s_manifests_validate_against_kubernetes_schemas() -> None:
    command = tool(tooling.kubernetes_validate)
    out = ok(run([*command, "--strict", *map(str, k8s_files())]))
    assert "did not validate" not in out
    docs = sum(len(load_all(p)) for p in k8s_files())
    assert out.count(" passed for resource ") == docs, out


def test_k8s_manifests_hang_together() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    for resource in kustomization["resources"]:
        assert (K8S / resource).exists(), resource
    assert "secret.example.yaml" not in kustomization["resources"]
    docs = [d for p in k8s_files() for d in load_all(p)]
    by_kind: dict[str, dict[str, dict[str, Any]]] = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], {})[doc["metadata"]["name"]] = doc
    configmap = by_kind["ConfigMap"]["segstream-config"]
    for key in configmap["data"]:
        assert not re.search(r"PASSWORD|SECRET|TOKEN|KEY$", key), f"secret in ConfigMap: {key}"
    secret_keys = set(by_kind["Secret"]["segstream-credentials"]["stringData"])
    assert {"SEGSTREAM_KAFKA__SASL_PASSWORD", "SEGSTREAM_REDIS__PASSWORD"} <= secret_keys
    for name, port in SERVICES.items():
        deployment = by_kind["Deployment"][f"segstream-{name}"]
        pod = deployment["spec"]["template"]["spec"]
        container = pod["containers"][0]
        assert container["ports"][0]["containerPort"] == port
        assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert pod["securityContext"]["runAsNonRoot"] is True
        refs = {next(iter(r.values()))["name"] for r in container["envFrom"]}
        assert refs == {"segstream-config", "segstream-credentials"}
        selector = deployment["spec"]["selector"]["matchLabels"]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items()
        service = by_kind["Service"][f"segstream-{name}-metrics"]
        assert service["spec"]["selector"].items() <= labels.items()
        assert service["spec"]["ports"][0]["port"] == port
    hpas = by_kind["HorizontalPodAutoscaler"]
    adapter = yaml.safe_load(
        by_kind["ConfigMap"]["segstream-prometheus-adapter-rules"]["data"]["config.yaml"])
    served = {r["name"]["as"] for r in adapter["externalRules"]}
    encoder_hpa = hpas["segstream-encoder"]
    assert encoder_hpa["spec"]["scaleTargetRef"]["name"] == "segstream-encoder"
    for hpa in hpas.values():
        assert hpa["spec"]["scaleTargetRef"]["name"] in by_kind["Deployment"]
        assert "replicas" not in by_kind["Deployment"][hpa["spec"]["scaleTargetRef"]["name"]][
            "spec"], "an HPA-managed Deployment must not pin replicas"
        for metric in hpa["spec"]["metrics"]:
            assert metric["type"] == "External"
            assert metric["external"]["metric"]["name"] in served
    exposed = _exposed_names()
    for rule in adapter["externalRules"]:
        series = re.match(r"([a-z0-9_]+)", rule["seriesQuery"].strip("'\""))
        assert series and series.group(1) in exposed, rule["seriesQuery"]
