"""The trigger form of a campaign DAG, and the run options and as-of read from it.

Airflow validates the form against the Params' JSON schema before a run exists; the tasks
check the options again (`trigger_options`) with messages that say what to fix, and refuse
unknown keys.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from airflow.sdk import Param

from lifecycle.airflow.schedules import FEATURES_ASSET
from lifecycle.core.campaigns import CampaignSpec

log = logging.getLogger(__name__)

TRIGGER_OPTIONS = ("dry_run", "limit", "as_of", "test_recipients")
EMAIL_PATTERN = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"
AS_OF_PATTERN = r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?)?$"


class TriggerOptionError(ValueError):
    """Trigger options (the run's conf) that cannot be used; the message says what to fix."""


@dataclass(frozen=True)
class TriggerOptions:
    dry_run: bool = False
    limit: int | None = None
    as_of: datetime | None = None
    test_recipients: tuple[str, ...] = ()


# --- the form -----------------------------------------------------------------------------
def as_of_param(description_md: str) -> Param:
    """An optional ISO date-time, UTC unless it names an offset."""
    return Param(
        None,
        type=["null", "string"],
        format="date-time",
        pattern=AS_OF_PATTERN,
        title="As of",
        description_md=description_md,
    )


def trigger_params(spec: CampaignSpec) -> dict[str, Param]:
    return {
        "dry_run": Param(
            False,
            type=["boolean", "null"],
            title="Dry run",
            description_md=(
                "Plan the audience and render every email, but **send nothing** and issue no "
                "coupon. The counts, and any email that does not render, are in the plan task's "
                "log and on the run's row in `campaign_runs`.\n\n"
                f"{_status_note(spec)} **Unpause** (the tick box below, on by default) makes "
                "the schedule live: the scheduler then starts runs by itself, and a live "
                "campaign's runs email customers. Untick it to rehearse."
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
        "as_of": as_of_param(
            "Pretend it is this moment (UTC unless you give an offset), e.g. "
            "`2026-11-24T09:00:00Z`: it decides whose birthday it is, who lapsed, and "
            "the local send window. Leave empty for the scheduled time."
        ),
        "test_recipients": Param(
            [],
            type=["array", "null"],
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


def _status_note(spec: CampaignSpec) -> str:
    if spec.live:
        return "This campaign is **live**: without *Dry run* this run emails its audience."
    return (
        "This campaign is a **draft**: only a dry run or test recipients do anything "
        f"(set `status: live` in `{spec.spec_file}` to let it send)."
    )


# --- reading it back ----------------------------------------------------------------------
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


# --- inside a running task ----------------------------------------------------------------
def run_options(context: Mapping[str, Any]) -> TriggerOptions:
    """The options of the task's DAG run."""
    return trigger_options(context["params"], context["dag_run"].conf)


def scheduled_for(context: Mapping[str, Any]) -> datetime:
    """When the run was due: the end of its data interval, or `run_after` for runs without
    one (triggered through the API, or by an Asset)."""
    return context.get("data_interval_end") or context["dag_run"].run_after


def run_as_of(context: Mapping[str, Any], options: TriggerOptions) -> datetime:
    """`resolve_as_of` for the task's DAG run, logging where the as-of came from."""
    events = context.get("triggering_asset_events") or {}
    feature_events = [
        event.extra or {}
        for asset in events
        if getattr(asset, "uri", None) == FEATURES_ASSET.uri
        for event in events[asset]
    ]
    as_of = resolve_as_of(options, feature_events, scheduled_for(context))
    source = (
        "the trigger form"
        if options.as_of
        else f"{len(feature_events)} features snapshot event(s)"
        if feature_events
        else "the scheduled time"
    )
    log.info("run as of %s, from %s", as_of.isoformat(), source)
    return as_of
