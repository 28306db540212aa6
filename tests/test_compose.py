"""docker-compose.yml and the Dockerfile, checked by parsing them (no Docker engine here), and
by Docker Compose itself (`config`) where the tool is installed: CI installs Debian's
docker-compose (.ci/run), and there a missing tool fails instead of skipping.

`compose()` interpolates the file's values the way Docker Compose does (`$$`, `${VAR}`,
`${VAR:-x}`, `${VAR:?msg}`), with a made-up .env, so the tests see what the containers would see;
`test_docker_compose_config_agrees` checks that against the real tool.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml

from lifecycle.airflow.connections import SENDGRID_CONN_TYPE
from lifecycle.core.config import PROJECT_ROOT, SENDGRID_POOL
from lifecycle.devtools.standalone import POOL_DESCRIPTION

COMPOSE = PROJECT_ROOT / "docker-compose.yml"
DOCKERFILE = PROJECT_ROOT / "Dockerfile"
AIRFLOW_SERVICES = {
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-worker",
    "airflow-triggerer",
    "airflow-init",
    "flower",
}
PUBLIC = "public"
LONG_RUNNING = {"postgres", "warehouse-db", "redis", PUBLIC} | AIRFLOW_SERVICES - {"airflow-init"}
SECRETS = [
    "AIRFLOW_DB_PASSWORD",
    "WAREHOUSE_DB_PASSWORD",
    "AIRFLOW_FERNET_KEY",
    "AIRFLOW_JWT_SECRET",
    "AIRFLOW_API_SECRET_KEY",
    "AIRFLOW_ADMIN_PASSWORD",
    "LIFECYCLE_UNSUBSCRIBE_SECRET",
    "FLOWER_PASSWORD",
]
# Not secret, but required: real sending refuses the demo's values (run/preflight.py), and every
# link in every email points at the public URL.
REQUIRED_SETTINGS = [
    "LIFECYCLE_SENDER_ADDRESS",
    "LIFECYCLE_UNSUBSCRIBE_MAILBOX",
    "LIFECYCLE_PUBLIC_URL",
]
# What `public` needs, the same as every Airflow component has: no other secret reaches it.
PUBLIC_SETTINGS = {
    "AIRFLOW__CORE__EXECUTOR",
    "LIFECYCLE_WAREHOUSE_URL",
    "LIFECYCLE_UNSUBSCRIBE_SECRET",
    "LIFECYCLE_TOKEN_SECRETS",
    "LIFECYCLE_SENDGRID_WEBHOOK_PUBLIC_KEY",
    "LIFECYCLE_PUBLIC_URL",
    "LIFECYCLE_SENDER_ADDRESS",
    "LIFECYCLE_HOME",
}
SHARED_SETTINGS = [
    "AIRFLOW__CORE__FERNET_KEY",
    "AIRFLOW__API_AUTH__JWT_SECRET",
    "AIRFLOW__API__SECRET_KEY",
    "LIFECYCLE_UNSUBSCRIBE_SECRET",
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
    "AIRFLOW__CELERY__BROKER_URL",
    "AIRFLOW_CONN_LIFECYCLE_WAREHOUSE",
    "LIFECYCLE_WAREHOUSE_URL",
    *REQUIRED_SETTINGS,
    "LIFECYCLE_SENDGRID_WEBHOOK_PUBLIC_KEY",
    "LIFECYCLE_TOKEN_SECRETS",
    "LIFECYCLE_SHARED_DIR",
    "LIFECYCLE_CELERY_QUEUE",
]
VARIABLE = re.compile(r"\$(?:\$|\{(\w+)(?:(:?[-?])([^}]*))?\}|(\w+))")


class MissingVariable(Exception):
    pass


def interpolate(text: str, env: dict[str, str]) -> str:
    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1) or match.group(4)
        op, arg = match.group(2), match.group(3)
        value = env.get(name)
        unset = value is None or (op is not None and op.startswith(":") and value == "")
        if unset and op and op.endswith("?"):
            raise MissingVariable(f"{name}: {arg}")
        if unset and op and op.endswith("-"):
            return arg
        return value or ""

    return VARIABLE.sub(replace, text)


def compose(env: dict[str, str]) -> dict[str, Any]:
    """The file as Compose reads it: parsed first (anchors merged), then every string value
    interpolated, so `KEY: ${X:-}` is an empty string, not YAML's null."""

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            return {key: walk(value) for key, value in node.items()}
        if isinstance(node, list):
            return [walk(item) for item in node]
        return interpolate(node, env) if isinstance(node, str) else node

    return walk(yaml.safe_load(COMPOSE.read_text()))


