"""The Kubernetes manifests (``deploy/k8s``): rendered by kustomize offline, every object valid against
the Kubernetes schemas (bundled in ``kubernetes-validate``) and the ScaledObject against KEDA's
(``tests/data/keda-scaledobject.schema.json``); the values that tie them to llmqueue checked against
llmqueue itself (settings, CLI, the key KEDA counts)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from llmqueue import keys
from llmqueue.connection import parse_sentinel_url
from llmqueue.settings import Settings, WorkerConfig
from tests.test_deploy import is_setting, parse_cli

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
KEDA_SCHEMA = json.loads((ROOT / "tests" / "data" / "keda-scaledobject.schema.json").read_text())
KUBERNETES_VERSION = "1.30.0"
KUSTOMIZATIONS = ["", "overlays/with-redis", "overlays/sentinel"]
REDIS_TRIGGER_FIELDS = {
    "address", "addressFromEnv", "host", "hostFromEnv", "port", "portFromEnv", "username",
    "usernameFromEnv", "password", "passwordFromEnv", "databaseIndex", "listName", "listLength",
    "activationListLength", "enableTLS", "unsafeSsl",
}  # fmt: skip
SENTINEL_TRIGGER_FIELDS = REDIS_TRIGGER_FIELDS - {"address", "addressFromEnv", "host", "hostFromEnv"} | {
    "addresses", "addressesFromEnv", "hosts", "hostsFromEnv", "ports", "portsFromEnv", "sentinelMaster",
    "sentinelMasterFromEnv", "sentinelUsername", "sentinelUsernameFromEnv", "sentinelPassword",
    "sentinelPasswordFromEnv",
}  # fmt: skip
"""The parameters KEDA's ``redis`` and ``redis-sentinel`` triggers take (keda.sh, scalers, Redis Lists)."""

KUBECTL = shutil.which("kubectl")
pytestmark = pytest.mark.skipif(
    KUBECTL is None, reason="kubectl (with its built-in kustomize) is not on PATH"
)


