"""The files in deploy/, checked against the code they deploy.

No container engine and no cluster run where this suite runs, so the image is never built and no
manifest is applied here. Instead:

- the Kubernetes manifests (every YAML under deploy/kubernetes/) are parsed with PyYAML, and every
  container's `corral` command line is parsed with the CLI's own parser (`build_parser`), so a
  renamed subcommand or flag fails here rather than in a crash-looping pod; its MODULE:APP must
  import; its CORRAL_* variables must be real settings; the probes, selectors, references between
  objects and the worker's termination grace (longer than its drain) are checked;
- the KEDA triggers are run against the code: the metrics-api trigger's path and valueLocation
  against /corral/scaling answered by `create_api` on a real store, and the postgresql trigger's
  query against the schema in store/sql/postgres/0001_init.sql and, when CORRAL_TEST_POSTGRES_URL
  is set, against PostgreSQL itself;
- deploy/Dockerfile is read as text: its ENTRYPOINT and CMD parse with the CLI parser, its
  HEALTHCHECK probes /ok on the port CMD serves, it runs as the numeric non-root user the
  manifests expect, and .dockerignore keeps what the Dockerfile copies.
"""

from __future__ import annotations

import contextlib
import fnmatch
import importlib
import io
import json
import re
import shlex
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import yaml

from corral import App, Context, agent
from corral.api import create_api
from corral.cli import build_parser
from corral.config import Settings
from corral.models import models_from_config
from corral.store.base import Fence
from corral.telemetry.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
DOCKERFILE = DEPLOY / "Dockerfile"
SCHEMA = ROOT / "src" / "corral" / "store" / "sql" / "postgres" / "0001_init.sql"
NAMESPACE = "corral"


# --- reading the files ----------------------------------------------------------------------


