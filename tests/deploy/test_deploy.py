"""The deployment files in deploy/, checked by the real validators this machine has
(promtool, systemd-analyze, the Kubernetes API schemas that kubernetes-validate bundles),
structurally where it has none (the Dockerfile: no hadolint and no Docker engine here; KEDA's
and the Prometheus Operator's custom resources), and against Skivi itself: every flag and
SKIVI_* variable they name exists, the metrics port agrees everywhere, every grace period
covers the worst-case drain, and the commands they run (the migration Job, the image's
HEALTHCHECK, KEDA's query) do what their comments say, against a real PostgreSQL."""

from __future__ import annotations

import functools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kubernetes_validate
import psycopg
import pytest

import skivi
from skivi import cli
from skivi.cli.worker import build_parser
from skivi.config import ENV_VARIABLES, SHUTDOWN_TIMEOUT_DEFAULT
from skivi.db.migrate import known_migrations
from skivi.engine import EXIT_CONFIG
from skivi.metrics import EngineMetrics, start_exporter, stop_exporter
from tests.support.db import MakeDatabase, connect
from tests.support.deploy import DEPLOY, K8S, documents, k8s_object, k8s_objects, keda_query

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = DEPLOY / "Dockerfile"
DOCKERIGNORE = DEPLOY / "Dockerfile.dockerignore"
COMPOSE = DEPLOY / "docker-compose.yml"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
UNIT = DEPLOY / "systemd" / "skivi-engine.service"
UNIT_ENV = DEPLOY / "systemd" / "engine.env.example"
ALERT_RULES = REPO / "grafana" / "alerts" / "skivi-rules.yml"
GRAFANA = REPO / "grafana"

ENGINE_MODULE = ["-m", "skivi.engine"]
ADMIN_MODULE = ["-m", "skivi"]
METRICS_PORT = 9464
# Kubernetes versions the manifests must be valid for: an old floor and the newest schemas
# kubernetes-validate ships.
KUBERNETES_VERSIONS = ("1.27", kubernetes_validate.latest_version())
# Custom resources: no schema offline, checked structurally below.
CUSTOM_API_GROUPS = ("keda.sh/", "monitoring.coreos.com/")

PROMTOOL = shutil.which("promtool")
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
REQUIRE_PROMETHEUS = os.environ.get("SKIVI_REQUIRE_PROMETHEUS") == "1"


# -- reading the files ----------------------------------------------------------------------


def yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yml", ".yaml"))


@dataclass
class Instruction:
    keyword: str
    value: str


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [i.value for i in self.instructions if i.keyword == keyword]

    def one(self, keyword: str) -> str:
        values = self.all(keyword)
        assert len(values) == 1, f"stage {self.name}: expected one {keyword}, got {values}"
        return values[0]


def dockerfile_stages(text: str) -> list[Stage]:
    """The Dockerfile's stages, continuation lines joined, comments dropped, and the global
    ARG defaults substituted into the FROM lines."""
    logical: list[str] = []
    pending = ""
    for line in text.splitlines():
        if line.lstrip().startswith("#") or not (pending or line.strip()):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, value = line.strip().partition(" ")
        keyword, value = keyword.upper(), value.strip()
        if keyword == "FROM":
            parts = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], value).split()
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(parts[0], name))
        elif stages:
            stages[-1].instructions.append(Instruction(keyword, value))
        elif keyword == "ARG":
            arg, _, default = value.partition("=")
            args[arg] = default
    return stages


def exec_form(value: str) -> list[str]:
    """An instruction's JSON (exec) form; fails on the shell form."""
    assert value.startswith("["), f"not the exec form: {value}"
    parsed = json.loads(value)
    assert isinstance(parsed, list) and all(isinstance(p, str) for p in parsed)
    return parsed


def healthcheck_command(stage: Stage) -> list[str]:
    _options, marker, command = stage.one("HEALTHCHECK").partition("CMD ")
    assert marker, "HEALTHCHECK without CMD"
    return exec_form(command.strip())


