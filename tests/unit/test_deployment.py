"""The container deployment: Dockerfile, docker-compose.yml and the Prometheus files.

No Docker engine is needed. docker-compose.yml is checked against the official Compose
Specification JSON schema (vendored at deploy/compose-spec.schema.json, from
compose-spec/compose-spec schema/compose-spec.json), then for what the stack needs to work:
services wired to each other by name, secrets never baked in, mounted files present, health
checks that really pass or fail. promtool and `docker compose`, where installed, check the rest.
"""

from __future__ import annotations

import copy
import http.server
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from fnmatch import fnmatch
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
COMPOSE_SCHEMA = ROOT / "deploy" / "compose-spec.schema.json"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
ALERTS = PROMETHEUS_DIR / "alerts.yml"
ALERTS_TEST = PROMETHEUS_DIR / "alerts_test.yml"

REQUIRED_SERVICES = {
    "postgres",
    "temporal",
    "temporal-admin-tools",
    "temporal-ui",
    "redis",
    "api",
    "worker",
    "prometheus",
}
APP_SERVICES = ("api", "worker")
SECRETS = ("DEALFLOW_ADMIN_TOKEN", "DEALFLOW_SECRET_KEY")
SEARCH_ATTRIBUTES = {
    "DealId": "Keyword",
    "PipelineId": "Keyword",
    "DealStage": "Keyword",
    "DealStatus": "Keyword",
    "IsRotting": "Bool",
}
REQUIRED_ALERTS = {
    "DeadLetters",
    "CircuitOpen",
    "WebhookRejectionRate",
    "HandoffBacklog",
    "ProcessingErrorRate",
    "WebhookAckLatencyHigh",
    "WebhookDeliveryFailures",
    "ProcessingTimeHigh",
    "AlertDeliveryFailing",
}
# Values a developer would export before `docker compose up` (secrets are 16+ characters).
TEST_ENV = {
    "DEALFLOW_ADMIN_TOKEN": "test-admin-token-0123456789abcdef",
    "DEALFLOW_SECRET_KEY": "test-secret-key-0123456789abcdef",
    "DEALFLOW_DB_PASSWORD": "app-db-pw",
    "TEMPORAL_DB_PASSWORD": "temporal-db-pw",
}


# --- Compose variable interpolation (the subset of the spec this file uses) -------------------


class InterpolationError(ValueError):
    pass


_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    r"|(?P<named>[A-Za-z_][A-Za-z0-9_]*))"
)


def _interpolate_text(text: str, env: dict[str, str]) -> str:
    def replace(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        name = match["braced"] or match["named"]
        op, arg = match["op"], match["arg"] or ""
        value = env.get(name)
        if op == ":-":
            return value if value else arg
        if op == "-":
            return arg if value is None else value
        if op == ":?" and not value:
            raise InterpolationError(f"{name}: {arg}")
        if op == "?" and value is None:
            raise InterpolationError(f"{name}: {arg}")
        return value or ""

    return _VARIABLE.sub(replace, text)


def interpolate(node: object, env: dict[str, str]) -> object:
    if isinstance(node, str):
        return _interpolate_text(node, env)
    if isinstance(node, list):
        return [interpolate(item, env) for item in node]
    if isinstance(node, dict):
        return {key: interpolate(value, env) for key, value in node.items()}
    return node


def test_interpolation_helper_follows_the_compose_rules() -> None:
    env = {"SET": "v", "EMPTY": ""}
    assert _interpolate_text("${SET:-d} ${EMPTY:-d} ${EMPTY-d} ${UNSET-d} $$x $SET", env) == (
        "v d  d $x v"
    )
    with pytest.raises(InterpolationError, match="say why"):
        _interpolate_text("${EMPTY:?say why}", env)
    assert _interpolate_text("${EMPTY?unused}", env) == ""


# --- Fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def raw_compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text("utf-8"))


@pytest.fixture(scope="module")
def compose(raw_compose: dict) -> dict:
    """The model as `docker compose` sees it with TEST_ENV exported."""
    return interpolate(copy.deepcopy(raw_compose), TEST_ENV)  # type: ignore[return-value]


@pytest.fixture(scope="module")
def services(compose: dict) -> dict:
    return compose["services"]


def env_of(service: dict) -> dict[str, str]:
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    return {key: str(value) for key, value in environment.items()}


def depends_on(service: dict) -> dict[str, dict]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return {name: {"condition": "service_started"} for name in deps}
    return deps


def command_of(service: dict) -> list[str]:
    command = service.get("command")
    return command.split() if isinstance(command, str) else list(command or [])


def project_scripts() -> dict[str, str]:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))
    return pyproject["project"]["scripts"]