@pytest.fixture(scope="module")
def dotenv() -> dict[str, str]:
    return {name: secrets.token_hex(16) for name in SECRETS + REQUIRED_SETTINGS}


@pytest.fixture(scope="module")
def services(dotenv: dict[str, str]) -> dict[str, Any]:
    return compose(dotenv)["services"]


def env_of(service: dict[str, Any]) -> dict[str, str]:
    return {key: str(value) for key, value in (service.get("environment") or {}).items()}


def test_has_every_service_of_the_official_celery_shape(services: dict[str, Any]) -> None:
    assert set(services) == {"postgres", "warehouse-db", "redis", PUBLIC} | AIRFLOW_SERVICES
    commands = {name: services[name].get("command") for name in AIRFLOW_SERVICES}
    assert commands["airflow-apiserver"] == "api-server"
    assert commands["airflow-scheduler"] == "scheduler"
    assert commands["airflow-dag-processor"] == "dag-processor"
    assert commands["airflow-triggerer"] == "triggerer"
    assert commands["airflow-worker"] == "celery worker --queues default"
    assert commands["flower"] == "celery flower"
    # plugins load once before Celery forks, as on the local cluster (devtools/cluster.py)
    assert env_of(services["airflow-worker"])["AIRFLOW__CORE__LAZY_LOAD_PLUGINS"] == "False"
    for name in AIRFLOW_SERVICES:
        env = env_of(services[name])
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", name
        assert sa.make_url(env["AIRFLOW__CELERY__BROKER_URL"]).host == "redis", name


def test_every_secret_is_required_from_the_environment(dotenv: dict[str, str]) -> None:
    for name in SECRETS + REQUIRED_SETTINGS:
        with pytest.raises(MissingVariable, match=name):
            compose({k: v for k, v in dotenv.items() if k != name})
        with pytest.raises(MissingVariable, match=name):
            compose({**dotenv, name: ""})


