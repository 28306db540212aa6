"""Every bad input is a clear answer: one line on stderr (and a hint), exit code 2 for usage
errors and 1 for failures, no traceback unless `--debug`, and no secret in any message."""

from __future__ import annotations

import argparse
import os
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine, select

from lifecycle import cli
from lifecycle.cli import arguments, common
from lifecycle.core.campaigns import load_campaigns
from lifecycle.core.config import load_settings
from lifecycle.run.campaign import run_campaign
from lifecycle.store import schema

PASSWORD = "s3cret-warehouse-pw"
AS_OF = "2026-11-24T12:00:00Z"


@pytest.fixture(autouse=True)
def local_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The outbox transport in a temporary home: nothing here may send or touch .local/."""
    for name in list(os.environ):
        if name.startswith("LIFECYCLE_") or name == "SENDGRID_API_KEY":
            monkeypatch.delenv(name)
    monkeypatch.setenv("LIFECYCLE_HOME", str(tmp_path))
    monkeypatch.setenv("LIFECYCLE_TRANSPORT", "outbox")
    monkeypatch.setenv("LIFECYCLE_UNSUBSCRIBE_SECRET", "cli-errors-unsubscribe-secret")


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    """Exit code and stderr lines of `lifecycle ARGV`; the code of argparse's exit included."""
    try:
        code = cli.main(argv)
    except SystemExit as exit_info:
        code = int(exit_info.code or 0)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err.splitlines()


