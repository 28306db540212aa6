"""A report as CSV tables (runs, retention, cohorts, surveys) and as a plain-text summary.

The CSV columns are a contract with whoever downloads them (`lifecycle report --format csv`,
the dashboard's exports): change them only on purpose.
"""

from __future__ import annotations

import csv
import io

from lifecycle.reporting.performance import FUNNEL_STEPS, RULES
from lifecycle.reporting.report import Report
from lifecycle.reporting.statistics import Uplift
from lifecycle.reporting.variants import METRICS, Experiment

RUN_COLUMNS = ("campaign_id", "run_id", "run_key", "as_of", "status", *FUNNEL_STEPS)


def runs_csv(report: Report) -> str:
    """One row per run: funnel, skip reasons, conversions, revenue and uplift."""
    reasons = sorted({reason for run in report.runs for reason in run.performance.skipped})
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(
        [
            *RUN_COLUMNS,
            *(f"skipped_{reason}" for reason in reasons),
            "conversions",
            "revenue",
            "holdout",
            "holdout_converted",
            "uplift",
            "uplift_ci_low",
            "uplift_ci_high",
            *(f"conversions_{rule}" for rule in RULES),
        ]
    )
    for run in report.runs:
        perf = run.performance
        bounds = perf.uplift.interval
        writer.writerow(
            [
                run.campaign_id,
                run.run_id,
                run.run_key,
                run.as_of.isoformat(),
                run.status,
                *(perf.funnel[step] for step in FUNNEL_STEPS),
                *(perf.skipped.get(reason, 0) for reason in reasons),
                perf.conversions,
                f"{perf.revenue:.2f}",
                perf.uplift.holdout,
                perf.uplift.holdout_converted,
                _blank(perf.uplift.difference),
                _blank(bounds[0] if bounds else None),
                _blank(bounds[1] if bounds else None),
                *(perf.attribution[rule] for rule in RULES),
            ]
        )
    return buffer.getvalue()


def retention_csv(report: Report) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(
        [
            "month",
            "active_start",
            "active_end",
            "new_customers",
            "churned",
            "crr_percent",
            "churn_percent",
            "repeat_purchase_percent",
            "revenue",
        ]
    )
    for m in report.months:
        writer.writerow(
            [
                m.month.isoformat(),
                m.active_start,
                m.active_end,
                m.new_customers,
                m.churned,
                _blank(m.crr),
                _blank(m.churn_rate),
                _blank(m.repeat_purchase_rate),
                f"{m.revenue:.2f}",
            ]
        )
    return buffer.getvalue()


def cohorts_csv(report: Report) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["signup_month", "customers", "buyers", "revenue", "average_ltv"])
    for c in report.cohorts:
        writer.writerow(
            [
                c.cohort.isoformat(),
                c.customers,
                c.buyers,
                f"{c.revenue:.2f}",
                f"{c.average_ltv:.2f}",
            ]
        )
    return buffer.getvalue()


VARIANT_COLUMNS = (
    "campaign_id",
    "variant",
    "sent",
    "delivered",
    "opened",
    "open_rate",
    "clicked",
    "click_rate",
    "conversions",
    "conversion_rate",
    "conversion_ci_low",
    "conversion_ci_high",
    "revenue",
    "revenue_per_send",
    "revenue_per_send_ci_low",
    "revenue_per_send_ci_high",
    "difference_vs",
    "difference",
    "difference_ci_low",
    "difference_ci_high",
    "winner_opens",
    "winner_clicks",
    "winner_conversions",
    *(f"conversions_{rule}" for rule in RULES),  # conversions per attribution rule
)


def variants_csv(report: Report) -> str:
    """One row per variant of each A/B/n campaign: funnel, conversion and revenue with 95%
    intervals, the difference in conversion from the first variant, and the winner."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(VARIANT_COLUMNS)
    for campaign in report.campaigns:
        test = campaign.experiment
        if test is None:
            continue
        differences = {d.variant: d for d in test.differences}
        for v in test.variants:
            converted = v.proportion("converted")
            bounds = converted.interval
            revenue_ci = v.revenue_per_send_ci
            diff = differences.get(v.variant)
            diff_ci = diff.interval if diff else None
            writer.writerow(
                [
                    campaign.campaign_id,
                    v.variant,
                    v.sent,
                    v.steps["delivered"],
                    v.steps["opened"],
                    _blank(v.proportion("opened").rate),
                    v.steps["clicked"],
                    _blank(v.proportion("clicked").rate),
                    v.conversions,
                    _blank(converted.rate),
                    _blank(bounds[0] if bounds else None),
                    _blank(bounds[1] if bounds else None),
                    f"{v.revenue:.2f}",
                    _blank(v.revenue / v.sent if v.sent else None),
                    _blank(revenue_ci[0] if revenue_ci else None),
                    _blank(revenue_ci[1] if revenue_ci else None),
                    diff.baseline if diff else "",
                    _blank(diff.difference if diff else None),
                    _blank(diff_ci[0] if diff_ci else None),
                    _blank(diff_ci[1] if diff_ci else None),
                    *(
                        "yes" if test.verdicts[metric].winner == v.variant else ""
                        for metric in METRICS
                    ),
                    *(v.attribution[rule] for rule in RULES),
                ]
            )
    return buffer.getvalue()


def surveys_csv(report: Report) -> str:
    """One row per surveyed campaign and month of sending: response rate, NPS, scores."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(
        [
            "campaign_id",
            "month",
            "sent",
            "responses",
            "response_rate",
            "response_rate_ci_low",
            "response_rate_ci_high",
            "promoters",
            "passives",
            "detractors",
            "nps",
            "nps_ci_low",
            "nps_ci_high",
            *(f"score_{score}" for score in range(11)),
        ]
    )
    for m in report.surveys:
        rate, nps = m.response_rate_interval, m.nps_interval
        writer.writerow(
            [
                m.campaign_id,
                m.month.isoformat(),
                m.sent,
                m.responses,
                _blank(m.response_rate),
                _blank(rate[0] if rate else None),
                _blank(rate[1] if rate else None),
                m.promoters,
                m.passives,
                m.detractors,
                _blank(m.nps),
                _blank(nps[0] if nps else None),
                _blank(nps[1] if nps else None),
                *m.distribution,
            ]
        )
    return buffer.getvalue()


