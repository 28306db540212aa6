"""Sample render contexts, for preflight (every template x locale) and previews."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from lifecycle.core.campaigns import CampaignSpec
from lifecycle.core.localtime import zone_or_utc

SAMPLE_AS_OF = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
SAMPLE_DATA: dict[str, Any] = {
    "order_id": 100234,
    "order_amount": "89.90",
    "order_currency": "USD",
    "order_placed_at": "2026-11-18T14:05:00+00:00",
    "loyalty_tier": "gold",
    "loyalty_points": 1250,
    "survey_score": 4,
    "survey_occurrence_key": "100234",
}
SAMPLE_OCCURRENCE_KEYS = {
    "birthday_year": "2026",
    "order_id": "100234",
    "loyalty_tier": "gold",
    "lapse_started_on": "2026-08-20",
    "survey_response_id": "17",
}
SAMPLE_NAMES = {"en": ("Emma", "Walker"), "hy": ("Անի", "Պետրոսյան"), "ka": ("ნინო", "ბერიძე")}
SAMPLE_TIMEZONES = {"en": "America/New_York", "hy": "Asia/Yerevan", "ka": "Asia/Tbilisi"}


def sample_context(
    spec: CampaignSpec | None,
    occurrence_key: str,
    locale: str,
    *,
    with_name: bool = True,
    as_of: datetime = SAMPLE_AS_OF,
) -> dict[str, Any]:
    """A render context shaped like delivery's, with plausible sample values.

    Without a spec (preview of a template no campaign uses) every known sample field and a
    coupon are included.
    """
    fields = spec.template_fields if spec is not None else list(SAMPLE_DATA)
    data = {name: SAMPLE_DATA.get(name, f"sample {name}") for name in fields}
    terms = spec.coupon if spec is not None else None
    discount, valid_days = (terms.discount_percent, terms.valid_days) if terms else (20.0, 7)
    with_coupon = spec is None or terms is not None
    names = SAMPLE_NAMES.get(locale, SAMPLE_NAMES["en"])
    timezone = SAMPLE_TIMEZONES.get(locale, "UTC")
    return {
        "customer": {
            "id": 42,
            "first_name": names[0] if with_name else None,
            "last_name": names[1],
            "email": "customer@example.com",
            "locale": locale,
            "timezone": timezone,
        },
        "campaign": {"id": spec.id if spec else "preview", "occurrence_key": occurrence_key},
        "data": data,
        "coupon": {
            "code": "BDAY7K3M9Q",
            "discount_percent": discount,
            "expires_at": as_of + timedelta(days=valid_days),
        }
        if with_coupon
        else None,
        "variant": None,
        "unsubscribe_url": "https://example.com/lifecycle/unsubscribe/sample-token",
        "rating_url": lambda score: f"https://example.com/lifecycle/feedback/sample-{score}",
        "local_date": as_of.astimezone(zone_or_utc(timezone)).date(),
    }


def with_variant(context: dict[str, Any], spec: CampaignSpec, variant_id: str) -> dict[str, Any]:
    """A sample context as the variant's emails see it: its fields and coupon discount."""
    variant = spec.variant(variant_id)
    assert variant is not None, variant_id
    coupon = context["coupon"]
    if coupon is not None and variant.coupon_discount_percent is not None:
        coupon = {**coupon, "discount_percent": variant.coupon_discount_percent}
    data = {**context["data"], **variant.fields}
    return {**context, "data": data, "coupon": coupon, "variant": {"id": variant.id}}
