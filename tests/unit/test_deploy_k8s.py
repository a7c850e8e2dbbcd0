"""deploy/k8s: every manifest valid offline, and consistent with the app it deploys.

Built-in kinds are validated against the Kubernetes JSON schemas bundled in `kubernetes-validate`
(strict: an unknown field is an error, as `kubectl apply --validate=strict` would say). KEDA's
resources are custom ones no package bundles a schema for that we could use (cloudcoil-models-keda
has the models, but installs a pytest plugin into every session): KEDA_SCHEMAS below checks their
structure, the fields these manifests use, written from KEDA's reference (keda.sh/docs/2.16:
ScaledObject spec, TriggerAuthentication, the redis scaler).

Then the cross-references no schema sees: one image, a role per SERVICE_TYPE, probes on real
routes, the names referred to exist, the settings each role gets let it start, KEDA watches the
lists the workers consume.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from fastapi.testclient import TestClient

from stack import roles
from stack.api.app import create_app
from stack.api.auth import resolve_auth
from stack.config import Role, Settings, load_settings
from stack.jobs.registry import load_registry
from tests.unit.conftest import make_settings

ROOT = Path(__file__).resolve().parents[2]
K8S_DIR = ROOT / "deploy" / "k8s"
# The oldest Kubernetes minor the manifests promise to work on, and the newest the package knows.
K8S_VERSIONS = ("1.30", kubernetes_validate.latest_version())

Doc = dict[str, Any]


def _closed(required: list[str], **properties: Any) -> Doc:
    """An object with these properties only: a misspelt field is an error, not a silent no-op."""
    return {"type": "object", "required": required, "properties": properties, "additionalProperties": False}


_STRING = {"type": "string"}
_COUNT = {"type": "integer", "minimum": 0}
_METADATA = _closed(["name"], name=_STRING, namespace=_STRING, labels={"type": "object"},
                    annotations={"type": "object"})  # fmt: skip
_REDIS_TRIGGER = _closed(
    ["type", "metadata"],
    type={"const": "redis"},
    name=_STRING,
    authenticationRef=_closed(["name"], name=_STRING, kind={"enum": ["TriggerAuthentication",
                                                                      "ClusterTriggerAuthentication"]}),
    # KEDA reads trigger metadata as map[string]string: `listLength: 5` unquoted is refused.
    metadata={
        **_closed(["listName", "listLength"]),
        "properties": {
            key: _STRING
            for key in ("address", "addressFromEnv", "host", "hostFromEnv", "port", "portFromEnv",
                        "usernameFromEnv", "passwordFromEnv", "listName", "listLength",
                        "activationListLength", "databaseIndex", "enableTLS", "unsafeSsl")
        },
    },
)  # fmt: skip
KEDA_SCHEMAS: dict[str, Doc] = {
    "ScaledObject": _closed(
        ["apiVersion", "kind", "metadata", "spec"],
        apiVersion={"const": "keda.sh/v1alpha1"},
        kind={"const": "ScaledObject"},
        metadata=_METADATA,
        spec=_closed(
            ["scaleTargetRef", "triggers"],
            scaleTargetRef=_closed(["name"], name=_STRING, kind=_STRING, apiVersion=_STRING,
                                   envSourceContainerName=_STRING),
            pollingInterval=_COUNT, cooldownPeriod=_COUNT, initialCooldownPeriod=_COUNT,
            idleReplicaCount=_COUNT, minReplicaCount=_COUNT, maxReplicaCount=_COUNT,
            fallback={"type": "object"}, advanced={"type": "object"},
            triggers={"type": "array", "minItems": 1, "items": _REDIS_TRIGGER},
        ),
    ),
    "TriggerAuthentication": _closed(
        ["apiVersion", "kind", "metadata", "spec"],
        apiVersion={"const": "keda.sh/v1alpha1"},
        kind={"const": "TriggerAuthentication"},
        metadata=_METADATA,
        spec=_closed(
            [],
            secretTargetRef={"type": "array", "items": _closed(["parameter", "name", "key"],
                                                               parameter=_STRING, name=_STRING, key=_STRING)},
            env={"type": "array"},
        ),
    ),
}  # fmt: skip
WORKLOADS = ("Deployment", "Job")
# Shipped but left out of kustomization.yaml on purpose; deploy/README.md says how to use each.
NOT_IN_KUSTOMIZATION = {"secret.example.yaml", "flower.yaml", "keda.yaml"}


def load_manifests() -> list[tuple[str, Doc]]:
    docs = []
    for path in sorted(K8S_DIR.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        docs += [(path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    return docs


MANIFESTS = load_manifests()


def doc_id(entry: tuple[str, Doc]) -> str:
    name, doc = entry
    return f"{name}:{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


def validate(doc: Doc) -> None:
    """Raise if `doc` is not a valid resource of its kind (every Kubernetes version we support)."""
    if doc.get("apiVersion", "").startswith("keda.sh/"):
        jsonschema.validate(doc, KEDA_SCHEMAS[doc["kind"]])
        return
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(doc, version, strict=True)


def of_kind(*kinds: str) -> list[Doc]:
    return [doc for _, doc in MANIFESTS if doc["kind"] in kinds]


def named(kind: str, name: str) -> Doc:
    matches = [doc for doc in of_kind(kind) if doc["metadata"]["name"] == name]
    assert matches, f"no {kind} named {name!r} in {K8S_DIR}"
    return matches[0]


def containers(workload: Doc) -> list[Doc]:
    return workload["spec"]["template"]["spec"]["containers"]  # type: ignore[no-any-return]


def env_of(container: Doc) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def service_type(workload: Doc) -> str:
    (container,) = containers(workload)
    return env_of(container)["SERVICE_TYPE"]


def workload_for(role: Role) -> Doc:
    matches = [w for w in of_kind(*WORKLOADS) if service_type(w) == role.value]
    assert len(matches) == 1, f"expected one workload with SERVICE_TYPE={role.value}, found {len(matches)}"
    return matches[0]


def role_environment(role: Role) -> Iterator[tuple[str, str]]:
    """What a role's container gets: the ConfigMap, the Secret (the example), then its own env."""
    (container,) = containers(workload_for(role))
    for source in container["envFrom"]:
        if "configMapRef" in source:
            yield from named("ConfigMap", source["configMapRef"]["name"])["data"].items()
        else:
            yield from named("Secret", source["secretRef"]["name"])["stringData"].items()
    yield from env_of(container).items()


