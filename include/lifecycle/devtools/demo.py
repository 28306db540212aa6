"""`make demo`: the whole story on the embedded default (SQLite warehouse, outbox transport).

migrate → seed (only an empty warehouse) → customer_features → every campaign, each run by
Airflow itself (`airflow dags test`) → a table of what each campaign planned, skipped and sent,
and where the .eml files are. The run's as-of is the seeded data's own "now" (the latest
features snapshot), so a second demo sends nothing new, and says so.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from croniter import croniter
from rich import box
from rich.console import Console
from rich.table import Table
from sqlalchemy import Engine, func, select

from lifecycle.core import features
from lifecycle.core.campaigns import CampaignSpec, load_campaigns
from lifecycle.core.config import PROJECT_ROOT, Settings, load_settings
from lifecycle.devtools import orders, seed, simulate
from lifecycle.store import schema, warehouse
from lifecycle.store.states import LedgerStatus

DEMO_CUSTOMERS = 20_000
WIDTH = 100  # the demo's output fits a 100-column terminal


class DemoError(RuntimeError):
    pass


@dataclass(frozen=True)
class CampaignOutcome:
    campaign_id: str
    counts: dict[str, Any]  # the run row's JSON counts
    eml_files: int
    seconds: float


def airflow_env(settings: Settings, airflow_home: Path) -> dict[str, str]:
    return {
        **os.environ,
        "AIRFLOW_HOME": str(airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{airflow_home / 'airflow.db'}",
        "LIFECYCLE_HOME": str(settings.home),
        "LIFECYCLE_WAREHOUSE_URL": settings.warehouse_url,
        "LIFECYCLE_TRANSPORT": "outbox",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }


def run_airflow(args: list[str], env: dict[str, str], log_path: Path) -> float:
    """Run an `airflow` command, its output into `log_path`; seconds taken."""
    started = time.monotonic()
    with log_path.open("w") as log, working(f"airflow {' '.join(args[:3])}"):
        done = subprocess.run(
            ["airflow", *args], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=PROJECT_ROOT
        )
    if done.returncode != 0:
        raise DemoError(f"`airflow {' '.join(args)}` failed; see {log_path}")
    return time.monotonic() - started


def dags_test(dag_id: str, conf: dict[str, object], env: dict[str, str], logs: Path) -> float:
    return run_airflow(
        ["dags", "test", dag_id, "-c", json.dumps(conf)], env, logs / f"{dag_id}.log"
    )


def has_customers(engine: Engine) -> bool:
    warehouse.create_source_tables(engine)
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(schema.customers)).scalar_one() > 0


def last_run_id(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(
            select(func.coalesce(func.max(schema.campaign_runs.c.id), 0))
        ).scalar_one()


def run_counts_since(engine: Engine, campaign_id: str, after_id: int) -> dict[str, Any]:
    runs = schema.campaign_runs
    query = (
        select(runs.c.counts)
        .where(runs.c.campaign_id == campaign_id, runs.c.id > after_id)
        .order_by(runs.c.id.desc())
        .limit(1)
    )
    with engine.connect() as conn:
        counts = conn.execute(query).scalar_one_or_none()
    if counts is None:
        raise DemoError(f"campaign {campaign_id} left no finished run row")
    return counts


def sent_before(engine: Engine) -> int:
    ledger = schema.send_ledger
    with engine.connect() as conn:
        query = select(func.count()).select_from(ledger).where(ledger.c.status == LedgerStatus.SENT)
        return conn.execute(query).scalar_one()


def run_demo(settings: Settings, airflow_home: Path, customers: int = DEMO_CUSTOMERS) -> int:
    engine = warehouse.engine_for(settings.warehouse_url)
    logs = settings.home / "demo-logs"
    logs.mkdir(parents=True, exist_ok=True)
    campaigns = load_campaigns(settings.campaigns_dir)
    env = airflow_env(settings, airflow_home)

    step("1/5", f"warehouse {settings.warehouse_url}: migrate")
    warehouse.upgrade(engine)
    if has_customers(engine):
        step("2/5", "customers already there: not seeding again")
        snapshot = features.latest_snapshot(engine)
        as_of = snapshot.as_of if snapshot else seeded_as_of(engine)
    else:
        step("2/5", f"seeding {customers:,} demo customers")
        with working("seeding customers and orders"):
            result = seed.seed(engine, customers)
        print(f"      {result.customers:,} customers, {result.orders:,} orders")
        as_of = result.as_of
    step("3/5", f"Airflow metadata DB in {airflow_home}")
    run_airflow(["db", "migrate"], env, logs / "airflow-db-migrate.log")

    conf: dict[str, object] = {"as_of": as_of.isoformat()}
    step("4/5", f"customer_features as of {as_of:%Y-%m-%d %H:%M} UTC (airflow dags test)")
    dags_test("customer_features", conf, env, logs)

    step("5/5", "every campaign, run by Airflow (airflow dags test):")
    for error in campaigns.errors.values():
        print(f"      skipped, invalid spec: {error}")
    live = [spec for spec in campaigns.specs.values() if spec.live]
    for spec in campaigns.specs.values():
        if not spec.live:
            print(f"      skipped, a draft: {spec.id} (it mails nobody until `status: live`)")
    already_sent = sent_before(engine)
    outcomes = [run_campaign(engine, spec, settings, conf, env, logs) for spec in live]
    print()
    OUT.print(table(outcomes))
    report(outcomes, already_sent, settings, logs)
    after_the_emails(engine, campaigns.specs, datetime.now(UTC))
    print("See it in Airflow: `make airflow`, then http://127.0.0.1:8080 (Campaigns in the nav).")
    return 0


def after_the_emails(engine: Engine, specs: dict[str, CampaignSpec], now: datetime) -> None:
    """What the demo tells once the campaigns ran: the emails still waiting, and (simulated)
    what customers did next."""
    tell_waiting(waiting_emails(engine), specs, now)
    # The outbox reports no deliveries, opens or clicks, and demo customers order nothing
    # because of an email: simulate both (labelled simulated) so the dashboard tells the
    # story. They happen after the sends, i.e. up to now.
    events = simulate.simulate_events(engine, as_of=now)
    if events.sends:
        kinds = ", ".join(f"{kind} {n:,}" for kind, n in events.events.items())
        say(f"SIMULATED engagement for {events.sends:,} sends ({kinds}).")
    bought = orders.simulate_orders(engine, now=now)
    if bought.emailed or bought.held_out:
        say(
            f"SIMULATED orders after the emails: {bought.emailed:,} by emailed customers and "
            f"{bought.held_out:,} by the holdout groups (${bought.revenue:,.2f}), so the "
            "dashboard shows conversions, revenue and uplift. The dashboard labels them."
        )


@dataclass(frozen=True)
class Waiting:
    campaign_id: str
    emails: int
    opens_at: datetime  # the earliest send window opening among them (UTC)


def waiting_emails(engine: Engine) -> list[Waiting]:
    """Planned emails per campaign, waiting for their customers' send window."""
    ledger = schema.send_ledger
    query = (
        select(ledger.c.campaign_id, func.count(), func.min(ledger.c.send_after))
        .where(ledger.c.status == LedgerStatus.PLANNED, ledger.c.send_after.is_not(None))
        .group_by(ledger.c.campaign_id)
        .order_by(ledger.c.campaign_id)
    )
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    return [Waiting(c, n, t if t.tzinfo else t.replace(tzinfo=UTC)) for c, n, t in rows]