# --- Compose Specification --------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose_validator() -> jsonschema.Draft7Validator:
    schema = json.loads(COMPOSE_SCHEMA.read_text("utf-8"))
    jsonschema.Draft7Validator.check_schema(schema)
    assert schema.get("title") == "Compose Specification"
    return jsonschema.Draft7Validator(schema)


def _schema_errors(validator: jsonschema.Draft7Validator, document: object) -> list[str]:
    return [
        f"{'/'.join(map(str, error.absolute_path)) or '<root>'}: {error.message}"
        for error in sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path))
    ]


def test_compose_file_follows_the_compose_specification(
    compose_validator: jsonschema.Draft7Validator, raw_compose: dict, compose: dict
) -> None:
    assert _schema_errors(compose_validator, raw_compose) == []
    assert _schema_errors(compose_validator, compose) == []


def test_the_schema_is_strict_enough_to_catch_mistakes(
    compose_validator: jsonschema.Draft7Validator, compose: dict
) -> None:
    """Guards against a vendored schema that accepts anything."""
    typo = copy.deepcopy(compose)
    typo["services"]["api"]["enviroment"] = {"A": "b"}
    bad_condition = copy.deepcopy(compose)
    bad_condition["services"]["api"]["depends_on"]["postgres"]["condition"] = "healthy"
    bad_top_level = copy.deepcopy(compose)
    bad_top_level["service"] = {}
    for broken in (typo, bad_condition, bad_top_level):
        assert _schema_errors(compose_validator, broken)


def test_compose_file_has_no_obsolete_version_key(raw_compose: dict) -> None:
    assert "version" not in raw_compose


def test_every_service_the_stack_needs_exists(services: dict) -> None:
    assert REQUIRED_SERVICES <= set(services)


def test_every_dependency_exists_and_health_conditions_have_a_healthcheck(services: dict) -> None:
    for name, service in services.items():
        for target, spec in depends_on(service).items():
            assert target in services, f"{name} depends on unknown service {target}"
            assert target != name
            if spec.get("condition") == "service_healthy":
                assert "healthcheck" in services[target], (
                    f"{name} waits for {target} to be healthy, but {target} has no healthcheck"
                )


def test_images_are_pinned(services: dict) -> None:
    for name, service in services.items():
        if "build" in service:
            continue
        image = service["image"]
        tag = image.rsplit("/", 1)[-1].partition(":")[2]
        assert tag and tag != "latest", f"{name}: pin a tag for {image}"
    assert re.fullmatch(r"temporalio/auto-setup:1\.2\d\.\d+", services["temporal"]["image"])


def test_app_services_are_built_from_this_repo_with_a_dealflow_subcommand(services: dict) -> None:
    scripts = project_scripts()
    for name, subcommand in (("api", "api"), ("worker", "worker")):
        service = services[name]
        assert service.get("build") in (".", {"context": "."}), name
        assert command_of(service)[:2] == ["dealflow", subcommand]
        assert command_of(service)[0] in scripts
    assert services["api"]["image"] == services["worker"]["image"]


def test_app_services_share_one_environment(raw_compose: dict, services: dict) -> None:
    anchor = raw_compose["x-dealflow-env"]
    for name in APP_SERVICES:
        assert raw_compose["services"][name]["environment"] == anchor
    assert env_of(services["api"]) == env_of(services["worker"])