def settings_of(role: Role, monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name, value in role_environment(role):
        monkeypatch.setenv(name, value)
    return load_settings()  # production's checks included: a missing secret fails here


# --- schemas ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("entry", MANIFESTS, ids=doc_id)
def test_every_manifest_is_valid(entry: tuple[str, Doc]) -> None:
    validate(entry[1])


@pytest.mark.parametrize(
    ("kind", "breakage"),
    [
        ("Deployment", lambda d: d["spec"].update(replica=3)),  # typo of `replicas`
        ("Deployment", lambda d: containers(d)[0].update(image=["stack"])),  # wrong type
        ("ScaledObject", lambda d: d["spec"].update(maxReplicas=3)),  # HPA's name, not KEDA's
        ("ScaledObject", lambda d: d["spec"].pop("scaleTargetRef")),  # required
        ("ScaledObject", lambda d: d["spec"]["triggers"][0]["metadata"].update(listLength=4)),  # not a string
        ("TriggerAuthentication", lambda d: d["spec"]["secretTargetRef"][0].pop("key")),
    ],
)
def test_a_broken_manifest_is_refused(kind: str, breakage: Any) -> None:
    """The validation above can fail: a typo, a wrong type or a missing field is caught."""
    doc = yaml.safe_load(yaml.safe_dump(of_kind(kind)[0]))
    breakage(doc)
    with pytest.raises(jsonschema.ValidationError):
        validate(doc)


def test_the_kustomization_lists_every_manifest_but_the_optional_ones() -> None:
    kustomization = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    files = {p.name for p in K8S_DIR.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == files - NOT_IN_KUSTOMIZATION
    # The image kustomize rewrites is the one every workload runs.
    (image,) = kustomization["images"]
    assert {c["image"].split(":")[0] for w in of_kind(*WORKLOADS) for c in containers(w)} == {image["name"]}


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed (it bundles kustomize)")
def test_the_kustomization_builds_valid_resources() -> None:
    """What `kubectl apply -k deploy/k8s` would send: kustomize's output, validated like the files."""
    done = subprocess.run(["kubectl", "kustomize", str(K8S_DIR)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"kubectl kustomize deploy/k8s failed:\n{done.stderr}"
    built = list(yaml.safe_load_all(done.stdout))
    assert len(built) == sum(1 for name, _ in MANIFESTS if name not in NOT_IN_KUSTOMIZATION)
    for doc in built:
        validate(doc)


# --- the app's topology ----------------------------------------------------------------------------


def test_one_image_and_a_workload_per_role() -> None:
    workloads = of_kind(*WORKLOADS)
    assert len({c["image"] for w in workloads for c in containers(w)}) == 1, "every role runs the same image"
    by_role = {service_type(w): w["kind"] for w in workloads}
    assert by_role == {"api": "Deployment", "worker": "Deployment", "beat": "Deployment",
                       "flower": "Deployment", "migrate": "Job"}  # fmt: skip
    assert set(by_role) <= {r.value for r in Role}


def test_only_the_migrate_job_migrates() -> None:
    assert env_of(containers(workload_for(Role.API))[0])["STACK_MIGRATE_ON_START"] == "false"


def test_beat_is_one_and_never_two() -> None:
    beat = workload_for(Role.BEAT)
    assert beat["spec"]["replicas"] == 1
    assert beat["spec"]["strategy"] == {"type": "Recreate"}  # a rolling update would run two at once


def test_the_image_user_runs_every_pod_on_a_read_only_root() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    uid = int(re.search(r"useradd .*--uid (\d+)", dockerfile).group(1))  # type: ignore[union-attr]
    workdir = re.findall(r"^WORKDIR (\S+)", dockerfile, re.MULTILINE)[-1]
    for workload in of_kind(*WORKLOADS):
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsUser"] == uid
        assert pod["securityContext"]["runAsNonRoot"] is True
        for container in pod["containers"]:
            assert container["securityContext"]["readOnlyRootFilesystem"] is True
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
            mounts = {m["mountPath"] for m in container["volumeMounts"]}
            # Where every role writes: STACK_DATA_DIR (.stack under the WORKDIR) and /tmp.
            assert {f"{workdir}/.stack", "/tmp"} <= mounts, workload["metadata"]["name"]


def test_api_and_workers_share_the_job_outputs_on_a_read_write_many_volume(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    storage = str(settings_of(Role.API, monkeypatch).effective_storage_dir)
    for role in (Role.API, Role.WORKER):
        pod = workload_for(role)["spec"]["template"]["spec"]
        (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["mountPath"] == storage]
        (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
        claim = named("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
        assert claim["spec"]["accessModes"] == ["ReadWriteMany"], "api and workers run on different nodes"


def test_workers_get_the_time_to_finish_their_jobs(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_of(Role.WORKER, monkeypatch)
    grace = workload_for(Role.WORKER)["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace >= settings.task_time_limit + 10, "warm shutdown: a running job may take its time limit"


@pytest.mark.parametrize("role", [Role.API, Role.WORKER, Role.BEAT, Role.FLOWER, Role.MIGRATE])
def test_each_role_starts_with_the_settings_it_is_given(role: Role, monkeypatch: pytest.MonkeyPatch) -> None:
    """The ConfigMap, the example Secret and the role's env pass production's checks and build
    the role's command line: nothing is missing, nothing is refused."""
    settings = settings_of(role, monkeypatch)
    assert settings.is_production
    if role is Role.MIGRATE:
        return
    if role is Role.API:
        resolve_auth(settings)
    registry = load_registry(settings.kinds)
    roles.launch_for(role, settings, [], all_queues=registry.queues())


# --- references between the manifests, and to the app ----------------------------------------------


def test_every_name_referred_to_exists() -> None:
    for workload in of_kind(*WORKLOADS):
        pod = workload["spec"]["template"]["spec"]
        for source in pod["containers"][0]["envFrom"]:
            ((ref_kind, ref),) = source.items()
            named({"configMapRef": "ConfigMap", "secretRef": "Secret"}[ref_kind], ref["name"])
        for volume in pod.get("volumes", []):
            if "persistentVolumeClaim" in volume:
                named("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
    for auth in of_kind("TriggerAuthentication"):
        for ref in auth["spec"]["secretTargetRef"]:
            assert ref["key"] in named("Secret", ref["name"])["stringData"]
    for scaled in of_kind("ScaledObject"):
        for trigger in scaled["spec"]["triggers"]:
            named("TriggerAuthentication", trigger["authenticationRef"]["name"])


def test_each_service_reaches_its_pods() -> None:
    for service in of_kind("Service"):
        (workload,) = [
            w
            for w in of_kind("Deployment")
            if service["spec"]["selector"].items() <= w["spec"]["template"]["metadata"]["labels"].items()
        ]
        ports = {p["name"] for c in containers(workload) for p in c.get("ports", [])}
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports


@pytest.fixture
def _root_logger_restored() -> Iterator[None]:
    """create_app configures the root logger for the whole process (json in production): put it
    back, so the tests that run after this one see the logging they expect."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.usefixtures("_root_logger_restored")
def test_the_api_probes_ask_routes_that_answer_without_a_token(tmp_path: Path) -> None:
    """Probes carry no token: /health and /ready must exist, and answer anonymous callers in
    production (the API requires a token everywhere else)."""
    # Inline (no Celery app): Celery's logging signal keeps the first app's settings for the whole
    # process (stack.jobs.celery_app.use_stack_logging), and production's would leak into others.
    settings = make_settings(
        tmp_path, app_env="production", api_tokens=["probe-test-token-0123456789"], celery_enabled=False
    )
    app = create_app(settings)
    # The contract's paths: FastAPI resolves included routers lazily, so app.routes may not list them.
    get_routes = {path for path, operations in app.openapi()["paths"].items() if "get" in operations}
    (container,) = containers(workload_for(Role.API))
    probes = [container[p]["httpGet"] for p in ("startupProbe", "livenessProbe", "readinessProbe")]
    assert {p["path"] for p in probes} == {"/health", "/ready"}
    assert all(p["port"] in {port["name"] for port in container["ports"]} for p in probes)
    with TestClient(app) as client:
        for probe in probes:
            assert probe["path"] in get_routes
            assert client.get(probe["path"]).status_code == 200, probe["path"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/health", (
        "a database outage must not restart the api"
    )


def test_keda_scales_the_workers_on_the_lists_they_consume(monkeypatch: pytest.MonkeyPatch) -> None:
    """The ScaledObject targets the worker Deployment and watches, per queue the app's kinds use,
    the Redis list Celery fills (the namespace prefix included), on the database of REDIS_URL."""
    settings = settings_of(Role.WORKER, monkeypatch)
    registry = load_registry(settings.kinds)
    consumed = roles.worker_queues(settings, registry.queues())
    (scaled,) = of_kind("ScaledObject")
    assert scaled["spec"]["scaleTargetRef"]["name"] == workload_for(Role.WORKER)["metadata"]["name"]
    triggers = scaled["spec"]["triggers"]
    assert {t["type"] for t in triggers} == {"redis"}
    assert sorted(t["metadata"]["listName"] for t in triggers) == sorted(
        settings.redis_prefix + queue for queue in consumed
    )
    database = settings.broker_url.rsplit("/", 1)[-1]
    assert {t["metadata"]["databaseIndex"] for t in triggers} == {database}