def _blank(value: object) -> object:
    if value is None:
        return ""
    return f"{value:.6f}" if isinstance(value, float) else value


def format_table(report: Report) -> str:
    """A plain-text summary for the terminal and the DAG log."""
    lines = [f"Report as of {report.as_of:%Y-%m-%d %H:%M} UTC"]
    if report.simulated_events:
        lines.append(
            f"NOTE: {report.simulated_events:,} engagement events are SIMULATED (demo data)."
        )
    if report.simulated_orders:
        lines.append(f"NOTE: {report.simulated_orders:,} orders are SIMULATED (demo data).")
    header = (
        f"{'campaign':<18}{'runs':>5}{'sent':>8}{'deliv':>8}{'opened':>8}{'clicked':>8}"
        f"{'bounce':>7}{'unsub':>6}{'spam':>5}{'conv':>6}{'revenue':>11}  uplift (95% CI)"
    )
    lines += ["", header, "-" * len(header)]
    for campaign in report.campaigns:
        f = campaign.performance.funnel
        perf = campaign.performance
        lines.append(
            f"{campaign.campaign_id:<18}{campaign.runs:>5}{f['sent']:>8,}{f['delivered']:>8,}"
            f"{f['opened']:>8,}{f['clicked']:>8,}{f['bounced']:>7,}{f['unsubscribed']:>6,}"
            f"{f['spam_reports']:>5,}{perf.conversions:>6,}{perf.revenue:>11,.2f}  "
            f"{describe_uplift(perf.uplift)}"
        )
        if perf.conversions:
            rules = ", ".join(f"{rule} {perf.attribution[rule]:,}" for rule in RULES)
            lines.append(f"{'':<18}conversions by rule: {rules}")
        if perf.skipped:
            reasons = ", ".join(f"{k} {v:,}" for k, v in sorted(perf.skipped.items()))
            lines.append(f"{'':<18}skipped: {reasons}")
        if campaign.experiment is not None:
            lines += _variant_lines(campaign.experiment)
    if report.months:
        lines += [
            "",
            f"{'month':<10}{'active':>9}{'new':>7}{'CRR %':>8}{'churn %':>9}{'repeat %':>9}",
        ]
        for m in report.months:
            lines.append(
                f"{m.month:%Y-%m}    {m.active_end:>9,}{m.new_customers:>7,}"
                f"{_pct(m.crr):>8}{_pct(m.churn_rate):>9}{_pct(m.repeat_purchase_rate):>9}"
            )
    if report.surveys:
        lines += [
            "",
            f"{'survey':<18}{'month':<9}{'sent':>7}{'answers':>8}{'rate %':>8}"
            f"{'NPS':>7}  NPS 95% CI",
        ]
        for survey in report.surveys:
            bounds = survey.nps_interval
            shown = f"[{bounds[0]:+.0f}, {bounds[1]:+.0f}]" if bounds else "—"
            rate = None if survey.response_rate is None else survey.response_rate * 100
            nps = "—" if survey.nps is None else f"{survey.nps:+.0f}"
            lines.append(
                f"{survey.campaign_id:<18}{survey.month:%Y-%m}  {survey.sent:>7,}"
                f"{survey.responses:>8,}"
                f"{_pct(rate):>8}{nps:>7}  {shown}"
            )
    return "\n".join(lines)


def _variant_lines(test: Experiment) -> list[str]:
    lines = []
    for v in test.variants:
        converted = v.proportion("converted")
        bounds = converted.interval
        ci = f"[{_pct(bounds[0] * 100)}, {_pct(bounds[1] * 100)}]" if bounds else ""
        lines.append(
            f"{'':<18}variant {v.variant:<10}{v.sent:>8,} sent  opened "
            f"{_pct(_times100(v.proportion('opened').rate))}%  clicked "
            f"{_pct(_times100(v.proportion('clicked').rate))}%  converted "
            f"{_pct(_times100(converted.rate))}% {ci}  revenue {v.revenue:,.2f}"
        )
    for metric, verdict in test.verdicts.items():
        lines.append(f"{'':<18}winner on {metric}: {verdict.winner or 'none'} ({verdict.reason})")
    return lines


def _times100(value: float | None) -> float | None:
    return None if value is None else value * 100


def describe_uplift(uplift: Uplift) -> str:
    bounds = uplift.interval
    if bounds is None or uplift.difference is None:
        return "no holdout" if not uplift.holdout else "nothing sent"
    return f"{uplift.difference * 100:+.1f} pts [{bounds[0] * 100:+.1f}, {bounds[1] * 100:+.1f}]"


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"