def unreachable_url(backend: str, tmp_path: Path) -> str:
    if backend == "sqlite":
        (tmp_path / "a-directory.db").mkdir()
        return f"sqlite:///{tmp_path / 'a-directory.db'}"
    admin = os.environ.get("LIFECYCLE_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
    url = sa.make_url(admin).set(database="lifecycle_no_such_database", password=PASSWORD)
    return url.render_as_string(hide_password=False)


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_a_warehouse_that_cannot_be_reached_is_one_line_without_the_password(
    backend: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = unreachable_url(backend, tmp_path)
    for command in (["db", "upgrade"], ["features", "--as-of", AS_OF]):
        code, err = run_cli(["--warehouse", url, *command], capsys)
        assert code == 1
        assert len(err) == 2, err
        message, hint = err
        assert message.startswith("cannot connect to the warehouse at ")
        assert common.safe_url(url) in message
        assert hint.startswith("hint: ") and "lifecycle db upgrade" in hint
        assert PASSWORD not in "\n".join(err)
    if backend == "postgres":
        assert "lifecycle_no_such_database" in message and "postgres:***@" in message


def test_a_wrong_dialect_is_a_usage_error_with_the_right_scheme(
    capsys: pytest.CaptureFixture[str],
) -> None:
    for url in (
        f"postgres://postgres:{PASSWORD}@127.0.0.1:5432/warehouse",
        f"mysql://root:{PASSWORD}@127.0.0.1/warehouse",  # no driver installed
        "not a url",
        f"postgresql+psycopg://postgres:{PASSWORD}@127.0.0.1:port/warehouse",  # unparseable
    ):
        code, err = run_cli(["--warehouse", url, "db", "current"], capsys)
        assert code == 2, url
        assert len(err) == 2 and err[0].startswith("warehouse URL ")
        assert "postgresql+psycopg://" in err[1]
        assert PASSWORD not in "\n".join(err)


def test_missing_source_tables_hint_seed_or_include_sql_and_fail_the_run(
    engine: Engine, warehouse_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    schema.source.drop_all(engine)  # what `db upgrade` alone leaves
    for command in (
        ["features", "--as-of", AS_OF],
        ["segments", "--as-of", AS_OF],
        ["run", "onboarding", "--as-of", AS_OF],
    ):
        code, err = run_cli(["--warehouse", warehouse_url, *command], capsys)
        assert code == 1, command
        assert err[-2].endswith("has no table 'customers'"), err
        assert "`lifecycle seed`" in err[-1] and "include/sql/" in err[-1]
    with engine.connect() as conn:
        statuses = conn.execute(select(schema.campaign_runs.c.status)).scalars().all()
    assert statuses == ["failed"]  # the run whose planning failed is not left running


def test_missing_marketing_tables_hint_db_upgrade(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    code, err = run_cli(["--warehouse", url, "requeue-unknown", "onboarding"], capsys)
    assert code == 1
    assert err[0].endswith("has no table 'send_ledger'") and "lifecycle db upgrade" in err[1]


@pytest.mark.parametrize("instant", ["0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z"])
@pytest.mark.parametrize(
    "command",
    [
        ["run", "onboarding"],
        ["features"],
        ["segments"],
        ["report"],
        ["seed"],
        ["simulate-events"],
        ["preview", "--all", "--out", "/tmp/never"],
    ],
)
def test_out_of_range_instants_are_refused_at_parse_time(
    command: list[str], instant: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = run_cli([*command, "--as-of", instant], capsys)
    assert code == 2
    assert err[-1].endswith(f"argument --as-of: {instant!r} is outside the years 1970..2200 (UTC)")


def test_every_accepted_instant_survives_a_day_of_arithmetic() -> None:
    for value in ("1970-01-01T00:00:00Z", "2200-12-31T23:59:59+14:00", "2026-02-28"):
        instant = arguments.parse_datetime(value)
        assert instant - timedelta(days=400) < instant < instant + timedelta(days=400)
    for value in ("1969-12-31T23:59:59Z", "1970-01-01T00:30:00+01:00", "2201-01-01", "0001-01-01"):
        with pytest.raises(argparse.ArgumentTypeError):
            arguments.parse_datetime(value)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "onboarding", "--limit", "0"], "argument --limit: must be at least 1, not 0"),
        (["run", "onboarding", "--limit", "-5"], "argument --limit: must be at least 1, not -5"),
        (["report", "--days", "-3"], "argument --days: must be at least 1, not -3"),
        (["report", "--months", "0"], "argument --months: must be at least 1, not 0"),
        (["seed", "--customers", "-10"], "argument --customers: must be at least 1, not -10"),
        (["seed", "--customers", "0"], "argument --customers: must be at least 1, not 0"),
        (["segments", "--sample", "-1"], "argument --sample: must be 0 or more, not -1"),
        (["requeue-unknown", "onboarding", "--id", "0"], "argument --id: must be at least 1"),
        (["sink", "--port", "70000"], "argument --port: a TCP port is 1..65535, not 70000"),
        (["sink", "--rate-5xx", "1.5"], "argument --rate-5xx: a probability is 0..1, not 1.5"),
        (["sink", "--slow-ms", "nan"], "argument --slow-ms: milliseconds are 0..3600000"),
        (["run", "onboarding", "--limit", "ten"], "argument --limit: invalid int value: 'ten'"),
    ],
)
def test_non_positive_counts_are_refused_at_parse_time(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = run_cli(argv, capsys)
    assert code == 2
    assert message in err[-1]


def test_zero_is_accepted_where_it_means_none() -> None:
    args = cli.build_parser().parse_args(["segments", "--sample", "0"])
    assert args.sample == 0
    args = cli.build_parser().parse_args(["run", "onboarding", "--limit", "1"])
    assert args.limit == 1


def test_unknown_campaign_ids_are_usage_errors_everywhere(
    warehouse_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    known = ", ".join(load_campaigns(load_settings().campaigns_dir).ids)
    expected = f"no campaign 'nosuchcampaign'; known: {known}"
    for command in (
        ["run", "nosuchcampaign"],
        ["requeue-unknown", "nosuchcampaign"],
        ["requeue-unknown", "nosuchcampaign", "--id", "1"],
        ["report", "--campaign", "nosuchcampaign"],
        ["simulate-events", "--campaign", "nosuchcampaign"],
        ["preview", "nosuchcampaign", "--customer", "1", "--out", str(tmp_path / "p.html")],
    ):
        code, err = run_cli(["--warehouse", warehouse_url, *command], capsys)
        assert (code, err) == (2, [expected]), command


def test_a_broken_spec_stops_its_own_campaign_only(
    sqlite_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    campaigns = tmp_path / "campaigns"
    shutil.copytree(load_settings().campaigns_dir, campaigns)
    broken = campaigns / "birthday.yaml"
    broken.write_text(broken.read_text().replace("schedule:", "schedul:", 1))
    monkeypatch.setenv("LIFECYCLE_CAMPAIGNS_DIR", str(campaigns))
    warning = f"warning: {broken} is invalid; campaign birthday cannot run"
    code, err = run_cli(
        ["--warehouse", sqlite_url, "run", "onboarding", "--dry-run", "--as-of", AS_OF], capsys
    )
    assert (code, err) == (0, [warning])
    error = (
        f"invalid campaign spec: {broken}: field 'schedul': unknown field "
        "(did you mean 'schedule'?)"
    )
    out = str(tmp_path / "p.html")
    for command in (
        ["run", "birthday", "--as-of", AS_OF],
        ["preview", "birthday", "--customer", "1", "--out", out],
    ):
        code, err = run_cli(["--warehouse", sqlite_url, *command], capsys)
        assert (code, err) == (2, [error]), command


def test_report_knows_campaigns_by_their_runs_too(
    engine: Engine, warehouse_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with engine.begin() as conn:
        conn.execute(
            sa.insert(schema.campaign_runs).values(
                campaign_id="retired",
                run_key="r1",
                as_of=datetime(2026, 11, 1, tzinfo=UTC),
                dry_run=False,
                status="success",
                started_at=datetime(2026, 11, 1, tzinfo=UTC),
            )
        )
    code = cli.main(["--warehouse", warehouse_url, "report", "--campaign", "retired"])
    assert code == 0 and capsys.readouterr().err == ""


def test_an_unexpected_error_is_one_line_and_debug_shows_the_traceback(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"postgresql+psycopg://postgres:{PASSWORD}@127.0.0.1:1/warehouse"

    def broken(args: argparse.Namespace) -> int:
        raise RuntimeError(f"boom near {url}")

    monkeypatch.setattr(cli.reports, "cmd_report", broken)
    code, err = run_cli(["--warehouse", url, "report"], capsys)
    assert code == 1
    assert err == [
        f"unexpected error: RuntimeError: boom near {common.safe_url(url)}",
        "hint: run again with --debug for the traceback",
    ]
    with pytest.raises(RuntimeError, match="boom"):
        cli.main(["--debug", "--warehouse", url, "report"])


def test_a_run_whose_planning_fails_is_marked_failed(
    engine: Engine, warehouse_url: str, tmp_path: Path
) -> None:
    """`lifecycle run` finishes the run row as failed when plan raises (the DAG's finalize
    does the same through `abandon`)."""
    settings = load_settings(warehouse_url=warehouse_url)
    spec = load_campaigns(settings.campaigns_dir).specs["onboarding"]
    schema.source.drop_all(engine)
    with pytest.raises(sa.exc.DBAPIError):
        run_campaign(engine, spec, settings, as_of=datetime(2026, 11, 24, 12, tzinfo=UTC))
    with engine.connect() as conn:
        row = conn.execute(select(schema.campaign_runs)).mappings().one()
    assert row["status"] == "failed" and row["finished_at"] is not None