def test_app_services_reach_postgres_with_the_psycopg_driver(services: dict) -> None:
    postgres_env = env_of(services["postgres"])
    for name in APP_SERVICES:
        url = env_of(services[name])["DEALFLOW_DATABASE_URL"]
        assert url.startswith("postgresql+psycopg://"), url
        parts = urlsplit(url)
        assert parts.hostname == "postgres" and parts.hostname in services
        assert parts.port == 5432
        assert parts.path == "/dealflow"
        # The role and password the init script creates (it reads them from postgres' env).
        assert parts.username == "dealflow"
        assert parts.password == postgres_env["DEALFLOW_DB_PASSWORD"] == "app-db-pw"


def test_postgres_init_script_creates_what_the_services_use(services: dict) -> None:
    script = (ROOT / "deploy" / "postgres" / "init-databases.sh").read_text("utf-8")
    for statement in (
        "CREATE ROLE dealflow LOGIN",
        "CREATE DATABASE dealflow OWNER dealflow",
        "CREATE ROLE temporal LOGIN",
        "CREATE DATABASE temporal OWNER temporal",
        "CREATE DATABASE temporal_visibility OWNER temporal",
    ):
        assert statement in script
    mounts = [v for v in services["postgres"]["volumes"] if isinstance(v, str)]
    assert any("/docker-entrypoint-initdb.d/" in mount for mount in mounts)
    subprocess.run(["sh", "-n", str(ROOT / "deploy/postgres/init-databases.sh")], check=True)


def test_temporal_uses_the_postgres12_driver_against_the_postgres_service(services: dict) -> None:
    temporal = env_of(services["temporal"])
    assert temporal["DB"] == "postgres12"
    assert temporal["DB_PORT"] == "5432"
    assert temporal["POSTGRES_SEEDS"] == "postgres"
    assert temporal["POSTGRES_USER"] == "temporal"
    assert temporal["POSTGRES_PWD"] == env_of(services["postgres"])["TEMPORAL_DB_PASSWORD"]
    assert depends_on(services["temporal"])["postgres"]["condition"] == "service_healthy"


def test_app_services_reach_temporal_and_redis_by_service_name(services: dict) -> None:
    for name in APP_SERVICES:
        env = env_of(services[name])
        host, _, port = env["DEALFLOW_TEMPORAL_ADDRESS"].partition(":")
        assert host == "temporal" and port == "7233"
        assert env["DEALFLOW_TEMPORAL_NAMESPACE"] == "default"
        assert urlsplit(env["DEALFLOW_REDIS_URL"]).hostname == "redis"
        assert env["DEALFLOW_API_HOST"] == "0.0.0.0"
        deps = depends_on(services[name])
        assert deps["postgres"]["condition"] == "service_healthy"
        assert "temporal" in deps


def test_secrets_come_from_the_environment_and_are_required(raw_compose: dict) -> None:
    anchor = raw_compose["x-dealflow-env"]
    for secret in SECRETS:
        assert re.fullmatch(r"\$\{" + secret + r":\?[^}]+\}", anchor[secret]), anchor[secret]
        without = {key: value for key, value in TEST_ENV.items() if key != secret}
        with pytest.raises(InterpolationError, match=secret):
            interpolate(raw_compose, without)
    # Nothing else in the file looks like a literal credential for the app.
    assert "test-admin-token" not in COMPOSE_FILE.read_text("utf-8")


def test_ports_match_the_make_dev_layout(services: dict) -> None:
    assert "8000:8000" in services["api"]["ports"]
    assert "8233:8080" in services["temporal-ui"]["ports"]
    assert env_of(services["temporal-ui"])["TEMPORAL_ADDRESS"] == "temporal:7233"
    assert "9090:9090" in services["prometheus"]["ports"]


def test_bind_mounted_files_exist_in_the_repo(services: dict) -> None:
    found = 0
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume["source"] if isinstance(volume, dict) else volume.split(":", 1)[0]
            if source.startswith((".", "/")):
                assert (ROOT / source).is_file(), f"{name} mounts missing {source}"
                found += 1
    assert found >= 3


def _mount_targets(service: dict) -> dict[str, str]:
    targets = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            targets[volume["target"]] = volume["source"]
        else:
            source, target = volume.split(":")[:2]
            targets[target] = source
    return targets


