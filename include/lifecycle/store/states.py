"""The states a ledger row, its skip or failure reason and a campaign run can be in.

They are stored as their string values; `StrEnum` members compare equal to those strings, so
SQL parameters, JSON counts and log lines read the same as before. The warehouse refuses any
other value (CHECK constraints, migration 0003).

A ledger row moves like this (one row per campaign, occurrence key and customer):

    planned ──claim──► sending ──202──► sent
       ▲                  │ ├──4xx/5xx──► failed ──(retryable, next run)──► planned
       │                  │ └──timeout / crash──► unknown ──SendGrid's event──► sent
       │                  │                              └──(no event: requeue-unknown)──► planned
       └── waiting for the customer's send window (send_after in the future)
    skipped (reason): never sent — policy at planning, suppressed or expired later
"""

from __future__ import annotations

from enum import StrEnum


class LedgerStatus(StrEnum):
    PLANNED = "planned"  # will be sent by run_id once send_after has passed
    SKIPPED = "skipped"  # never sent; reason says why
    SENDING = "sending"  # claimed by the attempt in claimed_by; a request may be in flight
    SENT = "sent"  # SendGrid (or the outbox) accepted it
    FAILED = "failed"  # refused or never left: http_status, error, retryable
    UNKNOWN = "unknown"  # may or may not have reached SendGrid: never re-sent automatically


# Rows that count towards a frequency cap: sent, or on their way.
TAKEN = (LedgerStatus.PLANNED, LedgerStatus.SENDING, LedgerStatus.SENT, LedgerStatus.UNKNOWN)


class SkipReason(StrEnum):
    """Why a ledger row is `skipped`."""

    MISSING_EMAIL = "missing_email"
    INVALID_EMAIL = "invalid_email"
    NO_CONSENT = "no_consent"
    SUPPRESSED = "suppressed"  # at planning, or unsubscribed/bounced before its send
    HOLDOUT = "holdout"
    FREQUENCY_CAP = "frequency_cap"
    EXPIRED = "expired"  # its send window closed before a run could send it
    SANDBOX = "sandbox"  # validated by SendGrid's sandbox mode, not delivered
    DUPLICATE = "duplicate_address"  # another customer's email of this occurrence, same inbox
    ERASED = "erased"  # the person was erased; only the address's hash is kept


class FailReason(StrEnum):
    """Why a row is `failed` or `unknown` (the HTTP status and error say more).

    A 500, 502 or 503 still answered after every attempt leaves the reason NULL: the row is
    `failed`, retryable, and its http_status says the rest.
    """

    REJECTED = "rejected"  # SendGrid answered 4xx/5xx that retrying would not change
    RATE_LIMITED = "rate_limited"  # still 429 after every attempt (retryable)
    RENDER_ERROR = "render_error"
    NOT_ATTEMPTED = "not_attempted"
    GATEWAY_TIMEOUT = "gateway_timeout"  # 504: may have been accepted
    CONNECTION = "connection"  # could not connect: surely not sent
    TIMEOUT = "timeout"  # no answer after the request was written: may have been accepted
    DISCONNECTED = "disconnected"
    INTERRUPTED = "interrupted"  # an attempt died with the row in flight
    TRANSPORT_ERROR = "transport_error"


class RunStatus(StrEnum):
    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"  # rows unknown or left undelivered, or nothing could be sent
    STOPPED = "stopped"  # SendGrid refused the key or the sender: the whole run stopped
    REJECTED = "rejected"  # the approver said no: nothing sent, its planned rows released
    EXPIRED = "expired"  # nobody approved in time: nothing sent, its planned rows released


class TestSendStatus(StrEnum):
    """What became of one test email (a `test_sends` row) sent to an internal recipient."""

    SENT = "sent"
    SANDBOX = "sandbox"  # validated by SendGrid's sandbox mode, not delivered
    FAILED = "failed"
    UNKNOWN = "unknown"
