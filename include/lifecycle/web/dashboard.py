"""The leadership dashboard: what each campaign did for retention, on one page.

The Airflow plugin mounts it at /campaigns behind Airflow's own login (the "Campaigns" entry
in Airflow's navigation shows it in an iframe): the login is a dependency the plugin passes in,
this module knows nothing of Airflow. Without Airflow, for local previews and without login:
`uvicorn --factory lifecycle.web.dashboard:local_app`.

Routes (relative to the mount point): `/` the page, `/report.json`, and CSV exports
`/export/runs.csv`, `/export/retention.csv`, `/export/cohorts.csv`, `/export/variants.csv`.
Every route takes `campaign` (one campaign only) and `days` (conversion window, default 7).
`/runs/{id}/preview` renders the first emails of a planned run (the approver's link).
"""

from __future__ import annotations

import logging
import pathlib
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import FastAPI, Path, Query, Request, params
from fastapi.responses import HTMLResponse, PlainTextResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape
from sqlalchemy import Engine

from lifecycle.core.config import Settings, load_settings
from lifecycle.reporting import export, queries
from lifecycle.reporting.performance import Performance
from lifecycle.reporting.report import Report, build_report
from lifecycle.store import warehouse
from lifecycle.store.unknown import UnknownStates
from lifecycle.web import charts, previews
from lifecycle.web.settings import SettingsSource, provider

log = logging.getLogger(__name__)
PAGES = pathlib.Path(__file__).with_name("static")
CACHE_SECONDS = 60
CURRENCY_SYMBOLS = {"USD": "$", "EUR": "€", "GBP": "£", "AMD": "֏", "GEL": "₾"}
EXPORTS: dict[str, Callable[[Report], str]] = {
    "runs": export.runs_csv,
    "retention": export.retention_csv,
    "cohorts": export.cohorts_csv,
    "variants": export.variants_csv,
    "surveys": export.surveys_csv,
}
STEP_LABELS = {
    "audience": "Audience",
    "planned": "Passed the policies",
    "waiting": "Waiting for the send window",
    "sent": "Sent",
    "delivered": "Delivered",
    "opened": "Opened",
    "clicked": "Clicked",
}
PROBLEM_LABELS = {
    "failed": "Failed to send",
    "unknown": "Fate unknown",
    "bounced": "Bounced",
    "unsubscribed": "Unsubscribed",
    "spam_reports": "Marked as spam",
}
UNKNOWN_LABELS = {
    "resolved": "resolved as sent by SendGrid's events",
    "awaiting_events": "awaiting events",
    "requeueable": "requeue-able (no event)",
}

# Query parameters every route takes (module level: FastAPI resolves them by name).
Campaign = Annotated[str | None, Query(max_length=64, pattern=r"^[a-z][a-z0-9_]*$")]
Days = Annotated[int, Query(ge=1, le=90, description="conversion window in days")]