def next_run(spec: CampaignSpec, after: datetime) -> str:
    """When the campaign would next run after `after`, if unpaused in Airflow."""
    if spec.schedule.cron:
        zone = ZoneInfo(spec.schedule.timezone)
        at = croniter(spec.schedule.cron, after.astimezone(zone)).get_next(datetime)
        return f"{at.astimezone(UTC):%Y-%m-%d %H:%M} UTC"
    snapshot = after.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    return f"after the {snapshot:%Y-%m-%d %H:%M} UTC features snapshot"


def tell_waiting(waiting: list[Waiting], specs: dict[str, CampaignSpec], now: datetime) -> None:
    total = sum(w.emails for w in waiting)
    if not total:
        return
    first = min(w.opens_at for w in waiting)
    runs = "; ".join(
        f"{w.campaign_id} {w.emails:,}, next run {next_run(spec, max(now, w.opens_at))}"
        for w in waiting
        if (spec := specs.get(w.campaign_id)) is not None
    )
    say(
        f"{total:,} emails are still waiting for their customers' local send window (the "
        f"earliest opening: {first:%Y-%m-%d %H:%M} UTC). With the campaigns unpaused in Airflow, "
        f"the first run inside each window sends them: {runs}."
    )


def seeded_as_of(engine: Engine) -> datetime:
    """The seeded data's "now": the newest signup (the seeder never generates the future)."""
    with engine.connect() as conn:
        newest = conn.execute(select(func.max(schema.customers.c.signup_at))).scalar_one()
    return newest.replace(second=0, microsecond=0)


