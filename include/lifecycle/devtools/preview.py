"""Previews for marketing: one campaign's email for a real customer, or every template x locale
with sample data into a folder with an index page. Nothing is sent and nothing is written to
the warehouse (a coupon in a preview is a sample, never issued).
"""

from __future__ import annotations

import html
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
from sqlalchemy import Engine, select

from lifecycle.core import sources, variants
from lifecycle.core.campaigns import LOCALES, CampaignSpec, load_campaigns
from lifecycle.core.config import Settings
from lifecycle.core.render import Rendered, get_renderer
from lifecycle.core.samples import sample_context
from lifecycle.run.compose import Composer, sample_coupon
from lifecycle.run.rows import EmailRow, json_safe
from lifecycle.store.schema import customer_features


class PreviewError(ValueError):
    """A preview that cannot be made (unknown customer, campaign or template)."""


@dataclass(frozen=True)
class Page:
    template: str
    locale: str
    subject: str
    html_path: Path
    text_path: Path


def preview_customer(
    engine: Engine,
    settings: Settings,
    spec: CampaignSpec,
    customer_id: int,
    *,
    as_of: datetime,
    locale: str | None = None,
    occurrence_key: str | None = None,
) -> Rendered:
    """`spec`'s email as `customer_id` would get it at `as_of`, rendered by the same code as a
    real send (with a sample coupon): their name, locale, timezone and stored features;
    `locale` overrides the customer's locale. Fields the warehouse does not have for them keep
    sample values."""
    key = occurrence_key or get_renderer(settings).occurrence_keys(spec)[0]
    row = _email_row(engine, settings, spec, customer_id, key)
    if locale:
        row = replace(row, locale=locale)
    return (
        Composer(spec, settings, as_of).email(row, sample_coupon(spec, as_of, row.variant)).rendered
    )


def _email_row(
    engine: Engine, settings: Settings, spec: CampaignSpec, customer_id: int, key: str
) -> EmailRow:
    """The customer's row to render, from the warehouse rather than the ledger."""
    row = _customer(engine, settings, customer_id)
    if not row["email"]:
        raise PreviewError(f"customer {customer_id} has no email address: no campaign mails them")
    known = {**row, **_features(engine, customer_id), **_last_order(engine, settings, customer_id)}
    data = sample_context(spec, key, spec.default_locale)["data"]
    for name in spec.template_fields:
        if known.get(name) is not None:
            data[name] = json_safe(known[name])
    variant = variants.assign(pd.Series([customer_id]), spec).iloc[0]
    return EmailRow(
        send_id=-1,  # nothing is stored
        customer_id=customer_id,
        occurrence_key=key,
        template=spec.variant_template(variant, key),
        email=row["email"],
        locale=row["locale"],
        timezone=row["timezone"],
        context={"first_name": row["first_name"], "last_name": row["last_name"], "data": data},
        variant=variant,
    )


def _customer(engine: Engine, settings: Settings, customer_id: int) -> dict[str, Any]:
    customers = sources.source_customers(settings)
    with engine.connect() as conn:
        row = conn.execute(
            select(customers).where(customers.c.customer_id == customer_id)
        ).one_or_none()
    if row is None:
        raise PreviewError(f"no customer with id {customer_id}")
    return dict(row._mapping)


def _features(engine: Engine, customer_id: int) -> dict[str, Any]:
    with engine.connect() as conn:
        row = conn.execute(
            select(customer_features).where(customer_features.c.customer_id == customer_id)
        ).one_or_none()
    return {} if row is None else dict(row._mapping)


def _last_order(engine: Engine, settings: Settings, customer_id: int) -> dict[str, Any]:
    orders = sources.source_orders(settings)
    query = (
        select(orders)
        .where(orders.c.customer_id == customer_id)
        .order_by(orders.c.placed_at.desc())
        .limit(1)
    )
    with engine.connect() as conn:
        row = conn.execute(query).one_or_none()
    if row is None:
        return {}
    return {
        "order_id": row.order_id,
        "order_amount": row.amount,
        "order_currency": row.currency,
        "order_placed_at": row.placed_at,
    }


def preview_all(settings: Settings, out_dir: Path, *, as_of: datetime) -> list[Page]:
    """Every template x locale with sample data into `out_dir/<template>/<locale>.html|.txt`,
    plus `out_dir/index.html`. Templates a campaign uses get that campaign's fields; dates
    (a coupon's expiry, the local date) are as they would be at `as_of`."""
    renderer = get_renderer(settings)
    specs = load_campaigns(settings.campaigns_dir).specs
    users: dict[str, tuple[CampaignSpec | None, str]] = {}
    for spec in specs.values():
        for key in renderer.occurrence_keys(spec):
            users[spec.template_for(key)] = (spec, key)

    pages = []
    for template in renderer.templates():
        user, key = users.get(template, (None, "sample"))
        default_locale = user.default_locale if user else "en"
        for locale in LOCALES:
            rendered = renderer.render(
                template, locale, default_locale, sample_context(user, key, locale, as_of=as_of)
            )
            folder = out_dir / template
            folder.mkdir(parents=True, exist_ok=True)
            html_path, text_path = folder / f"{locale}.html", folder / f"{locale}.txt"
            html_path.write_text(rendered.html, encoding="utf-8")
            text_path.write_text(rendered.text, encoding="utf-8")
            pages.append(
                Page(template, rendered.locale_used, rendered.subject, html_path, text_path)
            )
    (out_dir / "index.html").write_text(_index(pages, out_dir), encoding="utf-8")
    return pages


def _index(pages: list[Page], out_dir: Path) -> str:
    rows = "\n".join(
        "<tr>"
        f"<td>{html.escape(p.template)}</td><td>{p.locale}</td>"
        f"<td>{html.escape(p.subject)}</td>"
        f'<td><a href="{html.escape(p.html_path.relative_to(out_dir).as_posix())}">HTML</a> · '
        f'<a href="{html.escape(p.text_path.relative_to(out_dir).as_posix())}">text</a></td>'
        "</tr>"
        for p in pages
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Email previews</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; color: #1f2937; }}
table {{ border-collapse: collapse; }}
td, th {{ padding: 6px 12px; border-bottom: 1px solid #e5e7eb; text-align: left; }}
</style></head>
<body>
<h1>Email previews</h1>
<p>Every template in every locale, rendered with sample data ({len(pages)} emails).</p>
<table>
<tr><th>Template</th><th>Locale</th><th>Subject</th><th>Open</th></tr>
{rows}
</table>
</body></html>
"""
