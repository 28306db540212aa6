"""Opaque link tokens (unsubscribe and survey): no personal data, rotating secrets, old-format
links honoured until they expire, and the emails as composed carry nothing readable."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from dataclasses import replace
from datetime import UTC, date, datetime
from pathlib import Path
from urllib.parse import quote

import pytest
from sqlalchemy import Engine, insert

from lifecycle.core.campaigns import load_campaigns
from lifecycle.core.config import Settings, load_settings
from lifecycle.feedback import surveys, tokens, unsubscribe
from lifecycle.run.compose import Composer
from lifecycle.run.rows import EmailRow
from lifecycle.store.schema import send_ledger

EMAIL = "Ani.Petrosyan@Example.am"
TODAY = date(2026, 12, 3)


def with_secrets(settings: Settings, *listed: str) -> Settings:
    return replace(settings, unsubscribe_secret=None, token_secrets=listed)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return with_secrets(load_settings(home=tmp_path, public_url="https://shop.example"), "s-2")


def sent(engine: Engine, customer_id: int = 17, campaign: str = "feedback") -> int:
    with engine.begin() as conn:
        return conn.execute(
            insert(send_ledger)
            .values(
                campaign_id=campaign,
                occurrence_key="100234",
                customer_id=customer_id,
                run_id=1,
                status="sent",
                template=campaign,
                email=EMAIL,
                locale="hy",
                planned_at=datetime.now(UTC),
            )
            .returning(send_ledger.c.id)
        ).scalar_one()


def legacy_token(secret: str, customer_id: int, campaign_id: str, email: str) -> str:
    """A link as the previous release made it: the address readable in base64."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    payload = f"{customer_id}:{campaign_id}:{email.strip().lower()}".encode()
    signature = hmac.new(secret.encode(), payload, hashlib.sha256).digest()
    return f"{b64(payload)}.{b64(signature)}"


# --- rotation -----------------------------------------------------------------------------
def test_the_first_secret_signs_and_every_listed_one_verifies(settings: Settings) -> None:
    old_link = surveys.token_for(settings, 7, 9)  # signed with s-2
    rotated = with_secrets(settings, "s-3", "s-2")
    new_link = surveys.token_for(rotated, 8, 3)

    assert surveys.verify(rotated, old_link) == surveys.Answer(7, 9)  # old secret still verifies
    assert surveys.verify(rotated, new_link) == surveys.Answer(8, 3)
    assert surveys.verify(with_secrets(settings, "s-3"), new_link) == surveys.Answer(8, 3)
    with pytest.raises(tokens.InvalidToken):  # signed by s-3, the first: not by s-2
        surveys.verify(settings, new_link)
    with pytest.raises(tokens.InvalidToken):  # s-2 removed: its links stop working
        surveys.verify(with_secrets(settings, "s-3"), old_link)


def test_unsubscribe_rotation_end_to_end(engine: Engine, settings: Settings) -> None:
    send_id = sent(engine)
    old_link = unsubscribe.token_for(settings, send_id)
    rotated = with_secrets(settings, "s-3", "s-2")

    found = unsubscribe.verify(rotated, engine, old_link, TODAY)
    assert (found.customer_id, found.campaign_id, found.email, found.send_id) == (
        17,
        "feedback",
        EMAIL,
        send_id,
    )
    with pytest.raises(unsubscribe.InvalidToken):
        unsubscribe.verify(with_secrets(settings, "s-3"), engine, old_link, TODAY)


def test_the_old_unsubscribe_secret_setting_still_signs_and_verifies(tmp_path: Path) -> None:
    before = load_settings(home=tmp_path, unsubscribe_secret="legacy-secret")
    assert before.configured_secrets == ("legacy-secret",)
    after = replace(before, token_secrets=("fresh",))
    assert after.configured_secrets == ("fresh", "legacy-secret")
    assert surveys.verify(after, surveys.token_for(before, 1, 10)) == surveys.Answer(1, 10)


def test_secrets_list_comes_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("LIFECYCLE_UNSUBSCRIBE_SECRET", raising=False)
    monkeypatch.setenv("LIFECYCLE_TOKEN_SECRETS", "newest, older  oldest")
    monkeypatch.setenv("LIFECYCLE_LEGACY_TOKENS_UNTIL", "2027-01-31")
    settings = load_settings(home=tmp_path)
    assert settings.configured_secrets == ("newest", "older", "oldest")
    assert settings.legacy_tokens_until == date(2027, 1, 31)
    assert "newest" not in repr(settings)

    monkeypatch.setenv("LIFECYCLE_LEGACY_TOKENS_UNTIL", "end of January")
    with pytest.raises(ValueError, match="LIFECYCLE_LEGACY_TOKENS_UNTIL"):
        load_settings(home=tmp_path)


def test_without_a_configured_secret_one_is_generated_once(tmp_path: Path) -> None:
    settings = with_secrets(load_settings(home=tmp_path))
    assert settings.configured_secrets == ()
    token = surveys.token_for(settings, 1, 5)
    assert (tmp_path / tokens.GENERATED_SECRET_FILE).stat().st_mode & 0o077 == 0
    assert surveys.verify(settings, token) == surveys.Answer(1, 5)


# --- tampered, foreign, misused -------------------------------------------------------------
def flip_last(token: str) -> str:
    return token[:-1] + ("A" if token[-1] != "A" else "B")


