"""Every shell and YAML block of README.md runs here as written, or is listed with the reason it
does not (a long-running server, Docker), so the docs cannot drift from the code.

A section's blocks are run by the test named in `RUN_BY`, command by command in one shell; the
only changes are `SUBSTITUTIONS`-style paths and ports (a temporary home instead of .local/, a
free port instead of a fixed one). A new block in a section nobody runs fails
`test_every_block_is_run_or_listed_with_a_reason` until a test runs it or it is listed.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from lifecycle.core.campaigns import load_campaigns
from lifecycle.core.config import PROJECT_ROOT, load_settings
from lifecycle.devtools.sink.thread import run_sink_in_thread
from lifecycle.store import warehouse

README = PROJECT_ROOT / "README.md"
FENCE = re.compile(r"^(?P<indent> *)```(?P<lang>\w*)\n(?P<body>.*?)^(?P=indent)```", re.M | re.S)
HEADING = re.compile(r"^## (.+)$", re.M)
HEREDOC = re.compile(r"<<-?'?(\w+)'?")
# Blocks that are one file each (a spec, a proxy's configuration), not lines of commands.
WHOLE_BLOCKS = ("yaml", "caddyfile")

# Section -> the test below that runs its shell and YAML blocks.
RUN_BY = {
    "Quickstart": "test_make_demo",
    "The `lifecycle` command": "test_the_command_tour_and_previews",
    "Email templates": "test_the_command_tour_and_previews",
    "Delivery and the send ledger": "test_delivery_commands",
    "Campaigns in Airflow": "test_add_a_campaign_in_five_minutes",
    "Add a campaign in five minutes": "test_add_a_campaign_in_five_minutes",
    "Production-shaped stack: docker-compose": (
        "test_the_env_file_satisfies_compose test_the_reverse_proxy_serves_only_the_public_pages"
    ),
    "Development": "test_development_commands",
    # sections whose blocks a test module of their own feature runs
    "Preference centre": (
        "test_preferences.py::test_the_readme_sync_command_pushes_a_choice_to_sendgrid"
    ),
    "Privacy requests": "test_privacy.py::test_the_readme_commands_answer_a_request",
    "Run an A/B test": "test_readme_ab_test.py::test_the_ab_test_section_runs_as_written",
    "Operating campaigns safely": (
        "test_readme_operations.py::test_draft_and_live_commands_as_written"
        " test_readme_operating.py::test_both_approval_forms_validate_as_written"
        " test_readme_operating.py::test_the_alert_connections_as_exported_are_read_by_the_notifier"
    ),
}
# Commands no test runs, and why.
NOT_RUN = {
    "make test": "the whole suite, of which this test is a part",
    "lifecycle sink --port 3030": "a server that runs until stopped (tests/test_sink.py)",
    "lifecycle sink --port 3025 --latency-ms 100": "a server that runs until stopped: "
    "test_delivery_commands starts the same sink on a free port instead",
    "lifecycle requeue-unknown birthday [--yes]": "a usage line with an optional part "
    "(tests/test_unknown.py runs requeue-unknown with each flag)",
    "lifecycle requeue-unknown onboarding --yes": "needs unknown rows left by a crash: "
    "tests/test_unknown.py makes them and runs the same command",
    "lifecycle requeue-unknown onboarding --include-recent --yes": "as above",
    "lifecycle requeue-unknown onboarding --id 1234 --yes": "as above",
    "make airflow": "a server that runs until Ctrl-C (tests/test_standalone.py starts it)",
    "LIFECYCLE_AIRFLOW_PORT=8090 make airflow": "a server that runs until Ctrl-C",
    "make cluster": "a server that runs until Ctrl-C (tests/test_celery_airflow.py starts the "
    "same cluster with start_cluster)",
    ".venv/bin/python -m lifecycle.devtools.cluster --workers 3 --concurrency 2 --port 8090": (
        "a server that runs until Ctrl-C"
    ),
    ".venv/bin/python -m lifecycle.devtools.cluster --help": (
        "tests/test_cluster.py::test_the_cluster_command_explains_itself runs it"
    ),
    "TOKEN=$(curl -s -X POST http://127.0.0.1:8080/auth/token -H 'Content-Type: application/json' "
    '-d "{\\"username\\": \\"admin\\", \\"password\\": \\"$PASSWORD\\"}" | jq -r .access_token)': (
        "needs a running cluster: tests/test_celery_airflow.py logs in and triggers through "
        "the same REST API"
    ),
    "curl -s -X POST http://127.0.0.1:8080/api/v2/dags/campaign_birthday/dagRuns "
    "-H \"Authorization: Bearer $TOKEN\" -H 'Content-Type: application/json' "
    "-d '{\"logical_date\": null}'": "as above",
    "docker compose up -d --build": "needs a Docker engine (tests/test_compose.py parses the file)",
    'docker compose run --rm airflow-worker bash -c "lifecycle seed --customers 100000"': (
        "needs a Docker engine"
    ),
    "docker compose up -d --scale airflow-worker=4": "needs a Docker engine",
    "docker compose --profile flower up -d": "needs a Docker engine (tests/test_compose.py "
    "checks the profile with `docker compose config`)",
    "airflow celery worker --queues default,lifecycle": "a server that runs until stopped "
    "(tests/dags/test_placement.py checks which queue task instances get)",
    "make lock": "recompiles the locks from the package index",
}


@dataclass(frozen=True)
class Block:
    section: str
    lang: str
    text: str

    def commands(self) -> list[str]:
        """The shell commands, comments stripped: a line each, a here-document whole."""
        commands, lines = [], iter(self.text.splitlines())
        for line in lines:
            command = strip_comment(line)
            if not command:
                continue
            if heredoc := HEREDOC.search(command):
                body = []
                for more in lines:
                    body.append(more)
                    if more.strip() == heredoc.group(1):
                        break
                command = "\n".join([command, *body])
            commands.append(command)
        return commands


def strip_comment(line: str) -> str:
    """`line` without a trailing `# comment` outside quotes."""
    quote = None
    for i, char in enumerate(line):
        if char in "'\"" and quote in (None, char):
            quote = None if quote else char
        elif char == "#" and quote is None and (i == 0 or line[i - 1].isspace()):
            return line[:i].strip()
    return line.strip()


def readme_blocks() -> list[Block]:
    text = README.read_text(encoding="utf-8")
    headings = [(m.start(), m.group(1)) for m in HEADING.finditer(text)]
    blocks = []
    for match in FENCE.finditer(text):
        if match.group("lang") not in ("bash", "sh", "shell", *WHOLE_BLOCKS):
            continue
        section = [name for start, name in headings if start < match.start()][-1]
        body = textwrap.dedent(match.group("body"))
        blocks.append(Block(section, match.group("lang"), body))
    return blocks


def section_blocks(section: str, lang: str = "bash") -> list[Block]:
    found = [b for b in readme_blocks() if b.section == section and b.lang == lang]
    assert found, f"README has no {lang} block in {section!r}"
    return found


def script(block: Block, substitutions: dict[str, str]) -> str:
    lines = ["set -euo pipefail"]
    for command in block.commands():
        if command in NOT_RUN:
            continue
        if substitutions:  # one pass: a replacement is never replaced again
            pattern = "|".join(re.escape(old) for old in substitutions)
            command = re.sub(pattern, lambda m: substitutions[m.group(0)], command)
        lines.append(command)
    return "\n".join(lines)


def clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("LIFECYCLE_", "AIRFLOW")) and k != "SENDGRID_API_KEY"
    }
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["LIFECYCLE_HOME"] = str(tmp_path / "home")
    env["AIRFLOW_HOME"] = str(tmp_path / "airflow")  # what `make` would put in .local/airflow
    env.update(extra)
    return env


def run_block(
    block: Block,
    env: dict[str, str],
    *,
    cwd: Path = PROJECT_ROOT,
    substitutions: dict[str, str] | None = None,
    timeout: int = 600,
) -> str:
    done = subprocess.run(
        ["bash", "-c", script(block, substitutions or {})],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{block.section}:\n{block.text}\n---\n{output[-4000:]}"
    assert "Traceback" not in output, output[-4000:]
    return output


def test_every_block_is_run_or_listed_with_a_reason() -> None:
    unaccounted = [
        (block.section, command)
        for block in readme_blocks()
        for command in (block.commands() if block.lang not in WHOLE_BLOCKS else [block.text])
        if block.section not in RUN_BY and command not in NOT_RUN
    ]
    assert unaccounted == [], "run these README blocks in a test or list them in NOT_RUN"
    for runners in RUN_BY.values():
        for runner in runners.split():
            file, _, name = runner.rpartition("::")
            module = (Path(__file__).parent / file).read_text() if file else None
            if module is None:
                assert callable(getattr(sys.modules[__name__], name, None)), runner
            else:
                assert f"\ndef {name}(" in module, runner
    commands = {c for block in readme_blocks() for c in block.commands()}
    assert set(NOT_RUN) <= commands, "NOT_RUN lists commands the README no longer has"
    sections = {block.section for block in readme_blocks()}
    assert set(RUN_BY) <= sections, "RUN_BY names sections without blocks"


def test_the_nudge_spec_of_the_walkthrough_is_valid_as_written(tmp_path: Path) -> None:
    """Step 2 of "Add a campaign in five minutes", pasted as written, is accepted."""
    (spec,) = section_blocks("Add a campaign in five minutes", "yaml")
    campaigns = tmp_path / "campaigns"
    campaigns.mkdir()
    (campaigns / "nudge.yaml").write_text(spec.text, encoding="utf-8")
    loaded = load_campaigns(campaigns)
    assert loaded.errors == {}
    assert loaded.specs["nudge"].schedule.cron == "30 * * * *"


@pytest.mark.slow
@pytest.mark.timeout(1800)  # migrates, seeds 20,000 customers, runs every campaign in Airflow
def test_make_demo(tmp_path: Path) -> None:
    # the first block; the second (Debian prerequisites) is run by test_readme_operations.py
    block = section_blocks("Quickstart")[0]
    output = run_block(block, clean_env(tmp_path), timeout=1200)
    assert "sent" in output


@pytest.mark.slow
def test_the_command_tour_and_previews(tmp_path: Path) -> None:
    env = clean_env(tmp_path)
    local = {".local/": f"{tmp_path}/local/", "/tmp/": f"{tmp_path}/"}
    (tour,) = section_blocks("The `lifecycle` command")
    output = run_block(tour, env, substitutions=local)
    assert "100,000 customers" in output and "birthday" in output
    (previews,) = section_blocks("Email templates")
    run_block(previews, env, substitutions=local)
    assert (tmp_path / "local" / "birthday-42.html").exists() and (tmp_path / "o.html").exists()


@pytest.mark.slow
def test_delivery_commands(tmp_path: Path) -> None:
    env = clean_env(tmp_path)
    setup = Block("setup", "bash", "lifecycle db upgrade\nlifecycle seed --customers 2000\n")
    run_block(setup, env)
    block, _requeue = section_blocks("Delivery and the send ledger")  # the second: NOT_RUN
    with run_sink_in_thread(api_keys=["SG.local"]) as sink:
        output = run_block(block, env, substitutions={"http://127.0.0.1:3025": sink.url})
        received = sink.state.snapshot()
    assert "feedback" in output
    assert received and {m["custom_args"]["campaign"] for m in received} == {"feedback"}


@pytest.mark.slow
@pytest.mark.timeout(1800)  # two `airflow dags test` runs and a nested pytest
def test_add_a_campaign_in_five_minutes(tmp_path: Path) -> None:
    """The walkthrough end to end: copy a template, paste the spec, check, rehearse in Airflow.
    The repository's templates/ and include/campaigns/ are copies under tmp_path."""
    repo = tmp_path / "repo"
    shutil.copytree(PROJECT_ROOT / "templates", repo / "templates")
    shutil.copytree(PROJECT_ROOT / "include" / "campaigns", repo / "include" / "campaigns")
    env = clean_env(
        tmp_path,
        LIFECYCLE_TEMPLATES_DIR=str(repo / "templates"),
        LIFECYCLE_CAMPAIGNS_DIR=str(repo / "include" / "campaigns"),
        LIFECYCLE_TRANSPORT="outbox",
        EDITOR="true",  # a person edits the words; the copy is used as it is
    )
    setup = "lifecycle db upgrade\nlifecycle seed --customers 2000\nlifecycle features\n"
    run_block(Block("setup (make demo)", "bash", setup), env)
    subprocess.run(
        ["airflow", "db", "migrate"], env=env, check=True, capture_output=True, timeout=600
    )
    template, check, rehearse = section_blocks("Add a campaign in five minutes")
    run_block(template, env, cwd=repo)
    (spec,) = section_blocks("Add a campaign in five minutes", "yaml")
    (repo / "include" / "campaigns" / "nudge.yaml").write_text(spec.text, encoding="utf-8")

    airflow_home = {".local/airflow": str(tmp_path / "airflow")}
    output = run_block(check, env, substitutions=airflow_home)
    assert "nudge as of" in output and "render errors: 0" in output
    output = run_block(rehearse, env, substitutions=airflow_home)
    assert "campaign_nudge" in output and "state=success" in output.replace(" ", "")
    (birthday,) = section_blocks("Campaigns in Airflow")
    run_block(birthday, env, substitutions=airflow_home)