def create_app(
    settings: SettingsSource,
    *,
    dependencies: Sequence[params.Depends],
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> FastAPI:
    """The dashboard app. A `settings` provider is asked again on each request. Every route
    runs behind `dependencies`: the login of whoever mounts the app (none: an empty list)."""
    current_settings = provider(settings)
    app = FastAPI(
        title="Lifecycle campaigns", docs_url=None, redoc_url=None, dependencies=dependencies
    )
    pages = Environment(loader=FileSystemLoader(PAGES), autoescape=select_autoescape(default=True))
    pages.filters.update(number=_number, percent=_percent, money=_money, points=_points)

    recent: dict[tuple[str | None, int], tuple[float, Report]] = {}

    def engine_and_settings() -> tuple[Engine, Settings]:
        current = current_settings()
        return warehouse.engine_for(current.warehouse_url), current

    def report(campaign: str | None, days: int) -> Report:
        """Built at most once a minute per view: a large warehouse takes seconds."""
        cached = recent.get((campaign, days))
        if cached and time.monotonic() - cached[0] < CACHE_SECONDS:
            return cached[1]
        engine, current = engine_and_settings()
        built = build_report(
            engine, current, as_of=clock(), campaign_id=campaign, conversion_days=days
        )
        recent[(campaign, days)] = (time.monotonic(), built)
        return built

    @app.exception_handler(queries.ReportError)
    def report_error(request: Request, exc: queries.ReportError) -> PlainTextResponse:
        log.error("campaign report failed: %s", exc)
        return PlainTextResponse(f"The report cannot be computed: {exc}", status_code=500)

    @app.get("/", response_class=HTMLResponse)
    def page(campaign: Campaign = None, days: Days = 7) -> HTMLResponse:
        shown = report(campaign, days)
        html = pages.get_template("dashboard.html").render(
            **view(shown),
            campaigns=queries.campaign_ids(engine_and_settings()[0]),
            selected=campaign,
        )
        return HTMLResponse(html)

    @app.get("/report.json")
    def report_json(campaign: Campaign = None, days: Days = 7) -> dict[str, Any]:
        return report(campaign, days).to_dict()

    @app.get("/export/{name}.csv")
    def export(name: str, campaign: Campaign = None, days: Days = 7) -> Response:
        if name not in EXPORTS:
            return Response(f"unknown export {name!r}; use one of {sorted(EXPORTS)}", 404)
        body = EXPORTS[name](report(campaign, days))
        stamp = f"{clock():%Y%m%d}"
        headers = {"Content-Disposition": f'attachment; filename="lifecycle-{name}-{stamp}.csv"'}
        return Response(body, media_type="text/csv; charset=utf-8", headers=headers)

    @app.get("/runs/{run_id}/preview", response_class=HTMLResponse)
    def run_preview(run_id: Annotated[int, Path(ge=1)]) -> HTMLResponse:
        """The first emails a planned run would send, rendered (linked from its approval)."""
        engine, current = engine_and_settings()
        try:
            run, emails = previews.run_emails(engine, current, run_id)
        except LookupError as exc:
            return HTMLResponse(str(exc), status_code=404)
        html = pages.get_template("run_preview.html").render(
            campaign=run.campaign_id, run_id=run_id, status=run.status, emails=emails
        )
        return HTMLResponse(html)

    return app


def local_app() -> FastAPI:
    """For `uvicorn --factory`: the dashboard without Airflow's login, on the local warehouse."""
    return create_app(load_settings(), dependencies=[])


# --- the page's data ----------------------------------------------------------------------
def view(report: Report) -> dict[str, Any]:
    """Everything the template shows, already computed."""
    total = report.total
    symbol = CURRENCY_SYMBOLS.get(report.currency or "USD", f"{report.currency} ")
    last_month = report.months[-1] if report.months else None
    return {
        "report": report,
        "symbol": symbol,
        "total": total,
        "last_month": last_month,
        "funnels": [_funnel(c.campaign_id, c.performance, c.unknown) for c in report.campaigns],
        "uplifts": [
            (c.campaign_id, c.performance.uplift)
            for c in report.campaigns
            if c.performance.uplift.interval is not None
        ],
        "uplift_chart": _uplift_chart(report),
        "experiments": [c.experiment for c in report.campaigns if c.experiment is not None],
        "activity_chart": charts.line_chart(
            "Emails per day",
            [f"{d.day:%b %d}" for d in report.days],
            {
                "Sent": [d.sent for d in report.days],
                "Opened": [d.opened for d in report.days],
                "Clicked": [d.clicked for d in report.days],
            },
        ),
        "retention_chart": charts.line_chart(
            "Retention by month",
            [f"{m.month:%b %y}" for m in report.months],
            {
                "Customer retention rate": [m.crr for m in report.months],
                "Churn rate": [m.churn_rate for m in report.months],
                "Repeat purchase rate": [m.repeat_purchase_rate for m in report.months],
            },
            fmt=lambda v: f"{v:.0f}%",
        ),
        "revenue_chart": charts.bar_chart(
            "Revenue by month",
            [f"{m.month:%b %y}" for m in report.months],
            {"Revenue": [m.revenue for m in report.months]},
            fmt=lambda v: _compact_money(v, symbol),
        ),
        "ltv_chart": charts.bar_chart(
            "Average lifetime value by signup month",
            [f"{c.cohort:%b %y}" for c in report.cohorts[-18:]],
            {"Average lifetime value": [c.average_ltv for c in report.cohorts[-18:]]},
            fmt=lambda v: _compact_money(v, symbol),
        ),
        "recent_runs": report.runs[:25],
    }


def _funnel(campaign_id: str, perf: Performance, unknown: UnknownStates) -> dict[str, Any]:
    top = perf.funnel["audience"] or 1
    steps = [
        {
            "key": key,
            "label": label,
            "count": perf.funnel[key],
            "share": perf.funnel[key] / top,
        }
        for key, label in STEP_LABELS.items()
    ]
    problems = [
        {"key": key, "label": label, "count": perf.funnel[key]}
        for key, label in PROBLEM_LABELS.items()
    ]
    return {
        "campaign_id": campaign_id,
        "steps": steps,
        "problems": problems,
        "skipped": sorted(perf.skipped.items(), key=lambda item: -item[1]),
        # sends once of unknown fate, by what became of them (empty when there were none)
        "unknown": [
            {"key": key, "label": label, "count": getattr(unknown, key)}
            for key, label in UNKNOWN_LABELS.items()
        ]
        if unknown.resolved or unknown.unresolved
        else [],
        "conversions": perf.conversions,
        "revenue": perf.revenue,
    }


def _uplift_chart(report: Report) -> charts.Markup | None:
    rows = []
    for campaign in report.campaigns:
        uplift = campaign.performance.uplift
        if uplift.interval is not None and uplift.difference is not None:
            rows.append((campaign.campaign_id, uplift.difference, *uplift.interval))
    return charts.interval_chart(rows) if rows else None


# --- formatting ---------------------------------------------------------------------------
def _number(value: float | None) -> str:
    return "—" if value is None else f"{value:,.0f}"


def _percent(value: float | None, digits: int = 1) -> str:
    """A proportion (0.25) as '25.0%'."""
    return "—" if value is None else f"{value * 100:.{digits}f}%"


def _money(value: float | None, symbol: str = "$") -> str:
    if value is None:
        return "—"
    return f"{symbol}{value:,.2f}" if value < 10_000 else f"{symbol}{value:,.0f}"


def _compact_money(value: float, symbol: str) -> str:
    return f"{symbol}{value / 1000:,.0f}k" if value >= 10_000 else f"{symbol}{value:,.0f}"


def _points(value: float | None) -> str:
    """A difference of proportions as percentage points."""
    return "—" if value is None else f"{value * 100:+.1f} pts"