def unit_settings(text: str) -> dict[str, dict[str, list[str]]]:
    """A systemd unit file as {section: {key: [values in order]}}."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"setting outside a section: {line}"
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def env_file_names(path: Path) -> list[str]:
    names = []
    for line in path.read_text().splitlines():
        line = line.strip().removeprefix("#")
        match = re.fullmatch(r"([A-Z][A-Z0-9_]*)=.*", line)
        if match:
            names.append(match.group(1))
    return names


def compose_services() -> dict[str, Any]:
    services: dict[str, Any] = documents(COMPOSE)[0]["services"]
    return services


def compose_engines() -> dict[str, Any]:
    return {name: s for name, s in compose_services().items()
            if s.get("image", "").startswith("skivi-engine")}


def seconds(text: str | int) -> float:
    """A duration as compose ("90s", "1m30s") or systemd ("90", "90s", "1min 30s") write it."""
    if isinstance(text, int):
        return float(text)
    units = {"h": 3600.0, "m": 60.0, "min": 60.0, "s": 1.0, "ms": 0.001}
    text = text.replace(" ", "")
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)(min|ms|h|m|s)", text)
    assert "".join(n + u for n, u in parts) == text, f"unreadable duration {text!r}"
    return sum(float(n) * units[u] for n, u in parts)


# -- what the engine accepts ---------------------------------------------------------------


@functools.cache
def help_text(*argv: str) -> str:
    """The --help of ``python <argv>`` (the engine, or a command of the admin CLI)."""
    result = subprocess.run([sys.executable, *argv, "--help"], capture_output=True,
                            text=True, cwd=REPO, timeout=60, check=False,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr
    return result.stdout


def engine_help() -> str:
    return help_text(*ENGINE_MODULE)


def help_flags(text: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", text))


def known_env_names() -> set[str]:
    names = set(re.findall(r"\b(SKIVI_[A-Z_]+)\b", engine_help()))
    names.update(name for variables in ENV_VARIABLES.values() for name in variables)
    return names


def engine_argvs() -> dict[str, list[str]]:
    """Every engine command line in deploy/ (the arguments after ``-m skivi.engine``)."""
    found: dict[str, list[str]] = {}
    runtime = dockerfile_stages(DOCKERFILE.read_text())[-1]
    assert exec_form(runtime.one("ENTRYPOINT")) == ["python", *ENGINE_MODULE]
    found["Dockerfile CMD"] = exec_form(runtime.one("CMD"))
    for name, service in compose_engines().items():
        found[f"compose {name}"] = list(service["command"])
    for path, obj in k8s_objects():
        if obj["kind"] == "Deployment":
            for container in obj["spec"]["template"]["spec"]["containers"]:
                assert "command" not in container, "the image's ENTRYPOINT runs the engine"
                found[f"{path.name} {container['name']}"] = list(container["args"])
    exec_start = unit_settings(UNIT.read_text())["Service"]["ExecStart"]
    assert len(exec_start) == 1
    argv = shlex.split(exec_start[0])
    assert argv[1:3] == ENGINE_MODULE, argv
    found[UNIT.name] = argv[3:]
    return found


def admin_argvs() -> dict[str, list[str]]:
    """Every admin CLI command line in deploy/ (the arguments after ``-m skivi``)."""
    found: dict[str, list[str]] = {}
    for path, obj in k8s_objects():
        if obj["kind"] not in ("Deployment", "Job"):
            continue
        pod = obj["spec"]["template"]["spec"]
        for container in [*pod.get("initContainers", []), *pod["containers"]]:
            command = container.get("command")
            if command:
                assert command[:3] == ["python", *ADMIN_MODULE], command
                found[f"{path.name} {container['name']}"] = list(command[3:])
    for line in unit_settings(UNIT.read_text())["Service"].get("ExecStartPre", []):
        argv = shlex.split(line.lstrip("-"))
        assert argv[1:3] == ADMIN_MODULE, argv
        found[f"{UNIT.name} ExecStartPre"] = argv[3:]
    return found


def flag_value(argv: list[str], flag: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == flag:
            return argv[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def env_names_in_deploy() -> dict[str, set[str]]:
    """SKIVI_* names set or read by each deploy file."""
    found: dict[str, set[str]] = {}
    for path in [DOCKERFILE, COMPOSE, UNIT, UNIT_ENV, *sorted(K8S.glob("*.yaml"))]:
        names = set(re.findall(r"\b(SKIVI_[A-Z_]+)\b", path.read_text()))
        if names:
            found[path.name] = names
    return found


# -- YAML ------------------------------------------------------------------------------------


def test_every_yaml_file_parses_when_loaded() -> None:
    paths = yaml_files()
    assert {p.name for p in paths} >= {"docker-compose.yml", "prometheus.yml", "deployment.yaml",
                                       "keda.yaml", "pdb.yaml", "service.yaml"}
    for path in paths:
        assert documents(path), f"{path} has no document"


# -- the Dockerfile ------------------------------------------------------------------------


def test_dockerfile_builds_psycopg_c_in_a_build_stage_when_read() -> None:
    stages = dockerfile_stages(DOCKERFILE.read_text())
    assert len(stages) >= 2, "multi-stage: a build stage and a slim runtime"
    build = stages[0]
    run = " ".join(build.all("RUN"))
    for package in ("gcc", "libpq-dev"):
        assert re.search(rf"apt-get install .*\b{package}\b", run), package
    assert "pip wheel" in run
    # The project's dependency is psycopg[c]: the wheel built here is its C implementation.
    pyproject = (REPO / "pyproject.toml").read_text()
    assert re.search(r'"psycopg\[c\][^"]*"', pyproject)


def test_dockerfile_runtime_is_slim_non_root_and_runs_the_engine_as_pid_1_when_read() -> None:
    stages = dockerfile_stages(DOCKERFILE.read_text())
    runtime = stages[-1]
    assert re.fullmatch(r"python:3\.1[1-9]-slim(-\w+)?", runtime.base), runtime.base
    assert stages[0].base == runtime.base, "build and run on the same Python"
    run = " ".join(runtime.all("RUN"))
    assert re.search(r"apt-get install .*\blibpq5\b", run)
    assert not re.search(r"\b(gcc|libpq-dev|build-essential)\b", run), "no compiler at run time"
    assert "psycopg.pq.__impl__ == 'c'" in run, "the image checks it got the C implementation"
    copied = [v for v in runtime.all("COPY") if "--from=" in v]
    assert copied, "the runtime copies the wheels from the build stage"
    user = runtime.all("USER")
    assert user, "the runtime stage sets a USER"
    assert user[-1].split(":")[0] not in ("root", "0")
    assert exec_form(runtime.one("ENTRYPOINT")) == ["python", *ENGINE_MODULE]
    assert exec_form(runtime.one("CMD")) == ["--tasks", "/app/tasks"]
    assert runtime.one("STOPSIGNAL") == "SIGTERM"
    assert runtime.one("EXPOSE") == str(METRICS_PORT)


def test_dockerfile_copies_only_files_that_exist_when_built_from_the_repository() -> None:
    stages = dockerfile_stages(DOCKERFILE.read_text())
    sources: set[str] = set()
    for stage in stages:
        for value in stage.all("COPY"):
            if "--from=" in value:
                continue
            parts = value.split()
            sources.update(parts[:-1])
    assert sources
    for source in sources:
        assert (REPO / source).exists(), f"COPY {source}: not in the build context"
    # The context is the repository root: the Dockerfile's own ignore file lets in exactly
    # what is copied (never .pgdata, .venv or .git).
    patterns = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    assert patterns[0] == "*"
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    assert allowed == {s.rstrip("/") for s in sources}


def test_dockerfile_healthcheck_asks_the_exporter_when_run(tmp_path: Path) -> None:
    command = healthcheck_command(dockerfile_stages(DOCKERFILE.read_text())[-1])
    assert command[0] == "python"
    argv = [sys.executable, *command[1:]]

    def check(port: int | None) -> int:
        env = {k: v for k, v in os.environ.items() if k != "SKIVI_METRICS_PORT"}
        if port is not None:
            env["SKIVI_METRICS_PORT"] = str(port)
        return subprocess.run(argv, env=env, capture_output=True, timeout=30,
                              check=False).returncode

    healthy = {"now": True}
    server = start_exporter("127.0.0.1", 0, EngineMetrics("test").registry,
                            health=lambda path: (healthy["now"], "test"))
    port = int(server.server_port)
    try:
        assert check(port) == 0, "healthy while the engine's /healthz says so"
        healthy["now"] = False
        assert check(port) != 0, "unhealthy when /healthz says the event loop stalled"
    finally:
        stop_exporter(server)
    assert check(port) != 0, "unhealthy when nothing answers"
    assert check(None) == 0, "metrics disabled: nothing to check"
    assert check(0) == 0


# -- flags, variables and ports --------------------------------------------------------------


def test_engine_command_lines_use_only_flags_the_engine_has_when_parsed() -> None:
    flags = help_flags(engine_help())
    assert {"--tasks", "--metrics-port", "--shutdown-timeout", "--no-migrate"} <= flags
    for where, argv in engine_argvs().items():
        used = {a.split("=", 1)[0] for a in argv if a.startswith("--")}
        assert used <= flags, f"{where}: {sorted(used - flags)} not in the engine's --help"
        # and the engine's own parser accepts them, values included
        build_parser().parse_args(argv)


def test_admin_command_lines_use_only_commands_and_flags_the_cli_has_when_parsed() -> None:
    argvs = admin_argvs()
    assert sorted(argvs) == ["deployment.yaml schema-check", "migrate-job.yaml migrate",
                             "skivi-engine.service ExecStartPre"]
    for where, argv in argvs.items():
        command = argv[0]
        commands = re.findall(r"^    ([a-z][a-z-]*) ", help_text(*ADMIN_MODULE), re.MULTILINE)
        assert command in commands, f"{where}: `skivi {command}` is not in `skivi --help`"
        flags = help_flags(help_text(*ADMIN_MODULE, command))
        used = {a.split("=", 1)[0] for a in argv[1:] if a.startswith("--")}
        assert used <= flags, f"{where}: {sorted(used - flags)} not in `skivi {command} --help`"
        args = cli.build_parser().parse_args(argv)
        assert args.command == command


def test_deploy_files_name_only_variables_skivi_reads_when_scanned() -> None:
    known = known_env_names()
    for where, names in env_names_in_deploy().items():
        assert names <= known, f"{where}: unknown {sorted(names - known)}"


def test_metrics_port_agrees_everywhere_when_compared() -> None:
    for where, argv in engine_argvs().items():
        if where == "Dockerfile CMD":
            continue  # the image enables metrics through its environment
        assert flag_value(argv, "--metrics-port") == str(METRICS_PORT), where
    runtime = dockerfile_stages(DOCKERFILE.read_text())[-1]
    image_env = " ".join(runtime.all("ENV"))
    assert re.search(rf"\bSKIVI_METRICS_PORT={METRICS_PORT}\b", image_env)
    assert re.search(r"\bSKIVI_METRICS_HOST=0\.0\.0\.0\b", image_env)
    # Prometheus scrapes exactly the compose engines, on that port.
    config = documents(PROMETHEUS_CONFIG)[0]
    targets = {t for job in config["scrape_configs"] for sc in job["static_configs"]
               for t in sc["targets"]}
    assert targets == {f"{name}:{METRICS_PORT}" for name in compose_engines()}
    for service in compose_engines().values():
        assert service["environment"]["SKIVI_METRICS_HOST"] == "0.0.0.0"
    # Kubernetes: container port = Service port = annotations = probes' named port.
    deployment = k8s_object("Deployment")
    pod = deployment["spec"]["template"]
    container = pod["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": METRICS_PORT}
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(METRICS_PORT)
    pod_env = {e["name"]: e.get("value") for e in container["env"]}
    assert pod_env["SKIVI_METRICS_HOST"] == "0.0.0.0"
    service = k8s_object("Service")
    (service_port,) = service["spec"]["ports"]
    assert service_port["port"] == METRICS_PORT
    assert service_port["targetPort"] in ("metrics", METRICS_PORT)
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["port"] in ("metrics", METRICS_PORT)
    monitor = k8s_object("ServiceMonitor")
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == [service_port["name"]]


def drain_worst_case(argv: list[str]) -> float:
    """The longest a graceful stop can take (skivi.engine.supervisor.Engine.shutdown): the cron
    process 5 s, running jobs up to the shutdown timeout, writing results up to
    max(timeout, 10 s), deregistering 5 s."""
    value = flag_value(argv, "--shutdown-timeout")
    timeout = float(value) if value is not None else SHUTDOWN_TIMEOUT_DEFAULT
    return 5 + timeout + max(timeout, 10.0) + 5


def test_grace_periods_cover_the_worst_case_drain_when_compared() -> None:
    argvs = engine_argvs()
    for name, service in compose_engines().items():
        assert service["stop_signal"] == "SIGTERM"
        grace = seconds(service["stop_grace_period"])
        assert grace > drain_worst_case(argvs[f"compose {name}"]), name
    deployment = k8s_object("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > drain_worst_case(
        argvs["deployment.yaml engine"])
    service = unit_settings(UNIT.read_text())["Service"]
    assert seconds(service["TimeoutStopSec"][-1]) > drain_worst_case(argvs[UNIT.name])


# -- docker compose ----------------------------------------------------------------------------


def test_compose_wires_postgres_engines_prometheus_and_grafana_when_read() -> None:
    services = compose_services()
    assert set(services) >= {"postgres", "prometheus", "grafana"}
    assert len(compose_engines()) == 2
    health = services["postgres"]["healthcheck"]["test"]
    assert health[:2] == ["CMD", "pg_isready"]
    for name, engine in compose_engines().items():
        assert engine["depends_on"]["postgres"]["condition"] == "service_healthy", name
        url = engine["environment"]["SKIVI_DATABASE_URL"]
        assert "@postgres:5432/" in url, name
        build = engine["build"]
        assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
    # Every host path mounted exists, and lands where its reader looks for it.
    mounts: dict[str, dict[str, Path]] = {}
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            if source.startswith("."):
                path = (DEPLOY / source).resolve()
                assert path.exists(), f"{name}: {source} does not exist"
                mounts.setdefault(name, {})[target] = path
    prometheus = mounts["prometheus"]
    assert prometheus["/etc/prometheus/prometheus.yml"] == PROMETHEUS_CONFIG
    rule_files = documents(PROMETHEUS_CONFIG)[0]["rule_files"]
    assert [prometheus[str(Path("/etc/prometheus") / r)] for r in rule_files] == [ALERT_RULES]
    grafana = mounts["grafana"]
    assert grafana["/etc/grafana/provisioning"] == GRAFANA / "provisioning"
    provider = documents(GRAFANA / "provisioning" / "dashboards" / "skivi.yml")[0]
    assert grafana[provider["providers"][0]["options"]["path"]] == GRAFANA / "dashboards"
    datasource = documents(GRAFANA / "provisioning" / "datasources" / "prometheus.yml")[0]
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    assert "9090:9090" in services["prometheus"]["ports"]


def test_compose_example_tasks_load_when_registered() -> None:
    system = skivi.create_system({"worker": {"task_directory": str(DEPLOY / "tasks")}})
    assert "hello" in system.registry().identifiers()


# -- Prometheus ----------------------------------------------------------------------------------


def test_prometheus_scrapes_job_skivi_when_read() -> None:
    config = documents(PROMETHEUS_CONFIG)[0]
    # grafana/alerts/skivi-rules.yml selects job="skivi".
    assert [job["job_name"] for job in config["scrape_configs"]] == ["skivi"]
    assert 'job="skivi"' in ALERT_RULES.read_text()


def test_prometheus_config_passes_promtool_when_checked(tmp_path: Path) -> None:
    if PROMTOOL is None:
        message = ("Debian's prometheus package is not installed (no promtool on PATH): "
                   "apt-get install -y prometheus")
        if REQUIRE_PROMETHEUS:
            pytest.fail(message + " (SKIVI_REQUIRE_PROMETHEUS=1)")
        pytest.skip(message)
    # Lay the files out as the compose file mounts them, so the rule file is checked too.
    config = tmp_path / "prometheus.yml"
    shutil.copy(PROMETHEUS_CONFIG, config)
    for rule_file in documents(PROMETHEUS_CONFIG)[0]["rule_files"]:
        (tmp_path / rule_file).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ALERT_RULES, tmp_path / rule_file)
    result = subprocess.run([PROMTOOL, "check", "config", str(config)], capture_output=True,
                            text=True, timeout=60, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "SUCCESS" in output and "1 rule files found" in output, output


# -- systemd ---------------------------------------------------------------------------------------


def verifiable_unit(tmp_path: Path) -> Path:
    """The unit with ExecStart's interpreter replaced by this one (verify needs it to exist)."""
    text = UNIT.read_text()
    text, n = re.subn(r"^(ExecStart(?:Pre)?)=(\S+)", lambda m: f"{m.group(1)}={sys.executable}",
                      text, flags=re.MULTILINE)
    assert n == 2
    path = tmp_path / UNIT.name
    path.write_text(text)
    return path