def test_prometheus_loads_this_repo_s_config_and_rules(services: dict) -> None:
    mounts = _mount_targets(services["prometheus"])
    config_target = "/etc/prometheus/prometheus.yml"  # the image's --config.file
    assert (ROOT / mounts[config_target]).resolve() == PROMETHEUS_CONFIG
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text("utf-8"))
    assert config["rule_files"]
    for rule_file in config["rule_files"]:
        # Prometheus resolves rule_files relative to the config file.
        in_container = str(PurePosixPath(config_target).parent / rule_file)
        assert in_container in mounts, f"{rule_file} is not mounted next to the config"
        assert (PROMETHEUS_DIR / rule_file).is_file()


def test_prometheus_scrapes_the_api_and_the_worker_where_they_listen(services: dict) -> None:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text("utf-8"))
    targets = {
        target: job.get("metrics_path", "/metrics")
        for job in config["scrape_configs"]
        for static in job.get("static_configs", [])
        for target in static["targets"]
    }
    env = env_of(services["api"])
    assert targets[f"api:{env['DEALFLOW_API_PORT']}"] == "/metrics"
    assert targets[f"worker:{env['DEALFLOW_METRICS_PORT']}"] == "/metrics"
    assert env["DEALFLOW_API_PORT"] == "8000" and env["DEALFLOW_METRICS_PORT"] == "9464"


# --- Temporal search attributes ---------------------------------------------------------------


FAKE_TEMPORAL = """#!/bin/sh
echo "$*" >> "$FAKE_LOG"
case "$*" in
  *"search-attribute list"*)
    if [ ! -e "$FAKE_LOG.ready" ]; then touch "$FAKE_LOG.ready"; exit 1; fi ;;
  *"--name DealStage "*)
    echo "Error: search attribute DealStage already exists" >&2; exit 1 ;;
  *"--name IsRotting "*)
    if [ -n "$FAKE_BROKEN" ]; then echo "Error: connection refused" >&2; exit 1; fi ;;
esac
exit 0
"""


def _run_admin_script(services: dict, tmp_path: Path, **extra_env: str) -> tuple[int, list[str]]:
    service = services["temporal-admin-tools"]
    assert service["entrypoint"] == ["/bin/sh", "-c"], "the image's entrypoint must be replaced"
    script = command_of(service)[0] if isinstance(service["command"], list) else None
    assert script
    fake = tmp_path / "temporal"
    fake.write_text(FAKE_TEMPORAL)
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    log = tmp_path / "calls.log"
    env = {
        "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}",
        "FAKE_LOG": str(log),
        **env_of(service),
        **extra_env,
    }
    done = subprocess.run(["sh", "-c", script], env=env, capture_output=True, timeout=30)
    return done.returncode, log.read_text().splitlines()


def test_admin_tools_registers_every_search_attribute_and_tolerates_existing_ones(
    services: dict, tmp_path: Path
) -> None:
    returncode, calls = _run_admin_script(services, tmp_path)
    assert returncode == 0
    assert sum("search-attribute list" in call for call in calls) == 2  # waited once
    created = {}
    for call in calls:
        if "search-attribute create" in call:
            assert "--address temporal:7233" in call and "--namespace default" in call
            args = call.split()
            created[args[args.index("--name") + 1]] = args[args.index("--type") + 1]
    assert created == SEARCH_ATTRIBUTES


def test_admin_tools_fails_on_any_other_error(services: dict, tmp_path: Path) -> None:
    returncode, _ = _run_admin_script(services, tmp_path, FAKE_BROKEN="1")
    assert returncode != 0
    assert services["temporal-admin-tools"]["restart"] == "on-failure"


# --- Dockerfile -------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    instructions, pending = [], ""
    for line in DOCKERFILE.read_text("utf-8").splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        pending += stripped
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        keyword, _, rest = pending.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
        pending = ""
    assert not pending, "dangling line continuation"
    return instructions


def instruction(name: str) -> list[str]:
    return [rest for keyword, rest in dockerfile_instructions() if keyword == name]


