"""The README's Quickstart prerequisites and its "Operating campaigns safely" commands, executed
as written (the package install simulated with `apt-get -s`, the database under another name).

The draft walkthrough uses the README's own `nudge` spec and template commands: that spec has no
`status`, so following the README as written can never mail a customer.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from lifecycle.core import features
from lifecycle.core.config import PROJECT_ROOT, load_settings
from lifecycle.devtools import seed
from lifecycle.store import schema, warehouse

README = (PROJECT_ROOT / "README.md").read_text(encoding="utf-8")
BIN = Path(sys.executable).parent


def section(title: str) -> str:
    """The README text under a heading, up to the next heading of the same or a higher level."""
    level = len(title) - len(title.lstrip("#"))
    start = README.index(f"\n{title}\n")
    end = re.compile(rf"\n#{{1,{level}}} ").search(README, start + 1)
    return README[start : end.start() if end else len(README)]


def code_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def commands(text: str) -> list[str]:
    """The command lines of the bash blocks, comments removed."""
    lines = [line for block in code_blocks(text, "bash") for line in block.splitlines()]
    return [re.sub(r"\s+#.*$", "", line).strip() for line in lines if line.strip()]


def test_the_debian_prerequisites_resolve_and_create_the_test_database() -> None:
    install, createdb = commands(section("## Quickstart"))[-2:]
    words = shlex.split(install)
    assert words[:4] == ["sudo", "apt-get", "install", "-y"]
    packages = words[4:]
    assert {"postgresql", "chromium", "python3.11-venv", "make"} <= set(packages)
    simulated = subprocess.run(
        ["apt-get", "install", "-s", *packages], capture_output=True, text=True
    )
    assert simulated.returncode == 0, simulated.stderr
    name = f"readme_{uuid.uuid4().hex[:8]}"
    assert createdb.endswith(" test")
    subprocess.run(shlex.split(createdb.removesuffix("test") + name), check=True)
    subprocess.run(["dropdb", "-h", "127.0.0.1", "-U", "postgres", name], check=True)


@pytest.fixture
def nudge(tmp_path: Path) -> dict[str, str]:
    """The README's nudge campaign (its template commands and its spec, as written) next to
    the shipped ones, a seeded warehouse, and the environment the commands run in."""
    shutil.copytree(PROJECT_ROOT / "templates", tmp_path / "templates")
    shutil.copytree(load_settings().campaigns_dir, tmp_path / "include" / "campaigns")
    add_a_campaign = section("## Add a campaign in five minutes")
    make_template = commands(add_a_campaign)[0]
    assert make_template.startswith("mkdir -p templates/nudge && cp -r")
    subprocess.run(["bash", "-c", make_template], cwd=tmp_path, check=True)
    (spec,) = code_blocks(add_a_campaign, "yaml")
    assert "status:" not in spec  # a draft, as a new campaign should be
    (tmp_path / "include" / "campaigns" / "nudge.yaml").write_text(spec, encoding="utf-8")

    url = f"sqlite:///{tmp_path / 'warehouse.db'}"
    engine = warehouse.make_engine(url)
    warehouse.upgrade(engine)
    as_of = seed.seed(engine, 400, seed=3).as_of
    features.materialize(engine, as_of, load_settings(warehouse_url=url))
    engine.dispose()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIFECYCLE_")}
    env.pop("SENDGRID_API_KEY", None)
    return env | {
        "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        "LIFECYCLE_HOME": str(tmp_path / "home"),
        "LIFECYCLE_WAREHOUSE_URL": url,
        "LIFECYCLE_TEMPLATES_DIR": str(tmp_path / "templates"),
        "LIFECYCLE_CAMPAIGNS_DIR": str(tmp_path / "include" / "campaigns"),
        "LIFECYCLE_TRANSPORT": "outbox",
        "LIFECYCLE_UNSUBSCRIBE_SECRET": "readme-test-secret",
    }


def test_draft_and_live_commands_as_written(nudge: dict[str, str]) -> None:
    draft_and_live = section("### Draft and live")
    dry, real = commands(draft_and_live)
    dry_run = subprocess.run(["bash", "-c", dry], env=nudge, capture_output=True, text=True)
    assert dry_run.returncode == 0, dry_run.stderr
    assert "dry run: nothing written or sent" in dry_run.stdout

    refused = subprocess.run(["bash", "-c", real], env=nudge, capture_output=True, text=True)
    assert refused.returncode == 1
    (line,) = refused.stderr.splitlines()
    # The line the README quotes, word for word up to its ellipsis.
    quoted = re.search(r"# exit 1: (.*?) \.\.\.", draft_and_live)
    assert quoted and line.startswith(quoted.group(1)), line
    assert line.endswith(
        f"{nudge['LIFECYCLE_CAMPAIGNS_DIR']}/nudge.yaml (drafts take dry runs and test sends)"
    )
    engine = warehouse.make_engine(nudge["LIFECYCLE_WAREHOUSE_URL"])
    with engine.connect() as conn:
        ledger = conn.execute(sa.select(sa.func.count()).select_from(schema.send_ledger))
        assert ledger.scalar_one() == 0
    engine.dispose()
    assert not (Path(nudge["LIFECYCLE_HOME"]) / "outbox").exists()
