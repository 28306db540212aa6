"""A campaign DAG's doc_md, written from its spec: what it sends, to whom, how often, under
which rules. Airflow shows it on the DAG's page."""

from __future__ import annotations

from lifecycle.core.campaigns import CampaignSpec


def campaign_doc_md(spec: CampaignSpec) -> str:
    lines = [
        f"# {spec.display_name} (`{spec.id}`)",
        "",
        _status(spec),
        "",
        spec.description,
        "",
        f"* **To whom**: segment {_segment(spec)}",
        f"* **What**: template `{spec.template}` (default locale {spec.default_locale}), "
        f"from {spec.sender.email}",
        f"* **When**: {' and '.join(_when(spec)) or 'only when triggered by hand'}",
        f"* **Owner**: {spec.owner}",
        *(f"* {rule}" for rule in _rules(spec)),
        f"* **Delivery**: batches of {spec.delivery.batch_size}, "
        f"{spec.delivery.max_active_batches} at a time, "
        f"{spec.delivery.rate_per_second:g} emails/s",
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
        f"Spec: `{spec.spec_file}`",
    ]
    return "\n".join(lines)


def _status(spec: CampaignSpec) -> str:
    if spec.live:
        return (
            "**Status: live.** Its scheduled runs, and triggered runs without *Dry run*, email "
            "real customers. To stop it, pause the DAG (or set `status: draft` in the spec)."
        )
    return (
        "**Status: draft.** It never emails customers: scheduled runs do nothing, and a "
        "triggered run without *Dry run* or *Test recipients* stops before planning. To let "
        f"it send, set `status: live` in `{spec.spec_file}`."
    )


def _segment(spec: CampaignSpec) -> str:
    if isinstance(spec.segment, str):
        return f"`{spec.segment}`"
    params = ", ".join(f"{k}={v}" for k, v in (spec.segment.get("params") or {}).items())
    return f"`{spec.segment.get('use', 'inline')}`" + (f" ({params})" if params else "")


def _when(spec: CampaignSpec) -> list[str]:
    when = []
    if spec.schedule.cron:
        when.append(f"on cron `{spec.schedule.cron}` ({spec.schedule.timezone})")
    if spec.schedule.after_features:
        when.append("after each fresh `customer_features` snapshot")
    return when


def _rules(spec: CampaignSpec) -> list[str]:
    policies = spec.policies
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
    return rules
