"""Policies applied at planning: who may receive a campaign's email, and when.

`evaluate` takes one audience chunk and returns, per row, a skip reason (or None: send) and the
send window in the customer's local time. Reasons, checked in this order:

* ``missing_email`` / ``invalid_email`` — nothing to send to;
* ``no_consent`` — no marketing consent (when the spec requires it);
* ``erased`` — the person asked to be erased: the suppression list keeps only the address's
  hash, and the row stores neither the address nor the template variables;
* ``suppressed`` — on the suppression list, globally or in the spec's ASM group;
* ``holdout`` — in the campaign's control group (drawn among the reachable customers only, so
  it measures the campaign and nothing else);
* ``frequency_cap`` — already N marketing emails in the rolling window, counting what other
  campaigns sent, have in flight or planned, and what this chunk plans first;
* ``duplicate_address`` — another customer's email of the same occurrence goes to the same inbox
  (addresses compared trimmed and case-insensitively): the one planned earlier keeps it, else
  the lowest customer id among those still to be sent.

Send window: a customer outside it (local time) is not dropped. The row is planned with
``send_after`` = the next local window opening and picked up by the first run after that.
It expires at the end of the local day after the send day; a later run skips it as ``expired``.
"""

from __future__ import annotations

from datetime import datetime, time, timedelta

import pandas as pd
from sqlalchemy import Connection, String, func, select

from lifecycle.core import addresses, localtime, segments
from lifecycle.core.campaigns import CampaignSpec, SendWindow
from lifecycle.store import ledger
from lifecycle.store.schema import suppressions
from lifecycle.store.states import SkipReason

# customer_features.email_reason → the skip reason it gives
EMAIL_REASONS = {
    "missing_email": SkipReason.MISSING_EMAIL,
    "malformed_email": SkipReason.INVALID_EMAIL,
}


def suppression_scopes(spec: CampaignSpec) -> list[str]:
    scopes = ["global"]
    if spec.delivery.asm_group_id is not None:
        scopes.append(f"group:{spec.delivery.asm_group_id}")
    return scopes


def suppressed_emails(conn: Connection, emails: list[str], scopes: list[str]) -> set[str]:
    """The inboxes (trimmed, lower-cased) among `emails` suppressed in any of `scopes`."""
    stored = func.lower(func.trim(suppressions.c.email), type_=String)
    found: set[str] = set()
    for part in ledger.chunked(sorted({addresses.inbox(e) for e in emails})):
        query = select(stored).where(
            ledger.is_in(conn, stored, part), suppressions.c.scope.in_(scopes)
        )
        found.update(conn.execute(query).scalars())
    return found


def erased_inboxes(conn: Connection, emails: list[str]) -> set[str]:
    """The inboxes among `emails` whose owner was erased (suppressed by hash, in every scope)."""
    by_hash = {addresses.hashed(e): addresses.inbox(e) for e in emails}
    found: set[str] = set()
    for part in ledger.chunked(sorted(by_hash)):
        query = select(suppressions.c.email).where(
            ledger.is_in(conn, suppressions.c.email, part), suppressions.c.scope == "global"
        )
        found.update(by_hash[h] for h in conn.execute(query).scalars())
    return found


def _local_schedule(
    zone_name: str, as_of: datetime, window: SendWindow | None
) -> tuple[bool, datetime, datetime]:
    """(in window now, send_after, expires_at) in UTC for a customer in `zone_name`."""
    zone = localtime.zone_or_utc(zone_name)
    local = as_of.astimezone(zone)
    if window is None or window.start <= local.time() < window.end:
        in_window, send_day = True, local.date()
        send_after = as_of
    else:
        in_window = False
        send_day = local.date() if local.time() < window.start else local.date() + timedelta(1)
        send_after = datetime.combine(send_day, window.start, tzinfo=zone)
    expires_at = datetime.combine(send_day + timedelta(days=2), time(0), tzinfo=zone)
    return in_window, send_after.astimezone(as_of.tzinfo), expires_at.astimezone(as_of.tzinfo)


