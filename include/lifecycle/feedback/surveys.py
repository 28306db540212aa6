"""Survey answers: the feedback email's 0-10 rating links and what the customer answered.

Each rating link carries an opaque token (`lifecycle.feedback.tokens`) naming the surveyed email
(its ledger row) and the score of the link. Opening the link records nothing: mail scanners open
every link. The page posts the answer (`record`), one row per surveyed email: answering again
changes the score (and the comment, when one is sent), never adds a response.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, select

from lifecycle.core.config import Settings
from lifecycle.feedback import tokens
from lifecycle.feedback.tokens import InvalidToken, Recipient
from lifecycle.store import dialect
from lifecycle.store.schema import survey_responses

URL_PATH = "/lifecycle/feedback/"
PURPOSE = "survey"
SCORES = range(11)
MAX_COMMENT_CHARS = 2000


@dataclass(frozen=True)
class Answer:
    send_id: int
    score: int


@dataclass(frozen=True)
class Stored:
    score: int
    comment: str | None


def token_for(settings: Settings, send_id: int, score: int) -> str:
    if score not in SCORES:
        raise ValueError(f"a survey score is 0 to 10, got {score!r}")
    return tokens.sign(settings, PURPOSE, send_id, score)


def survey_url(settings: Settings, send_id: int, score: int) -> str:
    """The rating link of `score` in the email that is ledger row `send_id`."""
    token = token_for(settings, send_id, score)
    return f"{settings.public_url.rstrip('/')}{URL_PATH}{token}"


def verify(settings: Settings, token: str) -> Answer:
    """The answer a rating link stands for; InvalidToken if the link is not ours."""
    send_id, score = tokens.load(settings, PURPOSE, token, 2)
    if score not in SCORES:
        raise InvalidToken("survey token holds no score from 0 to 10")
    return Answer(send_id, score)


def record(
    engine: Engine, surveyed: Recipient, score: int, comment: str | None, at: datetime
) -> None:
    """Store `score` as the answer to the email `surveyed`; `comment` replaces the stored one
    (an empty one removes it) unless it is None."""
    if score not in SCORES:
        raise ValueError(f"a survey score is 0 to 10, got {score!r}")
    if comment is not None and len(comment) > MAX_COMMENT_CHARS:
        raise ValueError(f"a comment holds at most {MAX_COMMENT_CHARS} characters")
    values = {
        "send_id": surveyed.send_id,
        "campaign_id": surveyed.campaign_id,
        "occurrence_key": surveyed.occurrence_key,
        "customer_id": surveyed.customer_id,
        "score": score,
        "comment": comment or None,
        "answered_at": at,
        "updated_at": at,
    }
    changes = {"score": score, "updated_at": at}
    if comment is not None:
        changes["comment"] = comment or None
    statement = dialect.insert(engine, survey_responses).values(values)
    with engine.begin() as conn:
        conn.execute(statement.on_conflict_do_update(index_elements=["send_id"], set_=changes))


def stored(engine: Engine, send_id: int) -> Stored | None:
    """The answer recorded for the email `send_id`, if any."""
    r = survey_responses.c
    with engine.connect() as conn:
        row = conn.execute(select(r.score, r.comment).where(r.send_id == send_id)).first()
    return None if row is None else Stored(row.score, row.comment)