def test_dockerfile_builds_on_python_311_slim_and_installs_the_project() -> None:
    assert instruction("FROM") == ["python:3.11-slim"]
    assert any("pip install" in run for run in instruction("RUN"))
    assert "8000" in instruction("EXPOSE")


def test_dockerfile_runs_as_a_non_root_user() -> None:
    users = instruction("USER")
    assert users, "no USER: the container would run as root"
    assert users[-1].split(":")[0] not in ("root", "0")
    assert any("useradd" in run for run in instruction("RUN"))


def test_dockerfile_default_command_is_a_declared_dealflow_subcommand() -> None:
    assert not instruction("ENTRYPOINT"), "compose's `command: dealflow ...` needs no entrypoint"
    command = json.loads(instruction("CMD")[-1])
    assert command == ["dealflow", "api"]
    scripts = project_scripts()
    assert command[0] in scripts
    module = scripts[command[0]].split(":")[0]
    source = ROOT / (module.replace(".", "/") + ".py")
    if source.exists():  # the CLI may not have been written yet in a partial checkout
        text = source.read_text("utf-8")
        for sub in ("api", "worker"):
            assert re.search(rf"[\"']{sub}[\"']", text), f"{module} declares no {sub!r} command"


def test_dockerignore_keeps_local_state_and_secrets_out_of_the_image() -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text("utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for required in (".venv", ".dealflow", ".git", ".env", "bench/results", ".pytest_cache"):
        assert required in patterns, required
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))
    needed = ["pyproject.toml", pyproject["project"]["readme"]]
    needed += [pkg.split(".")[0] for pkg in pyproject["tool"]["setuptools"]["packages"]]
    needed += [f"{mod}.py" for mod in pyproject["tool"]["setuptools"].get("py-modules", [])]
    for path in needed:
        assert not any(fnmatch(path, pattern) for pattern in patterns), f"{path} is ignored"


# --- Health checks really answer ---------------------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        code = self.status if self.path in ("/healthz", "/metrics") else 404
        self.send_response(code)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_server() -> Iterator[http.server.HTTPServer]:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _healthchecks(services: dict) -> dict[str, list[str]]:
    healthcheck = json.loads(instruction("HEALTHCHECK")[-1].split(" CMD ", 1)[1])
    checks = {"Dockerfile": healthcheck}
    for name in APP_SERVICES:
        test = services[name]["healthcheck"]["test"]
        assert test[0] == "CMD"
        checks[name] = test[1:]
    for argv in checks.values():
        assert argv[:2] == ["python", "-c"], "python: the slim image has no curl"
    return checks


@pytest.mark.parametrize("status, healthy", [(200, True), (503, False)])
def test_healthchecks_pass_only_when_the_endpoint_answers_2xx(
    services: dict, http_server: http.server.HTTPServer, status: int, healthy: bool
) -> None:
    _Handler.status = status
    port = str(http_server.server_address[1])
    env = {**os.environ, "DEALFLOW_API_PORT": port, "DEALFLOW_METRICS_PORT": port}
    for where, argv in _healthchecks(services).items():
        done = subprocess.run([sys.executable, *argv[1:]], env=env, capture_output=True, timeout=20)
        assert (done.returncode == 0) is healthy, f"{where}: {done.stderr.decode()[-300:]}"


def test_healthchecks_fail_when_nothing_listens(services: dict) -> None:
    with http.server.HTTPServer(("127.0.0.1", 0), _Handler) as closed:
        port = str(closed.server_address[1])
    env = {**os.environ, "DEALFLOW_API_PORT": port, "DEALFLOW_METRICS_PORT": port}
    for where, argv in _healthchecks(services).items():
        done = subprocess.run([sys.executable, *argv[1:]], env=env, capture_output=True, timeout=20)
        assert done.returncode != 0, where


# --- Alert rules ------------------------------------------------------------------------------

_PROMQL_WORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring"}


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (not functions, keywords or label names)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    names = set()
    for match in re.finditer(r"(?<![\w.])[A-Za-z_:][\w:]*", expr):
        if expr[match.end() :].lstrip().startswith("(") or match.group() in _PROMQL_WORDS:
            continue
        names.add(match.group())
    return names