def schedule(timezones: pd.Series, as_of: datetime, window: SendWindow | None) -> pd.DataFrame:
    """Per row: in_window (bool), send_after and expires_at (aware UTC), computed once per zone."""
    per_zone = {
        name: _local_schedule(name, as_of, window) for name in timezones.fillna("UTC").unique()
    }
    names = timezones.fillna("UTC")
    return pd.DataFrame(
        {
            "in_window": names.map(lambda n: per_zone[n][0]).astype(bool),
            "send_after": names.map(lambda n: per_zone[n][1]),
            "expires_at": names.map(lambda n: per_zone[n][2]),
        },
        index=timezones.index,
    )


def evaluate(
    conn: Connection,
    audience: pd.DataFrame,
    spec: CampaignSpec,
    as_of: datetime,
    others: ledger.OtherPartitions | None = None,
) -> pd.DataFrame:
    """Columns reason (None = send), send_after, expires_at; same index as `audience`.

    `others`: the audience is one partition of a plan; the rows its other partitions plan hold
    no inbox yet (`ledger.settle_inboxes` decides between them at the end).
    """
    rules = spec.policies
    reason = pd.Series(None, index=audience.index, dtype=object)

    def skip(mask: pd.Series, why: SkipReason) -> None:
        reason[mask & reason.isna()] = why

    for source, why in EMAIL_REASONS.items():
        skip(~audience["email_valid"].astype(bool) & (audience["email_reason"] == source), why)
    skip(~audience["email_valid"].astype(bool), SkipReason.INVALID_EMAIL)
    if rules.requires_consent:
        skip(~audience["marketing_consent"].astype(bool), SkipReason.NO_CONSENT)

    lowered = audience["email"].fillna("").map(addresses.inbox)
    candidates = lowered[reason.isna()].tolist()
    skip(lowered.isin(erased_inboxes(conn, candidates)), SkipReason.ERASED)
    blocked = suppressed_emails(conn, candidates, suppression_scopes(spec))
    skip(lowered.isin(blocked), SkipReason.SUPPRESSED)

    if rules.holdout_percent > 0:
        reachable = reason.isna()
        held = segments.holdout_mask(
            audience.loc[reachable, "customer_id"], spec.id, rules.holdout_percent
        )
        skip(held.reindex(audience.index, fill_value=False).astype(bool), SkipReason.HOLDOUT)

    if rules.frequency_cap is not None:
        cap = rules.frequency_cap
        eligible = audience.loc[reason.isna(), "customer_id"]
        since = as_of - timedelta(days=cap.days)
        taken = ledger.taken_counts(conn, eligible.unique().tolist(), since)
        already = eligible.map(taken).fillna(0).astype(int)
        order_in_chunk = eligible.groupby(eligible).cumcount()
        over = (already + order_in_chunk) >= cap.max_emails
        skip(over.reindex(audience.index, fill_value=False).astype(bool), SkipReason.FREQUENCY_CAP)

    skip(
        _second_in_inbox(conn, audience, lowered, reason.isna(), spec.id, others),
        SkipReason.DUPLICATE,
    )

    timing = schedule(audience["timezone"], as_of, rules.send_window)
    return pd.DataFrame(
        {"reason": reason, "send_after": timing["send_after"], "expires_at": timing["expires_at"]},
        index=audience.index,
    )


def _second_in_inbox(
    conn: Connection,
    audience: pd.DataFrame,
    inboxes: pd.Series,
    sendable: pd.Series,
    campaign: str,
    others: ledger.OtherPartitions | None,
) -> pd.Series:
    """Sendable rows whose inbox gets this occurrence's email through another customer: one
    already in the ledger, or a lower customer id in this chunk (chunks come in id order)."""
    keys = audience["occurrence_key"].map(str)
    holders = ledger.inbox_holders(conn, campaign, inboxes[sendable].tolist(), others)
    held_by = pd.Series(
        [holders.get(pair) for pair in zip(keys, inboxes, strict=True)],
        index=audience.index,
        dtype=object,
    )
    ids = audience["customer_id"].astype(int)
    taken = held_by.notna() & (held_by != ids)
    ranked = pd.DataFrame({"key": keys, "inbox": inboxes, "id": ids})[sendable & ~taken]
    later = ranked.sort_values("id").duplicated(["key", "inbox"])
    return (taken | later.reindex(audience.index, fill_value=False)) & sendable