def require_systemd_analyze() -> str:
    if SYSTEMD_ANALYZE is None:
        pytest.skip("systemd-analyze is not installed: apt-get install -y systemd")
    return SYSTEMD_ANALYZE


def test_systemd_unit_passes_systemd_analyze_verify_when_checked(tmp_path: Path) -> None:
    analyze = require_systemd_analyze()
    unit = verifiable_unit(tmp_path)
    result = subprocess.run([analyze, "verify", "--man=no", str(unit)], capture_output=True,
                            text=True, timeout=60, check=False)
    # verify only warns (exit 0) about unknown keys and bad values: any output is a failure.
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), \
        result.stdout + result.stderr


def test_systemd_unit_hardening_is_rated_ok_when_analyzed(tmp_path: Path) -> None:
    analyze = require_systemd_analyze()
    unit = verifiable_unit(tmp_path)
    result = subprocess.run([analyze, "security", "--offline=yes", "--no-pager", str(unit)],
                            capture_output=True, text=True, timeout=60, check=False)
    output = result.stdout + result.stderr
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", output)
    assert match, output
    assert float(match.group(1)) < 4.0, output


def test_systemd_unit_lets_the_engine_drain_when_stopped() -> None:
    settings = unit_settings(UNIT.read_text())
    service = settings["Service"]

    def only(key: str) -> str:
        assert key in service, f"{UNIT.name}: no {key}="
        return service[key][-1]

    assert only("KillMode") == "mixed"  # SIGTERM to the parent only; it stops its children
    assert only("KillSignal") == "SIGTERM"
    assert only("Restart") == "on-failure"
    assert only("RestartPreventExitStatus").split() == [str(EXIT_CONFIG)]
    assert only("EnvironmentFile").lstrip("-").startswith("/etc/")
    assert only("User") not in ("root", "0")
    assert only("NoNewPrivileges") == "yes"
    assert only("ProtectSystem") == "strict"
    assert settings["Install"]["WantedBy"] == ["multi-user.target"]
    assert "SKIVI_DATABASE_URL" in env_file_names(UNIT_ENV)
    # The worker role cannot migrate: the engine must not try, and waits for the migrations.
    assert "--no-migrate" in engine_argvs()[UNIT.name]
    assert admin_argvs()[f"{UNIT.name} ExecStartPre"] == ["migrate", "--check"]


