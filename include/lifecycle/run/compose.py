"""Compose: rows become emails, and emails go out through the campaign's transport.

`Composer.email` is the one place a row's render context and message are built: real sends,
dry runs, test sends and previews all go through it, so what marketing previews and tests is
what customers get.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from lifecycle.core import addresses, localtime, policies, render
from lifecycle.core.campaigns import CampaignSpec
from lifecycle.core.config import Settings
from lifecycle.delivery import BulkMessage, Envelope, Message, Personalization, Transport
from lifecycle.delivery.outbox import OutboxTransport
from lifecycle.delivery.sendgrid import SendGridTransport
from lifecycle.feedback import compliance, surveys, unsubscribe
from lifecycle.run import bulk
from lifecycle.run.rows import EmailRow
from lifecycle.store import coupons
from lifecycle.store.coupons import CouponInfo
from lifecycle.store.ledger import Outcome
from lifecycle.store.states import FailReason, LedgerStatus, SkipReason


@dataclass(frozen=True)
class Email:
    rendered: render.Rendered  # subject, HTML, text and the locale they are in
    message: Message  # the same, addressed, with unsubscribe headers and our custom args


class Composer:
    """Renders rows of one campaign as of one moment."""

    def __init__(self, spec: CampaignSpec, settings: Settings, as_of: datetime):
        self.spec, self.settings, self.as_of = spec, settings, as_of
        self.renderer = render.get_renderer(settings)
        self.grouper = bulk.Grouper(self.renderer)

    def context(self, row: EmailRow, coupon: CouponInfo | None) -> tuple[dict[str, Any], str, str]:
        """`row`'s render context, its unsubscribe URL and token."""
        spec, settings, stored = self.spec, self.settings, row.context
        variant = spec.variant(row.variant)
        token = unsubscribe.token_for(settings, row.send_id)
        url = unsubscribe.unsubscribe_url(settings, token)
        context = {
            "customer": {
                "id": row.customer_id,
                "first_name": stored.get("first_name"),
                "last_name": stored.get("last_name"),
                "email": row.email,
                "locale": row.locale,
                "timezone": row.timezone,
            },
            "campaign": {"id": spec.id, "occurrence_key": row.occurrence_key},
            "data": {**stored.get("data", {}), **(variant.fields if variant else {})},
            "variant": {"id": variant.id} if variant else None,
            "coupon": None
            if coupon is None
            else {
                "code": coupon.code,
                "discount_percent": coupon.discount_percent,
                "expires_at": coupon.expires_at,
            },
            "unsubscribe_url": url,
            # The feedback email's 0-10 links; computed only for templates that call it.
            "rating_url": lambda score: surveys.survey_url(settings, row.send_id, score),
            "local_date": self.as_of.astimezone(localtime.zone_or_utc(row.timezone)).date(),
        }
        return context, url, token

    def _personal(self, row: EmailRow, subject: str, url: str, token: str) -> Personalization:
        """What only `row`'s recipient gets: address, subject, unsubscribe headers, send_id."""
        stored = row.context
        variant = self.spec.variant(row.variant)
        name = " ".join(p for p in (stored.get("first_name"), stored.get("last_name")) if p)
        return Personalization(
            send_id=row.send_id,
            to_email=row.email,
            to_name=name or None,
            subject=subject,
            headers=compliance.list_unsubscribe_headers(self.settings, url, token),
            custom_args={
                "send_id": str(row.send_id),
                "campaign": self.spec.id,
                "occurrence_key": row.occurrence_key,
                **({"variant": variant.id} if variant else {}),
            },
            substitutions={},
        )

    def email(self, row: EmailRow, coupon: CouponInfo | None) -> Email:
        """`row`'s email with `coupon` (issued, or a sample). Raises what rendering raises."""
        context, url, token = self.context(row, coupon)
        rendered = self.renderer.render(
            row.template, row.locale, self.spec.default_locale, context, subject=self._subject(row)
        )
        personal = self._personal(row, rendered.subject, url, token)
        return Email(rendered, _message(personal, rendered))

    def recipient(self, row: EmailRow, coupon: CouponInfo | None) -> bulk.Recipient:
        """`row` ready for a bulk request: its values and subject, the body not rendered."""
        context, url, token = self.context(row, coupon)
        locale, values = self.renderer.values(
            row.template, row.locale, self.spec.default_locale, context
        )
        subject = self.renderer.render_subject(
            row.template, locale, values, subject=self._subject(row)
        )
        personal = self._personal(row, subject, url, token)
        return bulk.Recipient(row, coupon is not None, locale, values, personal)

    def alone(self, recipient: bulk.Recipient) -> Message:
        """`recipient`'s email rendered directly, for a request of its own."""
        row = recipient.row
        rendered = self.renderer.render_values(
            row.template, recipient.locale, recipient.values, subject=self._subject(row)
        )
        return _message(recipient.personal, rendered)

    def _subject(self, row: EmailRow) -> render.Subject:
        """The subject line of `row`'s variant; None: the template's subject.txt."""
        variant = self.spec.variant(row.variant)
        return variant.subject if variant else None

    def compose(
        self, engine: Engine, rows: list[EmailRow], per_request: int = 1
    ) -> tuple[list[Message | BulkMessage], list[Outcome]]:
        """Requests for the claimed rows that may still be mailed (one per row, or up to
        `per_request` rows sharing a body), coupons issued; outcomes for the others
        (suppressed since planning, or not renderable)."""
        blocked = self._suppressed(engine, rows)
        failures: list[Outcome] = []
        mailable: list[EmailRow] = []
        for row in rows:
            if row.email and addresses.inbox(row.email) in blocked:
                failures.append(
                    Outcome(row.send_id, LedgerStatus.SKIPPED, reason=SkipReason.SUPPRESSED)
                )
            else:
                mailable.append(row)
        issued = self._coupons(engine, mailable)
        requests: list[Message | BulkMessage] = []
        recipients: list[bulk.Recipient] = []
        for row in mailable:
            coupon = issued.get((row.customer_id, row.occurrence_key))
            try:
                if per_request == 1:
                    requests.append(self.email(row, coupon).message)
                else:
                    recipients.append(self.recipient(row, coupon))
            # One broken row must not stop the batch; it surely did not leave.
            except Exception as exc:
                failures.append(_render_failure(row.send_id, exc))
        if recipients:
            shared, singles = self.grouper.requests(recipients, per_request)
            requests += shared
            for recipient in singles:
                try:
                    requests.append(self.alone(recipient))
                except Exception as exc:
                    failures.append(_render_failure(recipient.row.send_id, exc))
        return requests, failures

    def _suppressed(self, engine: Engine, rows: list[EmailRow]) -> set[str]:
        """Addresses suppressed since planning (an unsubscribe while the row waited)."""
        emails = [row.email for row in rows if row.email]
        scopes = policies.suppression_scopes(self.spec)
        with engine.connect() as conn:
            return policies.suppressed_emails(conn, emails, scopes)

    def _coupons(self, engine: Engine, rows: list[EmailRow]) -> dict[tuple[int, str], CouponInfo]:
        terms = self.spec.coupon
        if terms is None:
            return {}
        by_discount: dict[float, list[tuple[int, str]]] = {}
        for row in rows:
            discount = discount_for(self.spec, row.variant)
            by_discount.setdefault(discount, []).append((row.customer_id, row.occurrence_key))
        issued: dict[tuple[int, str], CouponInfo] = {}
        with engine.begin() as conn:
            for discount, keys in by_discount.items():
                issued |= coupons.ensure_coupons(
                    conn, self.spec.id, keys, discount, terms.valid_days, self.as_of
                )
        return issued


