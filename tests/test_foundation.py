"""The foundation everything stands on: migrations, UTC storage, the demo seeder, the CLI, the
dependency locks and the configuration defaults. Warehouse tests run on SQLite and on
PostgreSQL."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import tomllib
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pandas as pd
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version
from sqlalchemy import Engine

from lifecycle import cli
from lifecycle.core.config import PROJECT_ROOT, load_settings
from lifecycle.devtools import seed
from lifecycle.store import schema, states, warehouse
from lifecycle.store.sqltypes import UtcDateTime
from lifecycle.store.states import FailReason, LedgerStatus, RunStatus, SkipReason

AS_OF = datetime(2026, 3, 1, 9, 30, tzinfo=UTC)
N = 10_000
ARMENIAN = re.compile(r"^[\u0531-\u058F]+$")
GEORGIAN = re.compile(r"^[\u10A0-\u10FF]+$")
LATIN = re.compile(r"^[A-Za-z]+$")
VALID_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[a-z]+$")


# --- migrations ---------------------------------------------------------------------------
def test_migrations_have_a_single_head() -> None:
    script = ScriptDirectory(str(warehouse.MIGRATIONS))
    assert len(script.get_heads()) == 1, script.get_heads()
    assert warehouse.head_revision() == script.get_heads()[0]


def marketing_tables(engine: Engine) -> set[str]:
    return set(sa.inspect(engine).get_table_names()) & set(schema.marketing.tables)


def test_migrations_go_down_and_up_step_by_step(engine: Engine) -> None:
    script = ScriptDirectory(str(warehouse.MIGRATIONS))
    revisions = [r.revision for r in script.walk_revisions()]  # head first
    assert warehouse.current_revision(engine) == revisions[0]

    for revision in revisions:
        assert warehouse.current_revision(engine) == revision
        warehouse.downgrade(engine, "-1")
    assert warehouse.current_revision(engine) is None
    assert marketing_tables(engine) == set()
    assert {"customers", "orders"} <= set(sa.inspect(engine).get_table_names())

    for revision in reversed(revisions):
        warehouse.upgrade(engine, "+1")
        assert warehouse.current_revision(engine) == revision
    assert marketing_tables(engine) == set(schema.marketing.tables)


def test_migrations_build_exactly_what_schema_py_declares(engine: Engine) -> None:
    def ours(name: str | None, type_: str, _parent: object) -> bool:
        # The source tables (customers, orders) are not Alembic's business.
        return not (type_ == "table" and name in schema.source.tables)

    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"include_name": ours})
        assert compare_metadata(context, schema.marketing) == []


STATE_CHECKS = {  # (table, column) → the values its CHECK constraint admits
    ("send_ledger", "status"): set(LedgerStatus),
    ("send_ledger", "reason"): set(SkipReason) | set(FailReason),
    ("campaign_runs", "status"): set(RunStatus),
    ("test_sends", "status"): set(states.TestSendStatus),
}


def quoted(sql: str) -> set[str]:
    return set(re.findall(r"'([^']*)'", sql))


def test_schema_state_checks_admit_exactly_the_enum_values() -> None:
    for (table, column), values in STATE_CHECKS.items():
        (check,) = [
            c
            for c in schema.marketing.tables[table].constraints
            if isinstance(c, sa.CheckConstraint) and c.name == f"ck_{table}_{column}"
        ]
        assert quoted(str(check.sqltext)) == values, (table, column)


def test_migrated_state_checks_admit_exactly_the_enum_values(engine: Engine) -> None:
    inspector = sa.inspect(engine)
    for (table, column), values in STATE_CHECKS.items():
        checks = {c["name"]: c["sqltext"] for c in inspector.get_check_constraints(table)}
        sql = checks[f"ck_{table}_{column}"]
        assert quoted(sql) == values, (table, column)
        assert ("IS NULL" in sql.upper()) == (column == "reason")


def test_warehouse_refuses_unknown_states(engine: Engine) -> None:
    run = {
        "campaign_id": "c",
        "run_key": "k",
        "as_of": AS_OF,
        "status": RunStatus.RUNNING,
        "started_at": AS_OF,
    }
    row = {
        "campaign_id": "c",
        "customer_id": 1,
        "run_id": 1,
        "template": "t",
        "planned_at": AS_OF,
    }
    send = {"run_id": 1, "campaign_id": "c", "recipient": "qa@example.com", "sent_at": AS_OF}
    with engine.begin() as conn:
        conn.execute(sa.insert(schema.campaign_runs), run)
        reasons = [None, *SkipReason, *FailReason]
        conn.execute(
            sa.insert(schema.send_ledger),
            [
                row | {"occurrence_key": str(i), "status": LedgerStatus.FAILED, "reason": reason}
                for i, reason in enumerate(reasons)
            ],
        )
        conn.execute(
            sa.insert(schema.test_sends),
            [send | {"customer_id": i, "status": s} for i, s in enumerate(states.TestSendStatus)],
        )
    refused = [
        (schema.campaign_runs, run | {"run_key": "k2", "status": "done"}),
        (schema.send_ledger, row | {"occurrence_key": "x", "status": "bounced"}),
        (
            schema.send_ledger,
            row | {"occurrence_key": "x", "status": "failed", "reason": "http_400"},
        ),
        (schema.test_sends, send | {"customer_id": 99, "status": "skipped"}),
    ]
    for table, values in refused:
        with pytest.raises(sa.exc.IntegrityError, match="ck_"), engine.begin() as conn:
            conn.execute(sa.insert(table), values)


def test_upgrade_is_idempotent(engine: Engine) -> None:
    warehouse.upgrade(engine)
    assert warehouse.current_revision(engine) == warehouse.head_revision()


# --- UTC storage --------------------------------------------------------------------------
def test_utc_datetime_round_trips_as_aware_utc(engine: Engine) -> None:
    metadata = sa.MetaData()
    table = sa.Table(
        "utc_probe",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("at", UtcDateTime),
    )
    metadata.create_all(engine)
    yerevan = datetime(2026, 2, 28, 23, 59, 59, 123456, tzinfo=ZoneInfo("Asia/Yerevan"))
    pago_pago = datetime(2026, 2, 28, 12, 0, tzinfo=ZoneInfo("Pacific/Pago_Pago"))
    naive = datetime(2024, 2, 29, 12, 0)
    values = {1: yerevan, 2: pago_pago, 3: naive, 4: None}
    with engine.begin() as conn:
        conn.execute(table.insert(), [{"id": k, "at": v} for k, v in values.items()])
    with engine.connect() as conn:
        stored = dict(conn.execute(sa.select(table.c.id, table.c.at)).all())
        # Comparison happens on the instant, whatever offset the parameter carries.
        in_tokyo = yerevan.astimezone(ZoneInfo("Asia/Tokyo"))
        later_ids = set(conn.execute(sa.select(table.c.id).where(table.c.at > in_tokyo)).scalars())

    assert stored[4] is None
    for key in (1, 2, 3):
        assert stored[key].tzinfo is not None and stored[key].utcoffset() == timedelta(0)
    assert stored[1] == yerevan and stored[1].microsecond == 123456
    assert stored[2] == pago_pago
    assert stored[3] == naive.replace(tzinfo=UTC)
    # Pago Pago noon (23:00 UTC) is after Yerevan's 23:59 (19:59 UTC, 04:59 next day in Tokyo).
    assert later_ids == {2}
    assert stored[2] > stored[1] > stored[3]


# --- the seeder ---------------------------------------------------------------------------
def read_back(engine: Engine) -> tuple[pd.DataFrame, pd.DataFrame]:
    with engine.connect() as conn:
        customers = pd.DataFrame(
            conn.execute(sa.select(schema.customers).order_by(schema.customers.c.id)).mappings()
        )
        orders = pd.DataFrame(
            conn.execute(sa.select(schema.orders).order_by(schema.orders.c.id)).mappings()
        )
    return customers, orders


@pytest.fixture
def seeded(engine: Engine) -> tuple[pd.DataFrame, pd.DataFrame]:
    result = seed.seed(engine, N, seed=7, as_of=AS_OF)
    customers, orders = read_back(engine)
    assert (result.customers, result.orders) == (len(customers), len(orders))
    return customers, orders


def test_seed_is_deterministic_and_loads_exactly_what_it_generates(engine: Engine) -> None:
    seed.seed(engine, 3_000, seed=1, as_of=AS_OF)
    first = read_back(engine)
    seed.seed(engine, 3_000, seed=1, as_of=AS_OF)
    second = read_back(engine)
    seed.seed(engine, 3_000, seed=2, as_of=AS_OF)
    other = read_back(engine)
    pd.testing.assert_frame_equal(first[0], second[0])
    pd.testing.assert_frame_equal(first[1], second[1])
    assert not first[0]["email"].equals(other[0]["email"])

    # What went in is what comes out: native scripts, NULLs, dates and UTC instants.
    customers, orders = seed.generate(3_000, 1, AS_OF)
    loaded = first[0]
    assert loaded["first_name"].tolist() == customers["first_name"].tolist()
    assert loaded["email"].tolist() == customers["email"].tolist()
    assert loaded["birth_date"].tolist() == [
        None if b is None else date.fromisoformat(b) for b in customers["birth_date"]
    ]
    assert loaded["signup_at"].tolist() == [
        ts.to_pydatetime().replace(tzinfo=UTC) for ts in customers["signup_at"]
    ]
    assert len(first[1]) == len(orders)
    assert [float(a) for a in first[1]["amount"]] == orders["amount"].tolist()


def test_seed_speaks_english_armenian_and_georgian(seeded) -> None:  # type: ignore[no-untyped-def]
    customers, _ = seeded
    assert set(customers["locale"]) == {"en", "hy", "ka"}
    script = {"hy": ARMENIAN, "ka": GEORGIAN, "en": LATIN}
    for locale, pattern in script.items():
        rows = customers[customers["locale"] == locale]
        names = pd.concat([rows["first_name"].dropna(), rows["last_name"].dropna()])
        assert len(rows) > N * 0.1
        assert names.map(lambda name, p=pattern: bool(p.match(name))).all(), locale


def test_seed_covers_the_clock_and_leap_day(seeded) -> None:  # type: ignore[no-untyped-def]
    customers, _ = seeded
    zones = set(customers["timezone"])
    assert {"Asia/Yerevan", "Asia/Tbilisi", "Pacific/Kiritimati", "Pacific/Pago_Pago"} <= zones
    assert customers.loc[customers["locale"] == "hy", "timezone"].mode()[0] == "Asia/Yerevan"
    assert customers.loc[customers["locale"] == "ka", "timezone"].mode()[0] == "Asia/Tbilisi"
    births = customers["birth_date"].dropna()
    assert births.map(lambda d: (d.month, d.day) == (2, 29)).sum() > 0
    ages = births.map(lambda d: (AS_OF.date() - d).days / 365.25)
    assert ages.min() >= 17.9 and ages.max() <= 81


def test_seed_has_three_years_of_signups_and_a_fresh_cohort(seeded) -> None:  # type: ignore[no-untyped-def]
    customers, _ = seeded
    signup = customers["signup_at"]
    assert signup.map(lambda t: t.tzinfo is not None).all()
    assert signup.max() <= AS_OF
    assert signup.min() >= AS_OF - timedelta(days=3 * 366)
    assert signup.min() <= AS_OF - timedelta(days=2 * 365)
    fresh = (signup > AS_OF - timedelta(days=8)).sum()
    # Uniform signups alone would put ~0.7% in the last 8 days; the cohort adds ~1%.
    assert fresh > N * 0.012


def test_seed_has_the_bad_rows_every_warehouse_has(seeded) -> None:  # type: ignore[no-untyped-def]
    customers, _ = seeded
    emails = customers["email"]
    malformed = emails.dropna().map(lambda e: not VALID_EMAIL.match(e)).sum()
    assert 0 < malformed < N * 0.01
    assert 0 < emails.isna().sum() < N * 0.01
    assert 0 < customers["first_name"].isna().sum() < N * 0.05
    assert 0 < (~customers["marketing_consent"]).sum() < N * 0.5


def test_seed_orders_are_pareto_shaped(seeded) -> None:  # type: ignore[no-untyped-def]
    customers, orders = seeded
    per_customer = orders.groupby("customer_id").size().reindex(customers["id"], fill_value=0)
    buyers = per_customer[per_customer > 0].sort_values(ascending=False)
    assert 0.2 < (per_customer == 0).mean() < 0.75  # many sign up and never buy
    assert buyers.value_counts().idxmax() == 1  # one-time buyers are the most common buyers
    top = buyers.iloc[: len(buyers) // 5].sum() / buyers.sum()
    assert top > 0.5  # a loyal core places most orders
    assert buyers.max() >= 10
    last_order = orders.groupby("customer_id")["placed_at"].max()
    lapsed = (last_order < AS_OF - timedelta(days=90)).mean()
    assert 0.2 < lapsed < 0.95

    assert set(orders["customer_id"]) <= set(customers["id"])
    signup = customers.set_index("id")["signup_at"]
    assert (orders["placed_at"] >= orders["customer_id"].map(signup)).all()
    assert (orders["placed_at"] <= AS_OF).all()
    delivered = orders.dropna(subset=["delivered_at"])
    assert (delivered["delivered_at"] > delivered["placed_at"]).all()
    assert set(orders["status"]) == {"placed", "delivered", "cancelled", "returned"}
    non_buyers = per_customer[per_customer == 0].index
    assert (customers.set_index("id").loc[non_buyers, "loyalty_points"] == 0).all()


def test_seed_replaces_previous_rows(engine: Engine) -> None:
    seed.seed(engine, 500, seed=3, as_of=AS_OF)
    seed.seed(engine, 200, seed=3, as_of=AS_OF)
    customers, orders = read_back(engine)
    assert len(customers) == 200
    assert set(orders["customer_id"]) <= set(customers["id"])


# --- the CLI ------------------------------------------------------------------------------
def command_paths(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):  # type: ignore[no-untyped-def]
    """Every (sub)command path of the parser, e.g. ("db", "upgrade")."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for name, sub in action.choices.items():
                assert helps.get(name), f"`lifecycle {' '.join((*path, name))}` has no help text"
                yield from command_paths(sub, (*path, name))


