"""README "Run an A/B test": its YAML blocks make a valid spec out of the demo's, and every
command of its shell block, run as written (with the LIFECYCLE_HOME it exports pointed at a
temporary folder), ends with a report naming the winner on opens."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from lifecycle.core import render
from lifecycle.core.campaigns import CampaignSpec, load_campaigns
from lifecycle.core.config import PROJECT_ROOT, load_settings


def section_blocks(language: str) -> list[str]:
    readme = (PROJECT_ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Run an A/B test\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"```{language}\n(.*?)```", section, re.S)


def section_commands() -> list[str]:
    (block,) = section_blocks("bash")
    return [line for line in block.splitlines() if line.strip()]


def test_the_section_yaml_is_valid_on_the_demo_spec() -> None:
    settings = load_settings()
    shipped = load_campaigns(settings.campaigns_dir).specs["reengagement"]
    raw = shipped.model_dump(exclude={"variants", "experiment", "source_path"})
    for block in section_blocks("yaml"):
        raw |= yaml.safe_load(block)
    spec = CampaignSpec.model_validate(raw)
    assert spec.variant_ids == ["plain", "personal"] and spec.experiment is not None
    render.Renderer(settings).preflight(spec)


@pytest.mark.slow
def test_the_ab_test_section_runs_as_written(tmp_path: Path) -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("LIFECYCLE_") and k != "SENDGRID_API_KEY"
    }
    output = ""
    for line in section_commands():
        if line.startswith("export "):
            name, _ = line.removeprefix("export ").split("=", 1)
            assert name == "LIFECYCLE_HOME"
            env[name] = str(tmp_path / "home")  # not the checkout's .local
            continue
        assert line.startswith(".venv/bin/lifecycle "), line
        done = subprocess.run(
            shlex.split(line),
            cwd=PROJECT_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, (line, done.stdout[-2000:], done.stderr[-2000:])
        output = done.stdout
    assert "SIMULATED" in output
    assert "variant personal" in output and "variant plain" in output
    assert "winner on unique_opens: personal" in output