def test_no_secret_value_is_written_in_the_file() -> None:
    raw = yaml.safe_load(COMPOSE.read_text())
    secretish = re.compile(r"SECRET|PASSWORD$|FERNET|_KEY$")
    for name, service in raw["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if secretish.search(key):
                assert re.fullmatch(r"\$\{\w+(:\?[^}]*|:-)?\}", str(value)), (name, key, value)
    # Any password inside a URL or a connection comes from a variable as well.
    placeholders = {name: f"<{name}>" for name in SECRETS}
    required = {name: "x" for name in REQUIRED_SETTINGS}
    for name, service in compose({**placeholders, **required})["services"].items():
        for key, value in env_of(service).items():
            for password in re.findall(r"//[^:/@\s]*:([^@]+)@", value):
                assert password in placeholders.values(), (name, key)
            if key.startswith("AIRFLOW_CONN_"):
                password = json.loads(value).get("password", "")
                assert password in [*placeholders.values(), ""], (name, key)


def test_airflow_components_share_secrets_and_databases(
    services: dict[str, Any], dotenv: dict[str, str]
) -> None:
    envs = {name: env_of(services[name]) for name in AIRFLOW_SERVICES}
    for setting in SHARED_SETTINGS:
        values = {name: env.get(setting) for name, env in envs.items()}
        assert len(set(values.values())) == 1 and None not in values.values(), (setting, values)
    env = envs["airflow-apiserver"]
    assert env["AIRFLOW__CORE__FERNET_KEY"] == dotenv["AIRFLOW_FERNET_KEY"]
    assert env["AIRFLOW__API_AUTH__JWT_SECRET"] == dotenv["AIRFLOW_JWT_SECRET"]
    assert env["AIRFLOW__API__SECRET_KEY"] == dotenv["AIRFLOW_API_SECRET_KEY"]
    assert env["LIFECYCLE_UNSUBSCRIBE_SECRET"] == dotenv["LIFECYCLE_UNSUBSCRIBE_SECRET"]


def test_workers_reach_the_execution_api_on_the_apiserver(services: dict[str, Any]) -> None:
    api = services["airflow-apiserver"]
    assert any(str(port).endswith(":8080") for port in api["ports"])
    for name in AIRFLOW_SERVICES:
        url = env_of(services[name])["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"]
        assert url == "http://airflow-apiserver:8080/execution/", name


def test_airflow_settings_are_real_airflow_options(services: dict[str, Any]) -> None:
    """A typo in AIRFLOW__SECTION__KEY is silently ignored by Airflow: catch it here."""
    from airflow.configuration import conf  # imported late: tests/dags configures Airflow first

    options = conf.configuration_description
    for name in AIRFLOW_SERVICES:
        for key in env_of(services[name]):
            if key.startswith("AIRFLOW__"):
                section, option = key.removeprefix("AIRFLOW__").lower().split("__", 1)
                assert option in options.get(section, {}).get("options", {}), (name, key)


def test_warehouse_is_a_separate_database_reached_by_the_connection_and_the_cli(
    services: dict[str, Any], dotenv: dict[str, str]
) -> None:
    from airflow.models.connection import Connection

    env = env_of(services["airflow-worker"])
    metadata = sa.make_url(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    cli_url = sa.make_url(env["LIFECYCLE_WAREHOUSE_URL"])
    conn = Connection.from_json(env["AIRFLOW_CONN_LIFECYCLE_WAREHOUSE"], conn_id="w")

    assert metadata.host == "postgres"
    assert cli_url.host == conn.host == "warehouse-db"
    assert (cli_url.username, cli_url.password, cli_url.database, cli_url.port or 5432) == (
        conn.login,
        conn.password,
        conn.schema,
        conn.port,
    )
    assert cli_url.password == dotenv["WAREHOUSE_DB_PASSWORD"]
    assert cli_url.get_driver_name() == "psycopg"
    assert conn.conn_type == "postgres"

    metadata_db, warehouse_db = services["postgres"], services["warehouse-db"]
    assert metadata_db["environment"]["POSTGRES_DB"] == metadata.database
    assert warehouse_db["environment"]["POSTGRES_DB"] == cli_url.database
    assert warehouse_db["environment"]["POSTGRES_USER"] == cli_url.username
    assert warehouse_db["environment"]["POSTGRES_PASSWORD"] == cli_url.password
    assert metadata_db["environment"]["POSTGRES_PASSWORD"] == metadata.password
    assert metadata_db["volumes"] != warehouse_db["volumes"]

    sendgrid = Connection.from_json(env["AIRFLOW_CONN_SENDGRID_DEFAULT"], conn_id="s")
    assert sendgrid.conn_type == SENDGRID_CONN_TYPE  # one the Airflow UI knows


def test_healthchecks_and_start_order(services: dict[str, Any]) -> None:
    for name in LONG_RUNNING:
        assert services[name]["healthcheck"]["test"], name
    for name in AIRFLOW_SERVICES:
        depends = services[name]["depends_on"]
        for db in ("postgres", "warehouse-db", "redis"):
            assert depends[db]["condition"] == "service_healthy", (name, db)
        if name != "airflow-init":
            assert depends["airflow-init"]["condition"] == "service_completed_successfully"
    worker = services["airflow-worker"]["depends_on"]
    assert worker["airflow-apiserver"]["condition"] == "service_healthy"


def test_init_migrates_both_databases_and_sets_the_admin_password(
    services: dict[str, Any], dotenv: dict[str, str]
) -> None:
    init = services["airflow-init"]
    script = "\n".join(init["command"])
    assert script.index("airflow db migrate") < script.index("lifecycle db upgrade")
    env = env_of(init)
    assert env["AIRFLOW_ADMIN_PASSWORD"] == dotenv["AIRFLOW_ADMIN_PASSWORD"]
    assert "AIRFLOW_ADMIN_PASSWORD" not in env_of(services["airflow-apiserver"])
    password_file = Path(env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"])
    assert "${AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE}" in script
    assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"] == "admin:admin"
    shared = [
        {v for v in services[name]["volumes"] if v.endswith(f":{password_file.parent}")}
        for name in ("airflow-init", "airflow-apiserver")
    ]
    assert shared[0] and shared[0] == shared[1]


def test_every_airflow_service_runs_the_image_built_from_this_repo(
    services: dict[str, Any],
) -> None:
    images = {services[name]["image"] for name in AIRFLOW_SERVICES}
    assert len(images) == 1
    for name in AIRFLOW_SERVICES:
        build = services[name]["build"]
        assert (PROJECT_ROOT / build["context"]).resolve() == PROJECT_ROOT
        assert (PROJECT_ROOT / build["dockerfile"]).resolve() == DOCKERFILE


def test_dockerfile_installs_the_lock_on_the_locked_airflow_version() -> None:
    dockerfile = DOCKERFILE.read_text()
    locked = re.search(
        r"^apache-airflow==(\S+)$", (PROJECT_ROOT / "requirements.txt").read_text(), re.M
    )
    assert locked
    assert re.search(rf"^FROM apache/airflow:{re.escape(locked[1])}-python3\.11$", dockerfile, re.M)
    assert "pip install --no-cache-dir -r /opt/lifecycle/requirements.txt" in dockerfile
    assert "pip install --no-cache-dir --no-deps -e /opt/lifecycle" in dockerfile
    for folder in ("dags", "plugins"):
        assert f"=/opt/lifecycle/{folder}" in dockerfile
        assert (PROJECT_ROOT / folder).is_dir()


def test_the_image_installs_the_runtime_lock_only() -> None:
    # Tests, linters and the SendGrid SDK (a benchmark baseline) are in requirements-dev.txt.
    instructions = [line for line in DOCKERFILE.read_text().splitlines() if line[:1] != "#"]
    assert not any("requirements-dev" in line for line in instructions)
    runtime = (PROJECT_ROOT / "requirements.txt").read_text()
    for tool in ("pytest", "ruff", "mypy", "import-linter", "sendgrid"):
        assert not re.search(rf"^{tool}==", runtime, re.M), tool


def test_dockerignore_keeps_local_state_and_secrets_out_of_the_image() -> None:
    ignored = (PROJECT_ROOT / ".dockerignore").read_text().split()
    for entry in (".env", ".venv", ".local", ".git"):
        assert entry in ignored


def test_what_real_sending_needs_reaches_every_component_as_given(
    dotenv: dict[str, str],
) -> None:
    """The webhook key may stay empty until SendGrid is set up (preflight refuses real sending
    without it); the sender's addresses are never replaced by the demo's."""
    key = "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE-test-key"
    services = compose({**dotenv, "LIFECYCLE_SENDGRID_WEBHOOK_PUBLIC_KEY": key})["services"]
    for name in AIRFLOW_SERVICES:
        env = env_of(services[name])
        assert env["LIFECYCLE_SENDGRID_WEBHOOK_PUBLIC_KEY"] == key, name
        for setting in REQUIRED_SETTINGS:
            assert env[setting] == dotenv[setting], (name, setting)


def test_init_creates_the_sendgrid_pool_sized_from_the_setting(
    dotenv: dict[str, str],
) -> None:
    for slots, expected in ((None, "4"), ("7", "7")):
        env = dotenv if slots is None else {**dotenv, "LIFECYCLE_SENDGRID_POOL_SLOTS": slots}
        services = compose(env)["services"]
        script = services["airflow-init"]["command"][-1]
        lines = script.replace("\\\n", " ").splitlines()
        (pool,) = [shlex.split(line) for line in lines if line.startswith("airflow pools set")]
        # the same pool `make airflow` creates, sized by the setting every component reads
        assert pool[3:] == [SENDGRID_POOL, "${LIFECYCLE_SENDGRID_POOL_SLOTS}", POOL_DESCRIPTION]
        for name in AIRFLOW_SERVICES:  # every component reads the same size and rate
            assert env_of(services[name])["LIFECYCLE_SENDGRID_POOL_SLOTS"] == expected, name
            assert "LIFECYCLE_SENDGRID_RATE_PER_SECOND" in env_of(services[name])


def test_flower_is_a_profile_behind_a_password(
    services: dict[str, Any], dotenv: dict[str, str]
) -> None:
    flower = services["flower"]
    assert flower["profiles"] == ["flower"]
    env = env_of(flower)
    assert env["AIRFLOW__CELERY__FLOWER_BASIC_AUTH"] == f"admin:{dotenv['FLOWER_PASSWORD']}"
    assert "/healthcheck" in flower["healthcheck"]["test"][-1]  # flower's unauthenticated probe
    others = set(services) - {"flower"}
    assert not [name for name in others if services[name].get("profiles")]  # they always run
    # Only flower gets the password.
    assert not [n for n in others if dotenv["FLOWER_PASSWORD"] in json.dumps(services[n])]


def test_every_port_is_published_on_loopback_only(services: dict[str, Any]) -> None:
    """The reverse proxy in front decides what faces the internet (README)."""
    published = {name: s["ports"] for name, s in services.items() if s.get("ports")}
    assert set(published) == {"airflow-apiserver", "flower", PUBLIC}
    for name, ports in published.items():
        for port in ports:
            assert str(port).startswith("127.0.0.1:"), (name, port)


def serve_public_args(service: dict[str, Any]) -> Any:
    """The `lifecycle serve-public` arguments of the service, parsed by the real CLI."""
    from lifecycle.cli import build_parser

    shell, flag, script = service["command"]
    assert (shell, flag) == ("bash", "-c")
    words = shlex.split(script)
    assert words[:2] == ["exec", "lifecycle"]
    args = build_parser().parse_args(words[2:])
    assert args.handler.__name__ == "cmd_serve_public"
    return args


def test_public_runs_serve_public_with_only_what_it_needs(
    services: dict[str, Any], dotenv: dict[str, str]
) -> None:
    public = services[PUBLIC]
    args = serve_public_args(public)
    assert args.host == "0.0.0.0"
    assert any(str(port).endswith(f":{args.port}") for port in public["ports"])
    assert f"http://localhost:{args.port}/health" in public["healthcheck"]["test"]

    env = env_of(public)
    assert set(env) == PUBLIC_SETTINGS | {"CONNECTION_CHECK_MAX_COUNT"}
    worker = env_of(services["airflow-worker"])
    for setting in PUBLIC_SETTINGS:  # the same links, warehouse and webhook key as the workers
        assert env[setting] == worker[setting], setting
    needed = {dotenv["LIFECYCLE_UNSUBSCRIBE_SECRET"], dotenv["WAREHOUSE_DB_PASSWORD"]}
    text = json.dumps(public)
    assert not [name for name in SECRETS if dotenv[name] not in needed and dotenv[name] in text]
    assert "volumes" not in public  # no outbox, no privacy exports, no Airflow logs
    assert set(public["depends_on"]) == {"warehouse-db", "airflow-init"}  # no Airflow DB, no broker
    assert public["depends_on"]["airflow-init"]["condition"] == "service_completed_successfully"
    assert public["image"] == services["airflow-worker"]["image"]


def test_public_would_start_and_serves_every_public_route(
    services: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from fastapi.testclient import TestClient

    from lifecycle.core.config import load_settings
    from lifecycle.feedback import tokens
    from lifecycle.web import public

    for name in list(os.environ):
        if name.startswith("LIFECYCLE_"):
            monkeypatch.delenv(name)
    for name, value in env_of(services[PUBLIC]).items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    assert settings.runs_on_many_hosts
    tokens.secrets_for(settings)  # what serve-public checks before it starts

    def routes(app: Any) -> set[tuple[str, str]]:
        return {(r.path, m) for r in app.routes for m in getattr(r, "methods", None) or ()}

    app = public.standalone_app(settings)
    (mounted,) = [r for r in app.routes if getattr(r, "path", "") == public.PREFIX]
    served = routes(mounted.app)
    # The same routes the Airflow plugin mounts on the API server.
    assert served == routes(public.create_app(settings))
    for path in ("/events/sendgrid", "/unsubscribe/{token}", "/preferences/{token}"):
        assert (path, "POST") in served
    assert ("/feedback/{token}", "GET") in served and ("/feedback/{token}", "POST") in served
    assert TestClient(app).get("/health").json() == {"status": "ok"}


def test_the_stack_keeps_no_state_on_one_host(
    services: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """What preflight requires under the CeleryExecutor (run/preflight.py) is all set."""
    from lifecycle.core.config import load_settings
    from lifecycle.run.preflight import deployment_gaps, host_state_gaps

    for name in list(os.environ):
        if name.startswith("LIFECYCLE_") or name == "SENDGRID_API_KEY":
            monkeypatch.delenv(name)
    for name in AIRFLOW_SERVICES:
        env = env_of(services[name])
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        settings = load_settings()
        assert settings.runs_on_many_hosts, name
        assert host_state_gaps(settings) == [], name  # outbox: no SendGrid key in the .env
        real = load_settings(sendgrid_api_key="SG.x", sendgrid_webhook_public_key="MFkw")
        assert host_state_gaps(real) == [] and deployment_gaps(real) == [], name
        # The shared directory is on the volume every Airflow container mounts.
        mounts = dict(volume.split(":")[::-1] for volume in services[name]["volumes"])
        assert mounts["/opt/airflow/lifecycle"] == "lifecycle-home", name
        assert Path(env["LIFECYCLE_SHARED_DIR"]).is_relative_to("/opt/airflow/lifecycle")


def test_workers_listen_on_the_queues_named(dotenv: dict[str, str]) -> None:
    services = compose({**dotenv, "AIRFLOW_WORKER_QUEUES": "default,lifecycle"})["services"]
    assert services["airflow-worker"]["command"] == "celery worker --queues default,lifecycle"
    services = compose({**dotenv, "LIFECYCLE_CELERY_QUEUE": "lifecycle"})["services"]
    for name in ("airflow-scheduler", "airflow-apiserver"):  # where task instances are created
        assert env_of(services[name])["LIFECYCLE_CELERY_QUEUE"] == "lifecycle"


# --- Docker Compose itself ------------------------------------------------------------------
def compose_tool() -> list[str] | None:
    """`docker compose` (the plugin) or `docker-compose` (Debian's package), whichever runs."""
    for command in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(command[0]) is None:
            continue
        probe = subprocess.run([*command, "version"], capture_output=True, timeout=60)
        if probe.returncode == 0:
            return command
    return None


@pytest.fixture(scope="module")
def tool() -> list[str]:
    found = compose_tool()
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI needs `docker compose` or `docker-compose` (.ci/run installs it)")
        pytest.skip("neither `docker compose` nor `docker-compose` is installed")
    return found


def run_config(
    tool: list[str], env: dict[str, str], tmp_path: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    """`config` on the repo's file with `env` as the only .env and variables (none of the
    caller's, nor a developer's .env in the checkout)."""
    dotenv = tmp_path / "test.env"
    dotenv.write_text("".join(f"{name}={json.dumps(value)}\n" for name, value in env.items()))
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("LIFECYCLE_", "AIRFLOW", "WAREHOUSE_", "FLOWER_", "SENDGRID_"))
    }
    return subprocess.run(
        [*tool, "--env-file", str(dotenv), "-f", str(COMPOSE), *extra, "config"],
        cwd=tmp_path,
        env=clean,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_docker_compose_config_agrees(
    tool: list[str], dotenv: dict[str, str], tmp_path: Path
) -> None:
    done = run_config(tool, dotenv, tmp_path)
    assert done.returncode == 0, done.stderr
    real = yaml.safe_load(done.stdout)["services"]
    ours = compose(dotenv)["services"]
    assert set(real) == set(ours)
    for name, service in ours.items():
        assert {k: str(v) for k, v in (real[name].get("environment") or {}).items()} == (
            env_of(service)
        ), name
        # `config` prints a file Compose can read again: a `$` it interpolated is `$$` again.
        command = json.loads(json.dumps(real[name].get("command")).replace("$$", "$"))
        expected = service.get("command")
        if isinstance(expected, str):
            expected = shlex.split(expected)
        if isinstance(command, str):
            command = shlex.split(command)
        assert command == expected, name
    # Flower starts only with its profile (docker-compose 1.x's `config` lists it anyway).
    assert {name for name, s in real.items() if s.get("profiles")} == {"flower"}
    assert real["flower"]["profiles"] == ["flower"]


@pytest.mark.parametrize("missing", ["FLOWER_PASSWORD", "LIFECYCLE_PUBLIC_URL"])
def test_docker_compose_refuses_a_missing_secret(
    tool: list[str], dotenv: dict[str, str], tmp_path: Path, missing: str
) -> None:
    done = run_config(tool, {k: v for k, v in dotenv.items() if k != missing}, tmp_path)
    assert done.returncode != 0
    assert missing in done.stderr