def test_every_subcommand_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    paths = list(command_paths(cli.build_parser()))
    assert {("db", "upgrade"), ("seed",)} <= {p for p, _ in paths}
    for path, parser in paths:
        with pytest.raises(SystemExit) as exit_info:
            cli.main([*path, "--help"])
        assert exit_info.value.code == 0
        out = capsys.readouterr().out
        assert out.startswith(f"usage: {' '.join(('lifecycle', *path))}"), path
        leaf = not any(isinstance(a, argparse._SubParsersAction) for a in parser._actions)
        if leaf:
            assert callable(parser.get_default("handler")), path


def test_installed_entry_point_runs() -> None:
    executable = PROJECT_ROOT / ".venv" / "bin" / "lifecycle"
    result = subprocess.run(
        [str(executable), "--help"], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "usage: lifecycle" in result.stdout


def test_bad_arguments_get_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    for argv, message in (
        (["seed", "--customers", "many"], "invalid int value: 'many'"),
        (["seed", "--as-of", "yesterday"], "is not an ISO date-time"),
        (["no-such-command"], "invalid choice: 'no-such-command'"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(argv)
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err


# --- dependencies -------------------------------------------------------------------------
def pins(lock: str) -> dict[str, Version]:
    text = (PROJECT_ROOT / lock).read_text()
    return {
        canonicalize_name(name): Version(version)
        for name, version in re.findall(r"^([A-Za-z0-9._-]+)==(\S+)$", text, re.M)
    }


def test_the_locks_pin_what_pyproject_declares() -> None:
    """requirements.txt pins the runtime dependencies, requirements-dev.txt the dev group, at
    versions within the declared ranges and equal wherever both locks pin a package."""
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())
    runtime, dev = pins("requirements.txt"), pins("requirements-dev.txt")
    for lock, declared in (
        (runtime, project["project"]["dependencies"]),
        (dev, project["dependency-groups"]["dev"]),
    ):
        for requirement in map(Requirement, declared):
            name = canonicalize_name(requirement.name)
            assert name in lock, f"{name} is declared but not locked: run `make lock`"
            assert requirement.specifier.contains(lock[name], prereleases=True), name
    for name in runtime.keys() & dev.keys():
        assert runtime[name] == dev[name], name


# --- configuration ------------------------------------------------------------------------
@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.startswith("LIFECYCLE_") or name == "SENDGRID_API_KEY":
            monkeypatch.delenv(name)
    return monkeypatch


def test_defaults_need_nothing(clean_env: pytest.MonkeyPatch) -> None:
    settings = load_settings()
    assert settings.home == PROJECT_ROOT / ".local"
    assert settings.warehouse_url == f"sqlite:///{PROJECT_ROOT / '.local' / 'warehouse.db'}"
    assert settings.templates_dir == PROJECT_ROOT / "templates"
    assert settings.campaigns_dir == PROJECT_ROOT / "include" / "campaigns"
    assert settings.sql_dir == PROJECT_ROOT / "include" / "sql"
    for folder in (settings.templates_dir, settings.campaigns_dir, settings.sql_dir):
        assert folder.is_dir(), folder
    assert settings.outbox_dir == settings.home / "outbox"
    assert settings.sendgrid_api_key is None and settings.unsubscribe_secret is None
    assert settings.chosen_transport() == "outbox"
    assert settings.sendgrid_host == "https://api.sendgrid.com"
    assert settings.public_url.startswith("http://127.0.0.1:")


def test_environment_overrides_and_blank_means_unset(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    clean_env.setenv("LIFECYCLE_HOME", str(tmp_path))
    clean_env.setenv("SENDGRID_API_KEY", "SG.not-a-real-key")
    clean_env.setenv("LIFECYCLE_UNSUBSCRIBE_SECRET", "s3cr3t-value")
    clean_env.setenv("LIFECYCLE_WAREHOUSE_URL", "")
    settings = load_settings()
    assert settings.warehouse_url == f"sqlite:///{tmp_path / 'warehouse.db'}"
    assert settings.chosen_transport() == "sendgrid"
    assert "SG.not-a-real-key" not in repr(settings)
    assert "s3cr3t-value" not in repr(settings)
    clean_env.setenv("LIFECYCLE_TRANSPORT", "outbox")
    assert load_settings().chosen_transport() == "outbox"
    assert load_settings(warehouse_url="sqlite://").warehouse_url == "sqlite://"


def test_settings_repr_hides_warehouse_password_and_keys() -> None:
    from lifecycle.core.config import load_settings

    settings = load_settings(
        warehouse_url="postgresql+psycopg://app:hunter2@db/warehouse",
        sendgrid_api_key="SG.not-a-real-key",
        unsubscribe_secret="s3cret-value",
    )
    text = repr(settings)
    for secret in ("hunter2", "SG.not-a-real-key", "s3cret-value"):
        assert secret not in text