def discount_for(spec: CampaignSpec, variant_id: str | None) -> float:
    """The coupon discount of a variant's emails: its own, else the campaign's."""
    assert spec.coupon is not None
    variant = spec.variant(variant_id)
    if variant is not None and variant.coupon_discount_percent is not None:
        return variant.coupon_discount_percent
    return spec.coupon.discount_percent


def _message(personal: Personalization, rendered: render.Rendered) -> Message:
    return Message(
        send_id=personal.send_id,
        to_email=personal.to_email,
        to_name=personal.to_name,
        subject=personal.subject,
        text=rendered.text,
        html=rendered.html,
        headers=personal.headers,
        custom_args=personal.custom_args,
    )


def _render_failure(send_id: int, exc: Exception) -> Outcome:
    return Outcome(
        send_id,
        LedgerStatus.FAILED,
        error=f"{type(exc).__name__}: {exc}"[:1000],
        retryable=False,
        reason=FailReason.RENDER_ERROR,
    )


def sample_coupon(
    spec: CampaignSpec, as_of: datetime, variant_id: str | None = None
) -> CouponInfo | None:
    """A coupon with the campaign's (or the variant's) terms and a sample code, never stored:
    what dry runs, test sends and previews show where a real send issues one."""
    if spec.coupon is None:
        return None
    expires_at = as_of + timedelta(days=spec.coupon.valid_days)
    return CouponInfo("TEST-COUPON", discount_for(spec, variant_id), as_of, expires_at)


def envelope_for(spec: CampaignSpec) -> Envelope:
    return Envelope(
        sender_email=str(spec.sender.email),
        sender_name=spec.sender.name,
        reply_to_email=str(spec.reply_to.email) if spec.reply_to else None,
        reply_to_name=spec.reply_to.name if spec.reply_to else None,
        categories=tuple(spec.delivery.categories),
        asm_group_id=spec.delivery.asm_group_id,
        sandbox_mode=spec.delivery.sandbox_mode,
        click_tracking=spec.tracking.clicks if spec.tracking else None,
        open_tracking=spec.tracking.opens if spec.tracking else None,
    )


def make_transport(
    settings: Settings, spec: CampaignSpec, outbox_dir: Path | None = None
) -> Transport:
    """SendGrid, or .eml files under `outbox_dir` (default: the campaign's outbox folder)."""
    envelope = envelope_for(spec)
    if settings.chosen_transport() == "sendgrid":
        return SendGridTransport(
            settings.sendgrid_api_key or "",
            settings.sendgrid_host,
            envelope,
            concurrency=spec.delivery.concurrency,
        )
    return OutboxTransport(outbox_dir or settings.outbox_dir / spec.id, envelope)