def test_tampered_foreign_and_misused_tokens_are_refused(settings: Settings) -> None:
    token = surveys.token_for(settings, 7, 9)
    other = surveys.token_for(settings, 8, 0)
    bad = [
        flip_last(token),
        f"{other.split('.')[0]}.{token.split('.')[1]}",  # our signature on another payload
        surveys.token_for(with_secrets(settings, "someone-else"), 7, 9),
        unsubscribe.token_for(settings, 7),  # an unsubscribe token is no survey answer
        tokens.sign(settings, surveys.PURPOSE, 7),  # signed, a field short
        tokens.sign(settings, surveys.PURPOSE, 7, 11),  # signed, no such score
        "",
        "a.b.c",
        "%%%.%%%",
    ]
    for candidate in bad:
        with pytest.raises(tokens.InvalidToken) as caught:
            surveys.verify(settings, candidate)
        assert "s-2" not in str(caught.value)
    with pytest.raises(ValueError):
        surveys.token_for(settings, 7, 11)


def test_a_survey_token_does_not_unsubscribe(engine: Engine, settings: Settings) -> None:
    send_id = sent(engine)
    with pytest.raises(unsubscribe.InvalidToken):
        unsubscribe.verify(settings, engine, surveys.token_for(settings, send_id, 0), TODAY)


# --- links in the old format ----------------------------------------------------------------
def test_old_format_links_work_until_they_expire(engine: Engine, settings: Settings) -> None:
    legacy = legacy_token("s-2", 42, "birthday", f" {EMAIL} ")
    found = unsubscribe.verify(settings, engine, legacy, TODAY)
    assert (found.customer_id, found.campaign_id, found.email, found.send_id) == (
        42,
        "birthday",
        EMAIL.lower(),
        None,
    )
    rotated = with_secrets(settings, "s-3", "s-2")
    assert unsubscribe.verify(rotated, engine, legacy, TODAY).email == EMAIL.lower()

    expiring = replace(settings, legacy_tokens_until=TODAY)
    assert unsubscribe.verify(expiring, engine, legacy, TODAY).customer_id == 42
    with pytest.raises(unsubscribe.InvalidToken, match="expired"):
        unsubscribe.verify(expiring, engine, legacy, date(2026, 12, 4))
    for refused in (
        legacy_token("s-1", 42, "birthday", EMAIL),  # a secret no longer listed
        legacy_token("s-2", 42, "birthday", EMAIL)[:-2] + "AA",
    ):
        with pytest.raises(unsubscribe.InvalidToken):
            unsubscribe.verify(settings, engine, refused, TODAY)


# --- what the emails carry ----------------------------------------------------------------
def readable_forms(email: str) -> list[str]:
    """The address as text, URL-encoded, and base64 at each of the three alignments."""
    forms = [email, email.lower(), quote(email), quote(email.lower())]
    for variant in (email, email.lower()):
        for pad in range(3):
            encoded = base64.b64encode(b"\0" * pad + variant.encode()).decode()
            core = encoded[(4 * pad + 2) // 3 + 1 : -4]  # drop the chars the padding touched
            forms += [core, core.replace("+", "-").replace("/", "_")]
    return forms


def test_no_link_in_a_composed_email_reveals_the_address(settings: Settings) -> None:
    spec = load_campaigns(settings.campaigns_dir).specs["feedback"]
    row = EmailRow(
        send_id=123_456,
        customer_id=17,
        occurrence_key="100234",
        template="feedback",
        email=EMAIL,
        locale="hy",
        timezone="Asia/Yerevan",
        context={
            "first_name": "Ani",
            "last_name": "Petrosyan",
            "data": {
                "order_id": 100234,
                "order_amount": 89.9,
                "order_currency": "AMD",
                "order_placed_at": "2026-11-18T14:05:00+00:00",
            },
        },
    )
    message = Composer(spec, settings, datetime(2026, 12, 3, 10, tzinfo=UTC)).email(row, None)
    message = message.message
    text = "\n".join([message.html, message.text, *message.headers.values()])
    found = set(re.findall(r"https://shop\.example/lifecycle/([a-z]+)/([A-Za-z0-9_.\-]+)", text))
    ratings = {token for kind, token in found if kind == "feedback"}
    assert {kind for kind, _ in found} == {"feedback", "unsubscribe"}
    assert len(ratings) == 11 and len(found) == 12
    for _, token in found:
        for form in readable_forms(EMAIL):
            assert form not in token
        for part in token.split("."):
            try:
                decoded = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
            except (binascii.Error, ValueError):
                continue
            assert EMAIL.lower().encode() not in decoded.lower()
            assert b"Petrosyan" not in decoded
    assert EMAIL.lower() not in message.headers["List-Unsubscribe"].lower()
    answers = {surveys.verify(settings, token) for token in ratings}
    assert answers == {surveys.Answer(123_456, score) for score in range(11)}


def test_the_readable_forms_would_catch_the_old_format() -> None:
    """The scan above is not vacuous: every old-format token contains one of the forms."""
    assert any(form in legacy_token("x", 1, "c", EMAIL) for form in readable_forms(EMAIL))


def test_a_token_with_an_empty_signature_is_rejected(engine: Engine, settings: Settings) -> None:
    """A valid token cut after its separator (signature empty) must not verify: a comparison
    that only looks at the bytes present would accept it. Both formats, both kinds of link."""
    send_id = sent(engine)
    for token, check in (
        (
            unsubscribe.token_for(settings, send_id),
            lambda t: unsubscribe.verify(settings, engine, t, TODAY),
        ),
        (
            legacy_token("s-2", 42, "birthday", EMAIL),
            lambda t: unsubscribe.verify(settings, engine, t, TODAY),
        ),
        (surveys.token_for(settings, send_id, 9), lambda t: surveys.verify(settings, t)),
    ):
        check(token)  # the whole token verifies
        head, separator, _ = token.rpartition(".")
        assert separator, "the token's signature follows its last '.'"
        for bad in (head + ".", head + ".="):
            with pytest.raises(tokens.InvalidToken):
                check(bad)