def test_the_env_file_satisfies_compose(tmp_path: Path) -> None:
    """The .env the README writes has every variable docker-compose.yml requires."""
    from test_compose import AIRFLOW_SERVICES, compose

    (block,) = section_blocks("Production-shaped stack: docker-compose")
    run_block(block, clean_env(tmp_path), cwd=tmp_path)
    dotenv = {}
    for line in (tmp_path / ".env").read_text().splitlines():
        name, _, value = line.partition("=")
        dotenv[name] = value.strip('"')
    services = compose(dotenv)["services"]
    assert set(services) >= AIRFLOW_SERVICES
    worker = services["airflow-worker"]["environment"]
    assert worker["LIFECYCLE_SENDER_ADDRESS"] == dotenv["LIFECYCLE_SENDER_ADDRESS"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(url: str, process: subprocess.Popen[str], seconds: float = 60) -> None:
    """Until `url` answers (any status); fail with the process's output if it exits first."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"{process.args} exited: {process.communicate()[0][-2000:]}")
        try:
            httpx.get(url, timeout=2)
            return
        except httpx.TransportError:
            time.sleep(0.2)
    pytest.fail(f"{url} did not answer within {seconds} s")


@contextmanager
def started(command: list[str], env: dict[str, str]) -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()


@pytest.mark.slow
def test_the_reverse_proxy_serves_only_the_public_pages(tmp_path: Path, sqlite_url: str) -> None:
    """The README's Caddyfile, as written but for its name and ports, in front of
    `lifecycle serve-public` as docker-compose runs it: an unsubscribe link works through it,
    the webhook too, and nothing else (Airflow's paths, the health check) is proxied."""
    from test_unsubscribe_web import EMAIL, add_ledger_row, rows

    from lifecycle.feedback import unsubscribe

    caddy = shutil.which("caddy")
    if caddy is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI needs caddy (.ci/run installs it)")
        pytest.skip("caddy is not installed")
    public_port, proxy_port = free_port(), free_port()
    proxy_url = f"http://127.0.0.1:{proxy_port}"
    secret = "proxy-test-secret-0123456789"
    env = clean_env(
        tmp_path,
        AIRFLOW__CORE__EXECUTOR="CeleryExecutor",  # as in docker-compose.yml
        LIFECYCLE_WAREHOUSE_URL=sqlite_url,
        LIFECYCLE_UNSUBSCRIBE_SECRET=secret,
        LIFECYCLE_PUBLIC_URL=proxy_url,
        HOME=str(tmp_path),  # caddy's own state
        XDG_DATA_HOME=str(tmp_path / "data"),
        XDG_CONFIG_HOME=str(tmp_path / "config"),
    )
    (block,) = section_blocks("Production-shaped stack: docker-compose", "caddyfile")
    caddyfile = tmp_path / "Caddyfile"
    site = block.text.replace("mail.example.com", proxy_url)
    caddyfile.write_text(
        "{\n\tadmin off\n}\n" + site.replace("127.0.0.1:8090", f"127.0.0.1:{public_port}")
    )
    assert site != block.text and caddyfile.read_text().count(f":{public_port}") == 1

    engine = warehouse.make_engine(sqlite_url)
    settings = load_settings(
        warehouse_url=sqlite_url, unsubscribe_secret=secret, public_url=proxy_url
    )
    # A campaign outside the preference centre's topics: its one-click link stops every email.
    send_id = add_ledger_row(engine, 17, campaign="no_topic")
    link = unsubscribe.unsubscribe_url(settings, unsubscribe.token_for(settings, send_id))
    assert link.startswith(f"{proxy_url}/lifecycle/unsubscribe/")
    serve = ["lifecycle", "serve-public", "--host", "127.0.0.1", "--port", str(public_port)]
    run = [caddy, "run", "--config", str(caddyfile), "--adapter", "caddyfile"]
    with started(serve, env) as public, started(run, env) as proxy:
        wait_for(f"http://127.0.0.1:{public_port}/health", public)
        wait_for(proxy_url, proxy)
        with httpx.Client(timeout=30) as http:
            page = http.get(link)
            assert page.status_code == 200 and "<form" in page.text
            assert http.post(link).status_code == 200  # the one-click unsubscribe
            webhook = http.post(f"{proxy_url}/lifecycle/events/sendgrid", content=b"[]")
            assert webhook.status_code == 200, webhook.text
            for internal in ("/health", "/api/v2/version", "/auth/token", "/", "/campaigns/"):
                assert http.get(f"{proxy_url}{internal}").status_code == 404, internal
            assert http.get(f"http://127.0.0.1:{public_port}/health").status_code == 200
    assert rows(engine) == [(EMAIL.lower(), "global", "unsubscribe", "link")]
    engine.dispose()


def test_development_commands(tmp_path: Path) -> None:
    (block,) = section_blocks("Development")
    run_block(block, clean_env(tmp_path))