def manifests() -> list[tuple[Path, dict[str, Any]]]:
    found = []
    for path in sorted(K8S.rglob("*.y*ml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                found.append((path.relative_to(K8S), doc))
    return found


DOCS = manifests()


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in DOCS if doc["kind"] == kind]


def named(kind: str, name: str) -> dict[str, Any]:
    matches = [doc for doc in of_kind(kind) if doc["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name!r} in deploy/kubernetes, found {len(matches)}"
    return matches[0]


def pod_templates() -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(workload, its pod template) for every Deployment and Job."""
    for doc in of_kind("Deployment") + of_kind("Job"):
        yield doc, doc["spec"]["template"]


def dockerfile() -> dict[str, list[str]]:
    """Instruction -> its arguments, one entry per occurrence; continuations joined, comments dropped."""
    out: dict[str, list[str]] = {}
    logical = ""
    for line in DOCKERFILE.read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        logical += line.rstrip()
        if logical.endswith("\\"):
            logical = logical[:-1] + " "
            continue
        instruction, _, rest = logical.strip().partition(" ")
        out.setdefault(instruction.upper(), []).append(rest.strip())
        logical = ""
    return out


DOCKER = dockerfile()


def exec_form(instruction: str) -> list[str]:
    (text,) = DOCKER[instruction]
    value = json.loads(text)
    assert isinstance(value, list), f"{instruction} must be in exec form (a JSON array) so signals reach corral"
    return value


def argv(container: dict[str, Any]) -> list[str]:
    """The container's command line: its command (else the image's ENTRYPOINT) and its args."""
    return list(container.get("command") or exec_form("ENTRYPOINT")) + list(container.get("args") or [])


def parse_cli(line: list[str], where: str) -> Any:
    assert line[:1] == ["corral"], f"{where}: runs {line!r}, not the corral command"
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return build_parser().parse_args(line[1:])
    except SystemExit:
        pytest.fail(f"{where}: `{shlex.join(line)}` does not parse with corral's CLI:\n{err.getvalue()}")


def corral_containers() -> Iterator[tuple[str, dict[str, Any], dict[str, Any], Any]]:
    """(where, workload, container, parsed args) for every container that runs corral."""
    for workload, template in pod_templates():
        for container in template["spec"]["containers"]:
            where = f"{workload['kind']} {workload['metadata']['name']}, container {container['name']}"
            yield where, workload, container, parse_cli(argv(container), where)


def container_env(container: dict[str, Any]) -> dict[str, str]:
    """The environment Kubernetes gives the container, resolved from the ConfigMaps and Secrets here."""

    def source(kind: str, name: str) -> dict[str, str]:
        doc = named(kind, name)
        return {**doc.get("data", {}), **doc.get("stringData", {})}

    env: dict[str, str] = {}
    for ref in container.get("envFrom", []):
        if "configMapRef" in ref:
            env.update(source("ConfigMap", ref["configMapRef"]["name"]))
        else:
            env.update(source("Secret", ref["secretRef"]["name"]))
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = str(var["value"])
            continue
        ref = var["valueFrom"]
        kind, key_ref = (
            ("Secret", ref["secretKeyRef"]) if "secretKeyRef" in ref else ("ConfigMap", ref["configMapKeyRef"])
        )
        values = source(kind, key_ref["name"])
        assert key_ref["key"] in values, f"{var['name']}: {kind} {key_ref['name']} has no key {key_ref['key']!r}"
        env[var["name"]] = values[key_ref["key"]]
    return env


class Role:
    """The one workload whose container runs `corral SUBCOMMAND`, its pod spec, container, parsed
    arguments and resolved environment."""

    def __init__(self, subcommand: str) -> None:
        found = [(w, c, args) for _, w, c, args in corral_containers() if args.command == subcommand]
        assert len(found) == 1, f"expected one container running `corral {subcommand}`, found {len(found)}"
        self.workload, self.container, self.args = found[0]
        self.pod = self.workload["spec"]["template"]["spec"]
        self.env = container_env(self.container)
        self.settings = Settings.from_env(self.env)


def gjson(document: Any, path: str) -> Any:
    """KEDA's metrics-api valueLocation (GJSON) for plain dotted paths: keys and list indexes."""
    for part in path.split("."):
        if isinstance(document, list):
            document = document[int(part)]
        else:
            assert isinstance(document, dict) and part in document, f"valueLocation {path!r}: no {part!r}"
            document = document[part]
    return document


def scaled_object() -> dict[str, Any]:
    (doc,) = of_kind("ScaledObject")
    return doc


def trigger(kind: str) -> dict[str, Any]:
    (found,) = [t for t in scaled_object()["spec"]["triggers"] if t["type"] == kind]
    return found


# --- the manifests as Kubernetes objects ----------------------------------------------------


def test_every_manifest_is_a_named_object_in_the_namespace():
    assert DOCS, "no manifests under deploy/kubernetes"
    kinds = {doc["kind"] for _, doc in DOCS}
    expected = {"Namespace", "Secret", "ConfigMap", "Deployment", "Service", "Job", "PodDisruptionBudget"}
    assert expected | {"ScaledObject", "TriggerAuthentication", "HorizontalPodAutoscaler"} <= kinds
    for path, doc in DOCS:
        assert doc.get("apiVersion") and doc["metadata"].get("name"), f"{path}: {doc.get('kind')} lacks a name"
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == NAMESPACE, f"{path}: {doc['kind']} outside {NAMESPACE!r}"
    assert named("Namespace", NAMESPACE)


def test_secrets_hold_placeholders_only():
    for secret in of_kind("Secret"):
        assert "data" not in secret, "write placeholders as stringData, readable in review"
        for key, value in secret["stringData"].items():
            assert "change-me" in value, f"Secret {secret['metadata']['name']}: {key} is not a placeholder"


def test_selectors_match_their_pods_and_references_resolve():
    templates = {doc["metadata"]["name"]: template for doc, template in pod_templates()}
    for deployment in of_kind("Deployment"):
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    for selecting in of_kind("Service") + of_kind("PodDisruptionBudget"):
        spec = selecting["spec"]
        selector = spec["selector"] if selecting["kind"] == "Service" else spec["selector"]["matchLabels"]
        matching = [n for n, t in templates.items() if selector.items() <= t["metadata"]["labels"].items()]
        assert len(matching) == 1, f"{selecting['kind']} {selecting['metadata']['name']} selects {matching}"
    for _, template in pod_templates():
        spec = template["spec"]
        for volume in spec.get("volumes", []):
            if "configMap" in volume:
                named("ConfigMap", volume["configMap"]["name"])
        for container in spec["containers"]:
            container_env(container)  # every envFrom and valueFrom names an object and key defined here
            mounts = {m["name"] for m in container.get("volumeMounts", [])}
            assert mounts <= {v["name"] for v in spec.get("volumes", [])}


def test_every_container_runs_a_real_corral_command_on_one_image():
    commands: dict[str, Any] = {}
    images = set()
    for where, _, container, args in corral_containers():
        line = argv(container)
        assert "--database-url" not in line, f"{where}: the URL holds a password; pass CORRAL_DATABASE_URL instead"
        commands[args.command if args.command != "db" else f"db {args.db_command}"] = args
        images.add(container["image"])
    assert set(commands) == {"serve", "worker", "db upgrade"}
    assert len(images) == 1, f"migrations, API and workers must run the same image (the same code): {images}"
    serve, worker = commands["serve"], commands["worker"]
    assert serve.no_worker, "the API pods serve only; the worker Deployment executes runs"
    assert serve.host == "0.0.0.0", "bound to 127.0.0.1, the API is unreachable from the Service"
    assert worker.concurrency and worker.concurrency >= 1


def test_the_app_modules_named_import(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(ROOT))  # the image's WORKDIR holds examples/, as the repo root does
    specs = {args.app for _, _, _, args in corral_containers() if hasattr(args, "app")}
    specs.add(parse_cli(exec_form("ENTRYPOINT") + exec_form("CMD"), "Dockerfile").app)
    for spec in specs:
        module, _, attr = spec.partition(":")
        assert isinstance(getattr(importlib.import_module(module), attr, None), App), f"{spec} is not an App"


def test_corral_variables_are_real_settings():
    fields = {f"CORRAL_{name.upper()}" for name in Settings.__dataclass_fields__}
    for kind in ("ConfigMap", "Secret"):
        for doc in of_kind(kind):
            for key in {**doc.get("data", {}), **doc.get("stringData", {})}:
                if key.startswith("CORRAL_"):
                    assert key in fields, f"{kind} {doc['metadata']['name']}: {key} is no setting"
    for where, _, container, _ in corral_containers():
        env = container_env(container)
        unknown = {k for k in env if k.startswith("CORRAL_")} - fields
        assert not unknown, f"{where}: {unknown} are no settings"
        Settings.from_env(env)  # each value parses as its setting's type


def test_api_probes_point_at_ok_and_ready():
    api = Role("serve")
    ports = {p["name"]: p["containerPort"] for p in api.container["ports"]}
    port = api.args.port
    assert port in ports.values()
    probes = {name: api.container[name]["httpGet"] for name in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert probes["livenessProbe"]["path"] == "/ok"
    assert probes["startupProbe"]["path"] == "/ok"
    assert probes["readinessProbe"]["path"] == "/ready"
    for probe in probes.values():
        assert ports.get(probe["port"], probe["port"]) == port
    served = set(create_api(App([]), worker=False).openapi()["paths"])
    assert {"/ok", "/ready", "/metrics", "/corral/scaling"} <= served
    (service_port,) = named("Service", "corral-api")["spec"]["ports"]
    assert ports.get(service_port["targetPort"], service_port["targetPort"]) == port


def test_api_termination_grace_covers_the_prestop_pause_and_the_stream_drain():
    api = Role("serve")
    grace = api.settings.drain_grace  # corral serve's graceful shutdown of open connections
    pause = api.container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", ["sleep", "0"])
    assert pause[0] == "sleep"
    assert api.pod["terminationGracePeriodSeconds"] > float(pause[1]) + grace


def test_worker_termination_grace_exceeds_its_drain():
    worker = Role("worker")
    grace = worker.settings.drain_grace
    # Worker._drain: in-flight steps get `grace`, then stopped runs get up to max(5, grace) to
    # unwind and release their leases; a SIGKILL before that leaves them to lease expiry.
    assert worker.pod["terminationGracePeriodSeconds"] > grace + max(5.0, grace)
    # A worker has no readiness (it takes no traffic); its liveness is /ok on its --metrics-port.
    assert "readinessProbe" not in worker.container
    probe = worker.container["livenessProbe"]["httpGet"]
    ports = {p["name"]: p["containerPort"] for p in worker.container["ports"]}
    assert probe["path"] == "/ok" and ports[probe["port"]] == worker.args.metrics_port
    annotations = worker.workload["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(worker.args.metrics_port)
    resources = worker.container["resources"]
    assert resources["limits"]["memory"] and resources["requests"]["memory"], "a worker's memory is bounded"
    assert "replicas" not in worker.workload["spec"], "the autoscaler owns the worker's replicas"


async def test_the_workers_model_config_builds():
    worker = Role("worker")
    path = Path(worker.env["CORRAL_CONFIG"])
    (mount,) = [m for m in worker.container["volumeMounts"] if path.parent == Path(m["mountPath"])]
    (volume,) = [v for v in worker.pod["volumes"] if v["name"] == mount["name"]]
    text = named("ConfigMap", volume["configMap"]["name"])["data"][path.name]
    models = models_from_config(tomllib.loads(text), worker.env)  # api_key_env names resolve in its env
    assert "default" in models
    for model in models.values():
        await model.aclose()


def test_migration_job_runs_before_and_apart_from_the_fleet():
    job = named("Job", "corral-migrate")
    assert job["spec"]["template"]["spec"]["restartPolicy"] in ("Never", "OnFailure")
    assert job["spec"].get("backoffLimit", 6) <= 6 and job["spec"].get("activeDeadlineSeconds")


# --- the autoscaler's signal ----------------------------------------------------------------


@agent(name="noop")
async def noop(ctx: Context, input: Any) -> None:
    return None


async def fill(app: App) -> dict[str, int]:
    """Runs in every state that matters to the autoscaler; returns how many of each."""
    for _ in range(6):
        await app.submit("noop", {})
    now = time.time()
    claims = await app.store.claim_runs("deploy-test", 4, ["noop"], 60.0, now)
    assert len(claims) == 4
    due, later = claims[0].run, claims[1].run  # parked: a timer that fired and one that has not
    assert await app.store.park_run(Fence(due.id, due.attempt), now - 1.0, 0.0, [], False)
    assert await app.store.park_run(Fence(later.id, later.attempt), now + 3600.0, 0.0, [], False)
    return {"queued": 2, "running": 2, "waiting": 2, "due": 1}


def test_keda_scales_the_worker_deployment_on_in_flight_work_within_its_slots():
    worker = Role("worker")
    slots = worker.args.concurrency or worker.settings.concurrency
    name = worker.workload["metadata"]["name"]
    spec = scaled_object()["spec"]
    assert spec["scaleTargetRef"]["name"] == name
    assert spec["minReplicaCount"] >= 1, "a due parked run needs a worker to claim it"
    assert spec["minReplicaCount"] <= spec["maxReplicaCount"]
    assert spec["pollingInterval"] <= 30 and spec["cooldownPeriod"] >= 60
    for t in spec["triggers"]:
        target = float(t["metadata"].get("targetValue") or t["metadata"]["targetQueryValue"])
        # desired = ceil(fleet-wide value / target): a target over the slots per pod would leave
        # runs queued behind full workers with no scale-up.
        assert t["metricType"] == "AverageValue" and 0 < target <= slots, t
    auth = named("TriggerAuthentication", trigger("postgresql")["authenticationRef"]["name"])
    for ref in auth["spec"]["secretTargetRef"]:
        assert ref["parameter"] == "connection"
        assert ref["key"] in named("Secret", ref["name"])["stringData"]
    (hpa,) = of_kind("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == name
    (metric,) = hpa["spec"]["metrics"]
    assert metric["external"]["target"]["type"] == "AverageValue"
    assert 0 < float(metric["external"]["target"]["averageValue"]) <= slots
    assert hpa["spec"]["minReplicas"] >= 1


def test_prometheus_names_in_the_manifests_are_corral_metrics():
    families = {m.name: m.type for m in Metrics().registry.collect()}
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
    known = set(families) | {f"{n}{s}" for n, t in families.items() for s in suffixes.get(t, ())}
    used = {name for path in K8S.rglob("*.y*ml") for name in re.findall(r"\bcorral_[a-z_]+\b", path.read_text())}
    assert "corral_runs" in used
    assert used <= known, f"not metrics Corral exports: {used - known}"


async def test_keda_metrics_api_trigger_reads_a_number_from_corral_scaling(database_url: str):
    metadata = trigger("metrics-api")["metadata"]
    assert metadata.get("format", "json") == "json"
    url = urlsplit(metadata["url"])
    service = named("Service", "corral-api")
    assert url.hostname.split(".")[:2] == [service["metadata"]["name"], NAMESPACE]
    assert url.port == service["spec"]["ports"][0]["port"]
    app = App([noop], database_url=database_url)
    async with app:
        counts = await fill(app)
        api = create_api(app, worker=False, close_app=False)  # auth on, as deployed: KEDA sends no key
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://corral-api") as http:
            response = await http.get(url.path)
    assert response.status_code == 200, response.text
    value = gjson(response.json(), metadata["valueLocation"])
    assert isinstance(value, int | float) and not isinstance(value, bool)
    # in-flight work: queued, running, and parked runs whose timer fired (the same set as the SQL trigger)
    assert value == counts["queued"] + counts["running"] + counts["due"]


def runs_table() -> tuple[set[str], set[str]]:
    """The columns of `runs` in the PostgreSQL schema and the statuses its CHECK allows."""
    body = re.search(r"CREATE TABLE runs \((.*?)\n\);", SCHEMA.read_text(), re.S)
    assert body, f"no runs table in {SCHEMA.name}"
    text = re.sub(r"--[^\n]*", "", body.group(1))
    columns = {m.group(1) for m in re.finditer(r"^\s+([a-z_]+)\s+[a-z]", text, re.M)}
    check = re.search(r"status\s+text NOT NULL CHECK \(status IN \(([^)]*)\)\)", text)
    assert check
    return columns, set(re.findall(r"'([a-z_]+)'", check.group(1)))


def test_keda_postgresql_query_uses_real_columns_and_statuses():
    query = trigger("postgresql")["metadata"]["query"]
    columns, statuses = runs_table()
    assert re.search(r"\bFROM runs\b", query)
    identifiers = set(re.findall(r"\b([a-z_]+)\s*(?:IN\b|<=|>=|=|<|>)", query))
    assert identifiers and identifiers <= columns, f"not columns of runs: {identifiers - columns}"
    quoted = set(re.findall(r"'([a-z_]+)'", query))
    assert {"queued", "running"} <= quoted <= statuses


async def test_keda_postgresql_query_counts_in_flight_and_due_runs(postgres_url: str):
    import psycopg
    from psycopg import sql

    from corral.store._pg import parse_url

    app = App([noop], database_url=postgres_url)
    async with app:
        counts = await fill(app)
        options = parse_url(postgres_url)
        async with await psycopg.AsyncConnection.connect(options.conninfo, autocommit=True) as conn:
            if options.schema:  # the test's own schema; a deployment's tables are found as `runs`
                await conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(options.schema)))
            row = await (await conn.execute(trigger("postgresql")["metadata"]["query"])).fetchone()
    assert row is not None
    assert row[0] == counts["queued"] + counts["running"] + counts["due"]


# --- the image --------------------------------------------------------------------------------


def test_dockerfile_builds_a_non_root_corral_image():
    base = [line for line in DOCKER["ARG"] if line.startswith("PYTHON_IMAGE=")]
    assert base == ["PYTHON_IMAGE=python:3.11-slim"]
    assert all(line.split()[0] == "${PYTHON_IMAGE}" for line in DOCKER["FROM"])
    install = " ".join(DOCKER["RUN"])
    assert 'pip install ".[$extras]"' in install and "extras=postgres" in install
    assert "WITH_LLAMA=0" in DOCKER["ARG"], "the llama extra compiles: behind a build argument, off by default"
    (user,) = DOCKER["USER"]
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "a numeric non-root USER, which runAsNonRoot can verify"
    for _, template in pod_templates():
        context = template["spec"]["securityContext"]
        assert context["runAsNonRoot"] and context["runAsUser"] == int(uid)


def test_dockerfile_entrypoint_and_cmd_parse_with_the_cli():
    assert exec_form("ENTRYPOINT") == ["corral"]
    args = parse_cli(exec_form("ENTRYPOINT") + exec_form("CMD"), "Dockerfile CMD")
    assert args.command == "serve" and args.host == "0.0.0.0"
    assert [str(args.port)] == DOCKER["EXPOSE"]
    (healthcheck,) = DOCKER["HEALTHCHECK"]
    probe = json.loads(healthcheck.split(" CMD ", 1)[1])
    assert any(f"http://127.0.0.1:{args.port}/ok" in part for part in probe), probe
    assert any(line.startswith("examples/ ") for line in DOCKER["COPY"]), "CMD's app must be in the image"


def test_dockerignore_keeps_what_the_dockerfile_copies():
    patterns = [
        line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line.strip()[:1] not in ("", "#")
    ]
    copied = [
        source.rstrip("/")
        for line in DOCKER["COPY"]
        if not line.startswith("--from")
        for source in [word for word in line.split() if not word.startswith("--")][:-1]
    ]
    assert set(copied) >= {"pyproject.toml", "README.md", "src", "examples"}
    for source in copied:
        assert not any(fnmatch.fnmatch(source, p.rstrip("/")) for p in patterns), f"{source} is ignored"
    for kept_out in (".git", ".venv", "tests", "bench", "corral.db"):
        assert any(fnmatch.fnmatch(kept_out, p) for p in patterns), f"{kept_out} is sent to the builder"
