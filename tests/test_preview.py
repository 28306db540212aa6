"""`lifecycle preview`: a real customer's email, and every template x locale into a folder."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from babel.dates import format_date
from babel.numbers import format_currency
from sqlalchemy import func, select

from lifecycle.cli import main
from lifecycle.core.campaigns import LOCALES, load_campaigns
from lifecycle.core.config import PROJECT_ROOT, load_settings
from lifecycle.core.render import get_renderer
from lifecycle.devtools import preview, seed
from lifecycle.store.schema import coupons, customers, orders

AS_OF = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)


@pytest.fixture
def settings(tmp_path: Path, warehouse_url: str):
    return load_settings(
        home=tmp_path, warehouse_url=warehouse_url, templates_dir=PROJECT_ROOT / "templates"
    )


def test_preview_for_a_real_customer(engine, settings):
    seed.seed(engine, 60, seed=3, as_of=AS_OF)
    with engine.connect() as conn:
        last = conn.execute(select(orders).order_by(orders.c.placed_at.desc()).limit(1)).one()
        customer = conn.execute(select(customers).where(customers.c.id == last.customer_id)).one()
    spec = load_campaigns(settings.campaigns_dir).specs["feedback"]

    rendered = preview.preview_customer(engine, settings, spec, customer.id, as_of=AS_OF)
    locale = get_renderer(settings).resolve_locale("feedback", customer.locale, "en")
    assert rendered.locale_used == locale
    assert f"#{last.id}" in rendered.subject
    assert format_currency(Decimal(last.amount), last.currency, locale=locale) in rendered.text
    if customer.first_name:
        assert customer.first_name in rendered.text

    other = "ka" if locale != "ka" else "hy"
    assert (
        preview.preview_customer(
            engine, settings, spec, customer.id, as_of=AS_OF, locale=other
        ).locale_used
        == other
    )
    with engine.connect() as conn:  # a preview issues no coupon
        assert conn.execute(select(func.count()).select_from(coupons)).scalar_one() == 0

    with pytest.raises(preview.PreviewError, match="no customer"):
        preview.preview_customer(engine, settings, spec, 10**9, as_of=AS_OF)


def test_preview_all_writes_every_template_and_locale_with_an_index(tmp_path):
    settings = load_settings(home=tmp_path, templates_dir=PROJECT_ROOT / "templates")
    pages = preview.preview_all(settings, tmp_path / "out", as_of=AS_OF)
    templates = get_renderer(settings).templates()
    assert {(p.template, p.locale) for p in pages} == {
        (t, loc) for t in templates for loc in LOCALES
    }
    index = (tmp_path / "out" / "index.html").read_text(encoding="utf-8")
    links = re.findall(r'href="([^"]+\.html)"', index)
    assert len(links) == len(pages)
    for link in links:
        assert (tmp_path / "out" / link).read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


def test_cli_preview(tmp_path, engine, settings, monkeypatch, capsys):
    monkeypatch.setenv("LIFECYCLE_HOME", str(tmp_path))
    seed.seed(engine, 20, seed=5, as_of=AS_OF)
    url = settings.warehouse_url
    out = tmp_path / "birthday.html"
    code = main(["--warehouse", url, "preview", "birthday", "--customer", "1", "--out", str(out)])
    assert code == 0 and out.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert out.with_suffix(".txt").exists()
    assert main(["--warehouse", url, "preview", "birthday", "--out", str(out)]) == 2
    assert main(["preview", "--all", "--out", str(tmp_path / "all")]) == 0
    assert "index.html" in capsys.readouterr().out


def birthday_coupon_line(out: Path) -> str:
    text = (out / "birthday" / "en.txt").read_text(encoding="utf-8")
    return next(line for line in text.splitlines() if line.startswith("Valid until"))


@pytest.mark.parametrize("as_of", [None, "2031-03-01T12:00:00Z"])
def test_previews_show_coupons_valid_from_today_or_the_given_day(tmp_path, as_of):
    """A preview's coupon expires `valid_days` after today (or --as-of), as the customer would
    see it, never after a fixed sample date long past."""
    spec = load_campaigns(load_settings().campaigns_dir).specs["birthday"]
    assert spec.coupon is not None
    seen = datetime.fromisoformat(as_of) if as_of else datetime.now(UTC)
    expires = (seen + timedelta(days=spec.coupon.valid_days)).astimezone(
        ZoneInfo("America/New_York")  # the English sample customer's zone
    )
    out = tmp_path / "all"
    argv = ["preview", "--all", "--out", str(out), *(["--as-of", as_of] if as_of else [])]
    assert main(argv) == 0
    expected = f"Valid until {format_date(expires.date(), format='long', locale='en')}."
    assert birthday_coupon_line(out) == expected