# -- Kubernetes ------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_kubernetes_manifests_match_the_api_schemas_when_validated(version: str) -> None:
    checked = []
    for path, obj in k8s_objects():
        if obj["apiVersion"].startswith(CUSTOM_API_GROUPS):
            continue
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{path.name} {obj['kind']}: {where}: {exc.message}")
        checked.append(obj["kind"])
    assert sorted(checked) == ["Deployment", "Job", "PodDisruptionBudget", "Secret", "Service"]


def secret_keys() -> dict[str, set[str]]:
    return {d["metadata"]["name"]: set(d.get("stringData", {})) | set(d.get("data", {}))
            for _, d in k8s_objects() if d["kind"] == "Secret"}


def test_kubernetes_references_resolve_when_followed() -> None:
    secrets = secret_keys()
    deployment = k8s_object("Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    for _, obj in k8s_objects():
        if obj["kind"] in ("Deployment", "Job"):
            pod = obj["spec"]["template"]["spec"]
            for container in [*pod.get("initContainers", []), *pod["containers"]]:
                for env in container.get("env", []):
                    ref = env.get("valueFrom", {}).get("secretKeyRef")
                    if ref:
                        assert ref["key"] in secrets[ref["name"]], (obj["kind"], ref)
    # The engines (and their schema check) use the worker role, the migration Job the owner.
    pod = deployment["spec"]["template"]["spec"]
    for container in [*pod["initContainers"], *pod["containers"]]:
        (url,) = [e for e in container["env"] if e["name"] == "SKIVI_DATABASE_URL"]
        assert url["valueFrom"]["secretKeyRef"]["key"] == "worker-url", container["name"]
        assert container["image"] == pod["containers"][0]["image"]
    assert "--no-migrate" in engine_argvs()["deployment.yaml engine"]
    job = k8s_object("Job")
    (job_env,) = job["spec"]["template"]["spec"]["containers"][0]["env"]
    assert job_env["valueFrom"]["secretKeyRef"]["key"] == "owner-url"
    for kind in ("PodDisruptionBudget", "Service"):
        obj = k8s_object(kind)
        labels = obj["spec"]["selector"]
        labels = labels.get("matchLabels", labels)
        assert labels.items() <= pod_labels.items(), kind
    service = k8s_object("Service")
    monitor = k8s_object("ServiceMonitor")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= \
        service["metadata"]["labels"].items()
    # The alert rules select job="skivi": the Operator names the job after the Service.
    assert service["metadata"]["name"] == "skivi"


def test_kubernetes_probes_never_kill_a_draining_engine_when_read() -> None:
    deployment = k8s_object("Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    # Both probes ask the metrics exporter, which the engine serves until its drain is over
    # (Engine.shutdown stops it last); no exec probe that could hang on a busy pod. Liveness
    # asks only that the event loop runs (tests/engine/test_metrics.py: /healthz stays 200
    # while the engine drains).
    from skivi.metrics import HEALTH_PATHS

    paths = {p: container[p]["httpGet"]["path"] for p in ("readinessProbe", "livenessProbe")}
    assert paths == {"readinessProbe": "/readyz", "livenessProbe": "/healthz"}
    assert set(paths.values()) == set(HEALTH_PATHS)
    for probe in paths:
        assert set(container[probe]) & {"exec", "tcpSocket", "grpc"} == set()
    liveness = container["livenessProbe"]
    assert liveness["periodSeconds"] * liveness["failureThreshold"] >= 120
    assert "lifecycle" not in container, "SIGTERM alone starts the drain"


def test_keda_objects_are_well_formed_when_read() -> None:
    auth = k8s_object("TriggerAuthentication")
    scaled = k8s_object("ScaledObject")
    for obj in (auth, scaled):
        assert obj["apiVersion"] == "keda.sh/v1alpha1"
    secrets = secret_keys()
    refs = auth["spec"]["secretTargetRef"]
    assert [r["parameter"] for r in refs] == ["connection"]
    for ref in refs:
        assert ref["key"] in secrets[ref["name"]]
    assert refs[0]["key"] == "worker-url"
    spec = scaled["spec"]
    deployment = k8s_object("Deployment")
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                      "name": deployment["metadata"]["name"]}
    assert isinstance(spec["minReplicaCount"], int) and spec["minReplicaCount"] >= 1, \
        "cron needs a running engine: never scale to zero"
    assert isinstance(spec["maxReplicaCount"], int)
    assert spec["maxReplicaCount"] > spec["minReplicaCount"]
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "postgresql"
    assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
    metadata = trigger["metadata"]
    # KEDA's trigger metadata is a map of strings.
    assert all(isinstance(v, str) for v in metadata.values()), metadata
    assert set(metadata) <= {"query", "targetQueryValue", "activationTargetQueryValue"}
    float(metadata["targetQueryValue"])
    float(metadata["activationTargetQueryValue"])
    behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert set(behavior) <= {"scaleUp", "scaleDown"}


def test_keda_target_is_one_pods_job_slots_when_compared() -> None:
    argv = engine_argvs()["deployment.yaml engine"]
    processes, concurrency = flag_value(argv, "--processes"), flag_value(argv, "--concurrency")
    assert processes is not None and concurrency is not None
    container = k8s_object("Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["requests"]["cpu"] == processes, "one process per CPU"
    scaled = k8s_object("ScaledObject")["spec"]
    target = float(scaled["triggers"][0]["metadata"]["targetQueryValue"])
    assert target == int(processes) * int(concurrency)
    query = keda_query()
    caps = [int(n) for n in re.findall(r"\blimit (\d+)\b", query)]
    outer = re.search(r",\s*(\d+)\)\s*$", query)
    assert len(caps) == 2 and outer, "every count of the query is bounded"
    caps.append(int(outer.group(1)))
    assert min(caps) >= scaled["maxReplicaCount"] * target, "a cap must never limit scaling"


def run_scalar(conn: psycopg.Connection[Any], query: str) -> int:
    row = conn.execute(query.encode()).fetchone()
    assert row is not None
    return int(row[0])


def test_keda_query_returns_the_demand_in_job_slots_when_run(
        conn: psycopg.Connection[Any]) -> None:
    conn.execute("""select skivi.add_jobs(jsonb_build_array(
        '{"task": "a"}'::jsonb, '{"task": "a"}'::jsonb, '{"task": "a"}'::jsonb,
        jsonb_build_object('task', 'later', 'run_at', now() + interval '1 hour'),
        '{"task": "s", "queue_name": "free"}'::jsonb,
        '{"task": "s", "queue_name": "free"}'::jsonb,
        '{"task": "s", "queue_name": "free"}'::jsonb,
        '{"task": "s", "queue_name": "busy"}'::jsonb,
        '{"task": "s", "queue_name": "busy"}'::jsonb))""")
    # queue "busy" has a running job; a live engine runs 7 jobs, a stopping one and a dead
    # one (stale heartbeat) are not counted.
    engines = conn.execute("""
        insert into skivi.engine (hostname, pid, version, lease_timeout, processes,
                                  concurrency, in_flight, stopping, heartbeat_at)
        values ('live', 1, 'v', 30, 2, 16, 7, false, now()),
               ('stopping', 2, 'v', 30, 2, 16, 100, true, now()),
               ('dead', 3, 'v', 30, 2, 16, 1000, false, now() - interval '1 hour')
        returning id""").fetchall()
    live = engines[0][0]
    conn.execute("""
        with m as (
            delete from skivi.job
            where id = (select min(id) from skivi.job where queue_name = 'busy')
            returning *
        ), j as (  -- claimed, as a claim does it: moved to job_running
            insert into skivi.job_running
            select id, task_identifier, queue_name, payload, priority, run_at, attempts,
                   max_attempts, last_error, key, flags, %(e)s, now(), lease, created_at,
                   updated_at, created_by
            from m
            returning id)
        update skivi.job_queue set job_id = j.id, locked_by = %(e)s, locked_at = now()
        from j where queue_name = 'busy'""", {"e": live})
    # 3 runnable without a queue + 1 free serial queue + 7 running on the live engine
    assert run_scalar(conn, keda_query()) == 3 + 1 + 7
    capped = keda_query().replace("limit 5000", "limit 2").replace("5000)", "5)")
    assert run_scalar(conn, capped) == 5


# -- the migration commands -------------------------------------------------------------------


def run_admin(argv: list[str], url: str) -> subprocess.CompletedProcess[str]:
    env: Mapping[str, str] = {**os.environ, "PYTHONPATH": str(REPO), "SKIVI_DATABASE_URL": url}
    return subprocess.run([sys.executable, *ADMIN_MODULE, *argv], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.slow
def test_schema_check_holds_engines_until_the_migrate_job_has_run_when_run(
        make_database: MakeDatabase) -> None:
    argvs = admin_argvs()
    check, migrate = argvs["deployment.yaml schema-check"], argvs["migrate-job.yaml migrate"]
    url = make_database(template=None)
    before = run_admin(check, url)
    assert before.returncode == 1, before.stdout + before.stderr  # pending: the pod waits
    assert "0001_initial.sql" in before.stdout
    first = run_admin(migrate, url)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "applied 0001_initial.sql" in first.stdout
    with connect(url) as c:
        assert c.execute("select count(*) from skivi.migration").fetchone() == (
            len(known_migrations()),)
    again = run_admin(migrate, url)
    assert again.returncode == 0 and "nothing to apply" in again.stdout, again.stdout
    after = run_admin(check, url)
    assert after.returncode == 0, after.stdout + after.stderr  # the engines may start