def test_metric_name_extraction() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le) (rate(a_bucket{x="y", le!="1e3"}[5m]))) > 0.05'
        " and on (job) b_total offset 5m unless sum without (outcome) (c)"
    )
    assert metric_names(expr) == {"a_bucket", "b_total", "c"}


def alert_rules() -> list[dict]:
    groups = yaml.safe_load(ALERTS.read_text("utf-8"))["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_alert_rules_cover_the_operational_signals() -> None:
    rules = alert_rules()
    assert {rule["alert"] for rule in rules} >= REQUIRED_ALERTS
    for rule in rules:
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"]


def test_every_metric_in_the_alerts_is_a_dealflow_metric() -> None:
    for rule in alert_rules():
        names = metric_names(rule["expr"])
        assert names, f"{rule['alert']}: no metric found in {rule['expr']!r}"
        for name in names:
            assert name.startswith("dealflow_"), f"{rule['alert']}: {name}"


def test_alert_expressions_use_the_agreed_metrics() -> None:
    exprs = {rule["alert"]: " ".join(rule["expr"].split()) for rule in alert_rules()}
    assert exprs["DeadLetters"] == "dealflow_dead_letters > 0"
    assert exprs["CircuitOpen"] == "dealflow_circuit_state == 1"
    assert exprs["HandoffBacklog"] == "dealflow_events_pending_handoff > 100"
    assert "dealflow_webhook_ack_seconds_bucket" in exprs["WebhookAckLatencyHigh"]
    assert 'outcome=~"unauthorized|forbidden|rate_limited"' in exprs["WebhookRejectionRate"]
    assert 'dealflow_events_total{outcome="dead_lettered"}' in exprs["ProcessingErrorRate"]
    assert exprs["ProcessingErrorRate"].endswith("> 0.01")
    # The seed's success metrics: delivery success over 99.5%, processing under 5 s on average.
    assert 'outcome=~"unavailable|error"' in exprs["WebhookDeliveryFailures"]
    assert exprs["WebhookDeliveryFailures"].endswith("> 0.005")
    assert "dealflow_event_processing_seconds_sum" in exprs["ProcessingTimeHigh"]
    assert "dealflow_event_processing_seconds_count" in exprs["ProcessingTimeHigh"]
    assert exprs["ProcessingTimeHigh"].endswith("> 5")
    backlog = next(rule for rule in alert_rules() if rule["alert"] == "HandoffBacklog")
    assert backlog["for"] == "5m"


def _promtool() -> str:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian: apt-get install prometheus)")
    return promtool


def test_promtool_accepts_the_rules_and_the_config() -> None:
    promtool = _promtool()
    for args in (["check", "rules", str(ALERTS)], ["check", "config", str(PROMETHEUS_CONFIG)]):
        done = subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr


def test_alerts_fire_on_bad_series_and_stay_quiet_on_good_ones() -> None:
    """deploy/prometheus/alerts_test.yml feeds each rule series that must and must not fire."""
    promtool = _promtool()
    done = subprocess.run(
        [promtool, "test", "rules", ALERTS_TEST.name],
        cwd=PROMETHEUS_DIR,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


# --- docker compose itself, where it is installed ---------------------------------------------


def _compose_cli() -> list[str]:
    docker = shutil.which("docker")
    if docker is not None:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True, timeout=30)
        if probe.returncode == 0:
            return [docker, "compose"]
    pytest.skip("`docker compose` (the Compose v2 CLI plugin) is not installed")


def test_docker_compose_config_accepts_the_file() -> None:
    cli = _compose_cli()
    env = {**os.environ, **TEST_ENV}
    done = subprocess.run(
        [*cli, "-f", str(COMPOSE_FILE), "config", "-q"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    missing = {key: value for key, value in env.items() if key != "DEALFLOW_ADMIN_TOKEN"}
    done = subprocess.run(
        [*cli, "-f", str(COMPOSE_FILE), "config", "-q"],
        cwd=ROOT,
        env=missing,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0 and "DEALFLOW_ADMIN_TOKEN" in done.stderr