def run_campaign(
    engine: Engine,
    spec: CampaignSpec,
    settings: Settings,
    conf: dict[str, object],
    env: dict[str, str],
    logs: Path,
) -> CampaignOutcome:
    before = last_run_id(engine)
    print(f"      {spec.dag_id} ...", end="", flush=True)
    seconds = dags_test(spec.dag_id, conf, env, logs)
    print(f" done in {seconds:.0f}s", flush=True)
    outbox = settings.outbox_dir / spec.id
    emls = sum(1 for _ in outbox.glob("**/*.eml")) if outbox.exists() else 0
    return CampaignOutcome(spec.id, run_counts_since(engine, spec.id, before), emls, seconds)


def table(outcomes: list[CampaignOutcome]) -> Table:
    """Per campaign: planned, sent, waiting, failed, skipped by reason; wraps within WIDTH."""
    grid = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    grid.add_column("campaign")
    for name in ("planned", "sent", "waiting", "failed"):
        grid.add_column(name, justify="right")
    grid.add_column("skipped (why)", ratio=1)
    grid.add_column(".eml", justify="right")
    for outcome in outcomes:
        counts = outcome.counts
        skipped = counts.get("skipped") or {}
        why = ", ".join(f"{reason} {n:,}" for reason, n in sorted(skipped.items())) or "-"
        grid.add_row(
            outcome.campaign_id,
            f"{counts.get('planned', 0):,}",
            f"{counts.get('sent', 0):,}",
            f"{counts.get('waiting', 0):,}",
            f"{int(counts.get('failed', 0)) + int(counts.get('unknown', 0)):,}",
            why,
            f"{outcome.eml_files:,}",
        )
    return grid


def report(
    outcomes: list[CampaignOutcome], already_sent: int, settings: Settings, logs: Path
) -> None:
    sent_now = sum(int(o.counts.get("sent", 0)) for o in outcomes)
    print()
    if sent_now == 0 and already_sent:
        say(
            f"Nothing new was sent: the {already_sent:,} emails of these audiences were already "
            "sent by an earlier run. The send ledger holds one row per campaign, occurrence and "
            "customer, so running again never sends the same email twice."
        )
    else:
        print(f"Sent {sent_now:,} emails this time (outbox transport: written, not mailed).")
    print(f"The .eml files are in {settings.outbox_dir}/<campaign>/; task logs in {logs}/.")


def step(number: str, text: str) -> None:
    print(f"[{number}] {text}", flush=True)


def say(text: str) -> None:
    """A paragraph of the demo's story, wrapped to WIDTH."""
    OUT.print(text, highlight=False, markup=False)


@contextmanager
def working(text: str) -> Iterator[None]:
    """A spinner on stderr while a long step runs, only on a terminal."""
    err = Console(stderr=True)
    if not err.is_terminal:
        yield
        return
    with err.status(text):
        yield


OUT = Console(width=WIDTH, highlight=False)


def main() -> int:
    settings = load_settings(transport="outbox")
    airflow_home = Path(os.environ.get("AIRFLOW_HOME") or settings.home / "airflow")
    customers = int(os.environ.get("LIFECYCLE_DEMO_CUSTOMERS", DEMO_CUSTOMERS))
    try:
        return run_demo(settings, airflow_home, customers)
    except DemoError as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
