"""An email to render (`EmailRow`), whatever it comes from, and one builder per source:

* `from_ledger`: a ledger row delivery claimed;
* `from_planned`: a row `plan` would insert (a dry run renders it instead);
* `from_audience`: an audience member as the segment returns them (test sends).

(`devtools.preview` builds one from a customer's warehouse rows.) Every source becomes the same
row, and `compose.Composer.email` renders every row the same way.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Row

from lifecycle.core.campaigns import CampaignSpec


@dataclass(frozen=True, slots=True)
class EmailRow:
    """The fields of a ledger row an email is rendered from."""

    send_id: int  # the ledger row's id; negative where nothing is stored (dry run, test send)
    customer_id: int
    occurrence_key: str
    template: str
    email: str
    locale: str | None
    timezone: str | None
    context: Mapping[str, Any]  # as the ledger stores it: first_name, last_name, data
    variant: str | None = None  # the A/B/n variant (spec `variants`), None without


def json_safe(value: Any) -> Any:
    """A warehouse value as the ledger's JSON `context` stores it: missing as None, dates as ISO
    text, decimals and numpy numbers as Python numbers."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NaT:
        return None
    if isinstance(value, pd.Timestamp | datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal | np.floating):
        return float(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def stored_context(record: Mapping[Hashable, Any], spec: CampaignSpec) -> dict[str, Any]:
    """What a ledger row keeps of an audience member to render their email later."""
    return {
        "first_name": json_safe(record.get("first_name")),
        "last_name": json_safe(record.get("last_name")),
        "data": {name: json_safe(record.get(name)) for name in spec.template_fields},
    }


def from_ledger(row: Row[Any]) -> EmailRow:
    return EmailRow(
        send_id=int(row.id),
        customer_id=int(row.customer_id),
        occurrence_key=row.occurrence_key,
        template=row.template,
        email=row.email,
        locale=row.locale,
        timezone=row.timezone,
        context=row.context or {},
        variant=row.variant,
    )


def from_planned(values: Mapping[str, Any], send_id: int) -> EmailRow:
    return EmailRow(
        send_id=send_id,
        customer_id=int(values["customer_id"]),
        occurrence_key=values["occurrence_key"],
        template=values["template"],
        email=values["email"],
        locale=values["locale"],
        timezone=values["timezone"],
        context=values["context"],
        variant=values.get("variant"),
    )


def from_audience(
    record: Mapping[Hashable, Any], spec: CampaignSpec, send_id: int, variant: str | None = None
) -> EmailRow:
    key = str(record["occurrence_key"])
    return EmailRow(
        send_id=send_id,
        customer_id=int(record["customer_id"]),
        occurrence_key=key,
        template=spec.variant_template(variant, key),
        email=record["email"],
        locale=record["locale"] if isinstance(record["locale"], str) else None,
        timezone=record["timezone"],
        context=stored_context(record, spec),
        variant=variant,
    )