def render(kustomization: str) -> list[dict[str, Any]]:
    assert KUBECTL is not None
    done = subprocess.run(
        [KUBECTL, "kustomize", str(K8S / kustomization)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def by_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = [obj for obj in objects if obj["kind"] == kind]
    return found


@pytest.fixture(scope="module")
def base() -> list[dict[str, Any]]:
    return render("")


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_every_rendered_object_is_valid_against_its_schema(kustomization: str) -> None:
    objects = render(kustomization)
    assert {obj["kind"] for obj in objects} >= {"ConfigMap", "Secret", "Deployment", "ScaledObject"}
    for obj in objects:
        if obj["apiVersion"].startswith("keda.sh/"):
            jsonschema.validate(obj, KEDA_SCHEMA)
        else:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def test_a_misspelt_field_would_be_caught(base: list[dict[str, Any]]) -> None:
    worker = json.loads(json.dumps(by_kind(base, "Deployment")))
    worker["spec"]["template"]["spec"]["terminationGracePeriod"] = 45
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(worker, KUBERNETES_VERSION, strict=True)
    scaled = json.loads(json.dumps(by_kind(base, "ScaledObject")))
    scaled["spec"]["maxReplicas"] = 4
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(scaled, KEDA_SCHEMA)


def test_the_optional_redis_is_added_and_the_workers_pointed_at_it() -> None:
    objects = render("overlays/with-redis")
    assert {(obj["kind"], obj["metadata"]["name"]) for obj in objects} >= {
        ("StatefulSet", "llmqueue-redis"),
        ("Service", "llmqueue-redis"),
    }
    assert by_kind(objects, "ConfigMap")["data"]["REDIS_ADDRESS"] == "llmqueue-redis:6379"


def test_keda_counts_the_ready_set_of_the_queue_the_workers_take_from(base: list[dict[str, Any]]) -> None:
    config = by_kind(base, "ConfigMap")["data"]
    queue = config.get("WORKER_QUEUE_NAME", WorkerConfig().queue_name)
    (trigger,) = by_kind(base, "ScaledObject")["spec"]["triggers"]
    assert trigger["type"] == "redis"
    assert set(trigger["metadata"]) <= REDIS_TRIGGER_FIELDS
    assert trigger["metadata"]["listName"] == keys.ready(queue)
    env = {entry["name"] for entry in worker_container(base)["env"]} | set(config)
    assert {trigger["metadata"]["addressFromEnv"], trigger["metadata"]["passwordFromEnv"]} <= env


def test_the_scaled_object_targets_the_worker_deployment(base: list[dict[str, Any]]) -> None:
    spec = by_kind(base, "ScaledObject")["spec"]
    assert spec["scaleTargetRef"]["name"] == by_kind(base, "Deployment")["metadata"]["name"]
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]


def worker_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (container,) = by_kind(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    return container  # type: ignore[no-any-return]


def test_the_grace_period_outlasts_the_workers_shutdown_grace(base: list[dict[str, Any]]) -> None:
    pod = by_kind(base, "Deployment")["spec"]["template"]["spec"]
    grace = float(
        by_kind(base, "ConfigMap")["data"].get("WORKER_SHUTDOWN_GRACE", WorkerConfig().shutdown_grace)
    )
    assert pod["terminationGracePeriodSeconds"] >= grace + 10


def test_config_and_keys_are_llmqueue_settings_and_keys_come_from_the_secret(
    base: list[dict[str, Any]],
) -> None:
    config = by_kind(base, "ConfigMap")["data"]
    assert all(is_setting(name) for name in config if name != "REDIS_ADDRESS")
    container = worker_container(base)
    assert container["envFrom"] == [{"configMapRef": {"name": "llmqueue-config"}}]
    env = {entry["name"]: entry for entry in container["env"]}
    secret = by_kind(base, "Secret")["metadata"]["name"]
    for name in ("LLM_API_KEY", "REDIS_PASSWORD"):
        assert env[name]["valueFrom"]["secretKeyRef"]["name"] == secret
    # REDIS_URL is built from the ConfigMap's address and the Secret's password by the kubelet.
    assert set(re.findall(r"\$\((\w+)\)", env["REDIS_URL"]["value"])) == {"REDIS_PASSWORD", "REDIS_ADDRESS"}


def test_probes_and_command_are_valid_cli_invocations_on_the_metrics_port(base: list[dict[str, Any]]) -> None:
    container = worker_container(base)
    parse_cli(container["args"])
    parse_cli(container["readinessProbe"]["exec"]["command"][1:])
    assert container["readinessProbe"]["exec"]["command"][0] == "llmqueue"
    port = container["args"][container["args"].index("--metrics-port") + 1]
    annotations = by_kind(base, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/port"] == port
    assert container["livenessProbe"]["httpGet"] == {"path": "/metrics", "port": "metrics"}
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"metrics": int(port)}
    assert container["resources"]["requests"] and container["resources"]["limits"]


def test_the_sentinel_overlay_points_workers_and_keda_at_the_sentinels(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    objects = render("overlays/sentinel")
    config = by_kind(objects, "ConfigMap")["data"]
    (trigger,) = by_kind(objects, "ScaledObject")["spec"]["triggers"]
    assert trigger["type"] == "redis-sentinel"
    assert set(trigger["metadata"]) <= SENTINEL_TRIGGER_FIELDS
    assert trigger["metadata"]["listName"] == keys.ready(WorkerConfig().queue_name)
    assert {trigger["metadata"]["addressesFromEnv"], trigger["metadata"]["sentinelMasterFromEnv"]} <= set(
        config
    )
    # The worker's environment as the kubelet makes it (an empty password) reads as a Sentinel URL.
    env = {"REDIS_PASSWORD": ""} | config
    url = next(e["value"] for e in worker_container(objects)["env"] if e["name"] == "REDIS_URL")
    env["REDIS_URL"] = re.sub(r"\$\((\w+)\)", lambda m: env[m[1]], url)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    loaded = Settings().redis_url.get_secret_value()
    assert loaded.startswith("redis+sentinel://") and loaded.endswith(
        f"/{config['REDIS_SENTINEL_SERVICE']}/0"
    )
    address = parse_sentinel_url(loaded)
    assert len(address.sentinels) == 3 and "password" not in address.options
