"""The Airflow side of Lifecycle: connections in, one DAG per campaign spec out.

This is the only engine module that imports Airflow. It reads like a small provider:
`runtime_settings()` turns the connections `lifecycle_warehouse` and `sendgrid_default` into
`Settings` (at task run time, never while parsing), and `build_campaign_dag()` /
`build_features_dag()` wrap the engine's pipeline steps as thin tasks. Parsing only reads the
YAML specs: the pipeline, the warehouse and pandas are imported inside the tasks.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pendulum
from airflow.sdk import (
    DAG,
    Asset,
    AssetOrTimeSchedule,
    BaseHook,
    BaseNotifier,
    Connection,
    CronTriggerTimetable,
    Param,
    TriggerRule,
    dag,
    get_current_context,
    task,
)
from airflow.sdk.exceptions import (
    AirflowFailException,
    AirflowNotFoundException,
    AirflowSkipException,
)

from lifecycle.core.campaigns import CampaignSpec
from lifecycle.core.config import Settings, load_settings

log = logging.getLogger(__name__)

WAREHOUSE_CONN_ID = "lifecycle_warehouse"
SENDGRID_CONN_ID = "sendgrid_default"
FEATURES_ASSET = Asset(name="customer_features", uri="lifecycle://customer_features")
FEATURES_CRON = "0 * * * *"
START_DATE = pendulum.datetime(2026, 1, 1, tz="UTC")
TRIGGER_OPTIONS = ("dry_run", "limit", "as_of", "test_recipients")
EMAIL_PATTERN = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"
AS_OF_PATTERN = r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?)?$"


class TriggerOptionError(ValueError):
    """Trigger options (the run's conf) that cannot be used; the message says what to fix."""


@contextmanager
def fail_fast(*problems: type[Exception]) -> Iterator[None]:
    """Problems a retry cannot fix (a bad option, template or API key) fail the task at once,
    with their message, instead of being retried with backoff."""
    try:
        yield
    except problems as exc:
        raise AirflowFailException(f"{type(exc).__name__}: {exc}") from None


def campaign_asset(campaign_id: str) -> Asset:
    return Asset(name=f"campaign_{campaign_id}", uri=f"lifecycle://campaigns/{campaign_id}")


# --- connections --------------------------------------------------------------------------
def runtime_settings() -> Settings:
    """Settings for a task: `LIFECYCLE_*` variables, overridden by the Airflow connections.

    `lifecycle_warehouse`: a postgres or sqlite connection (or any SQLAlchemy URL in the
    extra field `sqlalchemy_url`). `sendgrid_default`: the API key in the password field, as
    Airflow's SendGrid provider expects; an optional host points at another API endpoint.
    Either connection may be absent; then the environment (or the embedded default) applies.
    """
    overrides: dict[str, object] = {}
    if (conn := _optional_connection(WAREHOUSE_CONN_ID)) is not None:
        overrides["warehouse_url"] = warehouse_url(conn)
    if (conn := _optional_connection(SENDGRID_CONN_ID)) is not None:
        if conn.password:
            overrides["sendgrid_api_key"] = conn.password
        if conn.host:
            overrides["sendgrid_host"] = sendgrid_host(conn)
    return load_settings(**overrides)


def _optional_connection(conn_id: str) -> Connection | None:
    try:
        return BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        return None


def warehouse_url(conn: Connection) -> str:
    """The SQLAlchemy URL of a `lifecycle_warehouse` connection."""
    from sqlalchemy.engine import URL

    if url := conn.extra_dejson.get("sqlalchemy_url"):
        return str(url)
    if conn.conn_type in ("postgres", "postgresql"):
        return URL.create(
            "postgresql+psycopg",
            username=conn.login or None,
            password=conn.password or None,
            host=conn.host or None,
            port=conn.port or None,
            database=conn.schema or None,
        ).render_as_string(hide_password=False)
    if conn.conn_type == "sqlite" and (conn.host or conn.schema):
        # The SQLite provider keeps the file path in host; the URI form puts it in schema.
        return f"sqlite:///{conn.host or conn.schema}"
    raise ValueError(
        f"connection {WAREHOUSE_CONN_ID!r} (type {conn.conn_type!r}) names no database: use a "
        "postgres connection, a sqlite one with the file path as host, "
        "or put a SQLAlchemy URL in its extra field 'sqlalchemy_url'"
    )


def sendgrid_host(conn: Connection) -> str:
    host = conn.host.rstrip("/")
    if "://" not in host:
        host = f"{conn.schema or 'https'}://{host}"
    return f"{host}:{conn.port}" if conn.port else host


# --- run options --------------------------------------------------------------------------
@dataclass(frozen=True)
class TriggerOptions:
    dry_run: bool = False
    limit: int | None = None
    as_of: datetime | None = None
    test_recipients: tuple[str, ...] = ()


def trigger_options(params: Mapping[str, Any], conf: Mapping[str, Any] | None) -> TriggerOptions:
    """The validated trigger form. Unknown keys are refused: a typo such as `dryrun` must not
    turn a rehearsal into a real send."""
    unknown = sorted(set(conf or {}) - set(TRIGGER_OPTIONS))
    if unknown:
        raise TriggerOptionError(
            f"unknown trigger option(s) {', '.join(unknown)}; "
            f"the options are: {', '.join(TRIGGER_OPTIONS)}"
        )
    limit = params.get("limit")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise TriggerOptionError(f"limit must be a whole number of at least 1, got {limit!r}")
    recipients = tuple(params.get("test_recipients") or ())
    for address in recipients:
        if not isinstance(address, str) or "@" not in address.strip("@"):
            raise TriggerOptionError(f"test recipient {address!r} is not an email address")
    return TriggerOptions(
        dry_run=bool(params.get("dry_run")),
        limit=limit,
        as_of=parse_as_of(params.get("as_of")),
        test_recipients=recipients,
    )


def parse_as_of(value: str | None) -> datetime | None:
    """An ISO date or date-time; a value without timezone is UTC."""
    if value in (None, ""):
        return None
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise TriggerOptionError(
            f"as_of {value!r} is not a date-time; write it like 2026-11-24T09:00:00Z"
        ) from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def resolve_as_of(
    options: TriggerOptions, feature_events: Iterable[Mapping[str, Any]], scheduled_for: datetime
) -> datetime:
    """The run's as-of: the trigger form's value, else the newest features snapshot that
    triggered the run, else the time the run was scheduled for."""
    if options.as_of is not None:
        return options.as_of
    snapshots = [parse_as_of(extra["as_of"]) for extra in feature_events if extra.get("as_of")]
    if snapshots:
        return max(s for s in snapshots if s is not None)
    return scheduled_for.astimezone(UTC)


def _context_as_of(context: Mapping[str, Any], options: TriggerOptions) -> datetime:
    events = context.get("triggering_asset_events") or {}
    feature_events = [
        event.extra or {}
        for asset in events
        if getattr(asset, "uri", None) == FEATURES_ASSET.uri
        for event in events[asset]
    ]
    scheduled_for = context.get("data_interval_end") or context["dag_run"].run_after
    as_of = resolve_as_of(options, feature_events, scheduled_for)
    source = (
        "the trigger form"
        if options.as_of
        else f"{len(feature_events)} features snapshot event(s)"
        if feature_events
        else "the scheduled time"
    )
    log.info("run as of %s, from %s", as_of.isoformat(), source)
    return as_of


def _options(context: Mapping[str, Any]) -> TriggerOptions:
    return trigger_options(context["params"], context["dag_run"].conf)


def _engine(settings: Settings):  # type: ignore[no-untyped-def]
    from lifecycle.store import warehouse

    return warehouse.engine_for(settings.warehouse_url)


# --- failure notifier ---------------------------------------------------------------------
class CampaignFailureNotifier(BaseNotifier):
    """Logs one clear summary when a task has failed for good (no network, no secrets)."""

    template_fields = ()

    def __init__(self, campaign_id: str) -> None:
        super().__init__()
        self.campaign_id = campaign_id

    def notify(self, context: Mapping[str, Any]) -> None:
        ti = context["ti"]
        error = context.get("exception")
        log.error(
            "Campaign %s: task %s%s failed for good in run %s after %s tries: %s. "
            "Rows already sent stay sent and are never re-sent automatically; fix the cause, "
            "then trigger a new run, which takes over what is left inside each customer's send "
            "window (clearing the failed task replays the run at its original as-of).",
            self.campaign_id,
            ti.task_id,
            f"[{ti.map_index}]" if ti.map_index >= 0 else "",
            ti.run_id,
            ti.try_number,
            f"{type(error).__name__}: {error}" if error else "no exception recorded",
        )


# --- DAGs ---------------------------------------------------------------------------------
def schedule_for(spec: CampaignSpec) -> object:
    cron = (
        CronTriggerTimetable(spec.schedule.cron, timezone=spec.schedule.timezone)
        if spec.schedule.cron
        else None
    )
    if cron is not None and spec.schedule.after_features:
        return AssetOrTimeSchedule(timetable=cron, assets=[FEATURES_ASSET])
    if cron is not None:
        return cron
    if spec.schedule.after_features:
        return [FEATURES_ASSET]
    return None


def trigger_params(spec: CampaignSpec) -> dict[str, Param]:
    return {
        "dry_run": Param(
            False,
            type="boolean",
            title="Dry run",
            description_md=(
                "Plan the audience and render every email, but **send nothing** and issue no "
                "coupon. The counts, and any email that does not render, are in the plan task's "
                "log and on the run's row in `campaign_runs`."
            ),
        ),
        "limit": Param(
            None,
            type=["null", "integer"],
            minimum=1,
            title="Limit",
            description_md=(
                "Send to at most this many new customers in this run (leave empty for "
                "everyone). The rest, and emails waiting from earlier runs, go out with the next "
                "run without a limit."
            ),
        ),
        "as_of": Param(
            None,
            type=["null", "string"],
            format="date-time",
            pattern=AS_OF_PATTERN,
            title="As of",
            description_md=(
                "Pretend it is this moment (UTC unless you give an offset), e.g. "
                "`2026-11-24T09:00:00Z`: it decides whose birthday it is, who lapsed, and "
                "the local send window. Leave empty for the scheduled time."
            ),
        ),
        "test_recipients": Param(
            [],
            type="array",
            items={"type": "string", "format": "email", "pattern": EMAIL_PATTERN},
            maxItems=10,
            title="Test recipients",
            description_md=(
                f"Send a few real {spec.id} emails (rendered for real customers) **only to these "
                "internal addresses**, one per line. No customer gets anything; the test sends "
                "are recorded apart from real sends. Leave empty for a normal run."
            ),
        ),
    }


def describe(spec: CampaignSpec) -> str:
    """The DAG's doc_md: what it sends, to whom, how often, under which rules."""
    schedule = spec.schedule
    when = []
    if schedule.cron:
        when.append(f"on cron `{schedule.cron}` ({schedule.timezone})")
    if schedule.after_features:
        when.append("after each fresh `customer_features` snapshot")
    policies, delivery = spec.policies, spec.delivery
    rules = [
        "only customers with marketing consent"
        if policies.requires_consent
        else "consent not required",
        "never twice for the same "
        f"`{spec.occurrence_key}` (the ledger is unique per customer and occurrence)",
    ]
    if policies.frequency_cap:
        cap = policies.frequency_cap
        rules.append(f"at most {cap.max_emails} marketing emails per {cap.days} days")
    if policies.send_window:
        window = policies.send_window
        rules.append(f"delivered {window.start:%H:%M}–{window.end:%H:%M} customer local time")
    if policies.holdout_percent:
        rules.append(f"{policies.holdout_percent:g}% held out as a control group")
    if isinstance(spec.segment, str):
        segment = f"`{spec.segment}`"
    else:
        params = ", ".join(f"{k}={v}" for k, v in (spec.segment.get("params") or {}).items())
        segment = f"`{spec.segment.get('use', 'inline')}`" + (f" ({params})" if params else "")
    lines = [
        f"# Campaign `{spec.id}`",
        "",
        spec.description,
        "",
        f"* **To whom**: segment {segment}",
        f"* **What**: template `{spec.template}` (default locale {spec.default_locale}), "
        f"from {spec.sender.email}",
        f"* **When**: {' and '.join(when) or 'only when triggered by hand'}",
        f"* **Owner**: {spec.owner}",
        *(f"* {rule}" for rule in rules),
        f"* **Delivery**: batches of {delivery.batch_size}, {delivery.max_active_batches} at "
        f"a time, {delivery.rate_per_second:g} emails/s",
    ]
    if spec.coupon:
        lines.append(
            f"* **Coupon**: {spec.coupon.discount_percent:g}% off, valid "
            f"{spec.coupon.valid_days} days"
        )
    lines += [
        "",
        "Trigger with options to rehearse: **Dry run** sends nothing, **Test recipients** "
        "sends only to internal addresses, **Limit** caps the run, **As of** replays a moment.",
        "",
        f"Spec: `include/campaigns/{spec.id}.yaml`",
    ]
    return "\n".join(lines)


def _render_problem(errors: int, planned: int, examples: list[str]) -> str:
    return f"dry run: {errors:,} of {planned:,} emails do not render: " + "; ".join(examples)


def _run_problem(campaign_id: str, counts: Mapping[str, Any]) -> str:
    """What went wrong with a finalized run, and what a person should do about it."""
    if counts.get("dry_run"):
        return _render_problem(
            counts["render_errors"], counts["planned"], counts["render_error_examples"]
        )
    problems = []
    if counts.get("stopped"):
        problems.append(
            f"run stopped, nothing more was sent: {counts['stopped']}. Fix it, then trigger a "
            "new run: it takes over the emails left, inside each customer's send window"
        )
    elif counts["pending"]:
        problems.append(
            f"{counts['pending']:,} due emails were not delivered because a delivery task "
            "failed: trigger a new run (it takes them over inside each customer's send window), "
            "or clear the failed deliver tasks and finalize right away"
        )
    if counts["unknown"]:
        problems.append(
            f"{counts['unknown']:,} emails may or may not have reached SendGrid and are not "
            "resent automatically: check SendGrid's activity, then `lifecycle requeue-unknown "
            f"{campaign_id}` for the ones that never arrived"
        )
    if counts["failed"] and not counts["sent"]:
        problems.append(f"all {counts['failed']:,} emails failed (see the ledger's errors)")
    return "; ".join(problems)


def build_campaign_dag(spec: CampaignSpec) -> DAG:
    """`campaign_<id>`: preflight → plan → deliver (mapped over ledger batches) → finalize."""
    asset = campaign_asset(spec.id)
    default_args = {
        "owner": spec.owner,
        "retries": 3,
        "retry_delay": timedelta(seconds=30),
        "retry_exponential_backoff": True,
        "max_retry_delay": timedelta(minutes=10),
        "on_failure_callback": [CampaignFailureNotifier(spec.id)],
    }

    @dag(
        dag_id=spec.dag_id,
        description=spec.description[:200],
        doc_md=describe(spec),
        schedule=schedule_for(spec),
        start_date=START_DATE,
        catchup=False,
        max_active_runs=1,
        tags=["lifecycle", "campaign", *spec.tags],
        params=trigger_params(spec),
        default_args=default_args,
    )
    def campaign() -> None:
        @task
        def preflight() -> str:
            """Spec, templates, warehouse and credentials are ready; fixes the run's as-of."""
            from lifecycle.run import pipeline

            context = get_current_context()
            # ValueError here is configuration: a bad as-of or warehouse connection.
            with fail_fast(pipeline.PreflightError, ValueError):
                options = _options(context)
                as_of = _context_as_of(context, options)
                settings = runtime_settings()
                pipeline.preflight(_engine(settings), spec, settings, as_of=as_of)
            return as_of.isoformat()

        @task
        def plan(as_of: str) -> list[dict[str, int]]:
            """Write the ledger (planned / skipped and why); return the batches to deliver.

            The campaign run id and the counts go to their own XComs: only the batch list is
            mapped over.
            """
            from lifecycle.run import pipeline

            context = get_current_context()
            options = _options(context)
            settings = runtime_settings()
            engine = _engine(settings)
            ti = context["ti"]
            if options.test_recipients:
                sent = pipeline.send_tests(
                    engine,
                    spec,
                    settings,
                    run_key=context["run_id"],
                    as_of=datetime.fromisoformat(as_of),
                    recipients=list(options.test_recipients),
                    limit=options.limit or 3,
                )
                log.info("sent %d test emails to the test recipients; no customer got one", sent)
                ti.xcom_push(key="test_sends", value=sent)
                return []
            result = pipeline.plan(
                engine,
                spec,
                settings,
                run_key=context["run_id"],
                as_of=datetime.fromisoformat(as_of),
                dry_run=options.dry_run,
                limit=options.limit,
            )
            log.info("planned %d emails; skipped %s", result.planned, result.skipped or "none")
            ti.xcom_push(key="campaign_run_id", value=result.run_id)
            ti.xcom_push(key="planned", value=result.planned)
            ti.xcom_push(key="skipped", value=result.skipped)
            ti.xcom_push(key="waiting", value=result.waiting)
            if result.render_errors:
                raise AirflowFailException(
                    _render_problem(
                        result.render_errors, result.planned, result.render_error_examples
                    )
                )
            return [batch.to_dict() for batch in result.batches]

        @task(
            map_index_template="{{ batch_label }}",
            max_active_tis_per_dagrun=spec.delivery.max_active_batches,
        )
        def deliver(campaign_run_id: int, batch: dict[str, int]) -> dict[str, Any]:
            """Render and send one ledger batch; rows are claimed, so a retry never re-sends."""
            from lifecycle.delivery import DeliveryStopped
            from lifecycle.run import pipeline

            context = get_current_context()
            bounds = pipeline.Batch.from_dict(batch)
            context["batch_label"] = (  # type: ignore[typeddict-unknown-key]
                f"rows {bounds.first_id}–{bounds.last_id} ({bounds.size})"
            )
            ti = context["ti"]
            settings = runtime_settings()
            with fail_fast(DeliveryStopped):  # SendGrid refused the API key: stop, do not retry
                result = pipeline.deliver(
                    _engine(settings),
                    spec,
                    settings,
                    run_id=campaign_run_id,
                    batch=bounds,
                    attempt=f"{ti.dag_id}/{ti.run_id}/{ti.map_index}/try{ti.try_number}",
                )
            return result.to_dict()

        @task(trigger_rule=TriggerRule.ALL_DONE, outlets=[asset])
        def finalize(as_of: str) -> dict[str, Any]:
            """Count outcomes onto the campaign run row and announce them as an Asset event.

            Runs even when a delivery task failed, so the run's record is never left behind;
            it then fails itself, so the DAG run is failed and no Asset event is sent.
            """
            from lifecycle.run import pipeline

            context = get_current_context()
            ti = context["ti"]
            run_id = ti.xcom_pull(task_ids="plan", key="campaign_run_id")
            settings = runtime_settings()
            if run_id is None:
                if ti.xcom_pull(task_ids="plan", key="test_sends") is not None:
                    raise AirflowSkipException("test send only: no campaign run to finalize")
                pipeline.abandon(_engine(settings), spec, run_key=context["run_id"])
                raise AirflowFailException("an earlier task failed (see preflight or plan)")
            counts = pipeline.finalize(_engine(settings), spec, run_id=run_id)
            if counts.pop("status") != "success":
                raise AirflowFailException(_run_problem(spec.id, counts))
            context["outlet_events"][asset].extra = {
                "campaign_id": spec.id,
                "run_id": run_id,
                "as_of": as_of,
                "dry_run": _options(context).dry_run,
                "counts": counts,
            }
            return counts

        as_of = preflight()
        batches = plan(as_of)
        run_id = batches.operator.output["campaign_run_id"]
        delivered = deliver.partial(campaign_run_id=run_id).expand(batch=batches)
        delivered >> finalize(as_of)

    return campaign()


def build_features_dag(cron: str = FEATURES_CRON) -> DAG:
    """`customer_features`: materialize the features snapshot, announce it as an Asset event."""

    @dag(
        dag_id="customer_features",
        description="Recompute customer features from the warehouse for the campaigns.",
        doc_md=(
            "# customer_features\n\nRecomputes the per-customer features every campaign "
            f"segment reads (cron `{cron}`, UTC) and emits the `{FEATURES_ASSET.uri}` Asset "
            "with `as_of` and `row_count`. Campaigns scheduled `after_features` run on it "
            "and use its `as_of`."
        ),
        schedule=CronTriggerTimetable(cron, timezone="UTC"),
        start_date=START_DATE,
        catchup=False,
        max_active_runs=1,
        tags=["lifecycle", "features"],
        params={
            "as_of": Param(
                None,
                type=["null", "string"],
                format="date-time",
                pattern=AS_OF_PATTERN,
                title="As of",
                description_md="Compute the features as of this moment (default: now).",
            )
        },
        default_args={
            "owner": "data",
            "retries": 2,
            "retry_delay": timedelta(minutes=1),
            "retry_exponential_backoff": True,
        },
    )
    def customer_features() -> None:
        @task(outlets=[FEATURES_ASSET])
        def materialize() -> dict[str, Any]:
            from lifecycle.core import features

            context = get_current_context()
            as_of = parse_as_of(context["params"].get("as_of")) or (
                context.get("data_interval_end") or context["dag_run"].run_after
            ).astimezone(UTC)
            settings = runtime_settings()
            snapshot = features.materialize(_engine(settings), as_of, settings)
            extra = {
                "as_of": snapshot.as_of.isoformat(),
                "row_count": snapshot.row_count,
                "warnings": dict(snapshot.warnings),
            }
            context["outlet_events"][FEATURES_ASSET].extra = extra
            return extra

        materialize()

    return customer_features()
