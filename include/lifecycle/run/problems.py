"""The known failure classes as one line a person can act on (and a hint): shared by the
`lifecycle` command and the Airflow tasks, so both explain a bad warehouse URL, a missing table,
a broken spec or a refused key the same way, without a traceback."""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy import exc, make_url

from lifecycle.core.config import Settings

USAGE = 2  # exit code: bad arguments, an unknown campaign id, a URL that is no URL
FAILURE = 1  # exit code: the command ran and failed
DEBUG_HINT = "run again with --debug for the traceback"
DIALECT_HINT = (
    "PostgreSQL: postgresql+psycopg://USER:PASSWORD@HOST:5432/DATABASE; "
    "SQLite: sqlite:///path/to/warehouse.db"
)
# What SQLAlchemy raises for a URL it cannot use (unknown dialect, missing driver, no URL).
BAD_URL_ERRORS = (exc.NoSuchModuleError, exc.ArgumentError, ImportError, ValueError)


@dataclass(frozen=True)
class Problem:
    """What the user reads: one line, perhaps a hint, and the exit code."""

    message: str
    hint: str | None = None
    exit_code: int = FAILURE
    # A retry may succeed (the warehouse restarting, a dropped connection): Airflow retries.
    retryable: bool = False

    def one_line(self) -> str:
        return f"{self.message} (hint: {self.hint})" if self.hint else self.message


def safe_url(url: str) -> str:
    """The URL without its password, even when SQLAlchemy cannot parse it."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", url)


def first_line(error: BaseException) -> str:
    """The error's own message in one line (a DBAPI error's driver message, not SQLAlchemy's
    statement and parameters)."""
    source = error.orig if isinstance(error, exc.DBAPIError) and error.orig else error
    text = str(source).strip() or type(source).__name__
    return " ".join(text.splitlines()[0].split())


def redact(text: str, settings: Settings) -> str:
    """`text` without the secrets of `settings` (warehouse password, API key, link token
    secrets)."""
    url = settings.warehouse_url
    try:
        secrets = [make_url(url).password, settings.sendgrid_api_key, *settings.configured_secrets]
    except Exception:  # a URL SQLAlchemy cannot parse: shown as `safe_url` shows it
        text = text.replace(url, safe_url(url))
        secrets = [settings.sendgrid_api_key, *settings.configured_secrets]
    for secret in secrets:
        if secret and len(str(secret)) >= 4:
            text = text.replace(str(secret), "***")
    return text


def bad_url(url: str, error: BaseException) -> Problem:
    """A warehouse URL SQLAlchemy cannot use: a usage error naming the right schemes."""
    return Problem(
        f"warehouse URL {safe_url(url)} cannot be used: {first_line(error)}",
        DIALECT_HINT,
        USAGE,
    )


_MISSING_TABLE = (
    re.compile(r"no such table: (?:\w+\.)?(\w+)"),  # SQLite
    re.compile(r'relation "(?:\w+\.)?(\w+)" does not exist'),  # PostgreSQL
)


def _missing_table(error: exc.DBAPIError) -> str | None:
    for pattern in _MISSING_TABLE:
        found = pattern.search(str(error.orig))
        if found:
            return found.group(1)
    return None


def warehouse_problem(error: exc.DBAPIError, url: str) -> Problem:
    """A database error at the warehouse `url` (already without its password)."""
    table = _missing_table(error)
    if table is not None:
        from lifecycle.store import schema

        if table in schema.marketing.tables:
            hint = "`lifecycle db upgrade` creates the marketing tables"
        else:
            hint = (
                "load the source tables (`lifecycle seed` for demo data) or point the queries "
                "in include/sql/ (LIFECYCLE_SQL_DIR) at your warehouse's tables"
            )
        return Problem(f"the warehouse at {url} has no table {table!r}", hint)
    if is_connection_failure(error):
        return Problem(
            f"cannot connect to the warehouse at {url}: {first_line(error)}",
            "check host, port, user and password, and that the database exists "
            "(e.g. createdb); then `lifecycle db upgrade`",
            retryable=True,
        )
    return Problem(f"warehouse error at {url}: {first_line(error)}", DEBUG_HINT, retryable=True)


def is_connection_failure(error: BaseException) -> bool:
    """No connection was made: the warehouse is down, unknown or refuses us (no statement ran)."""
    return isinstance(error, exc.OperationalError) and error.statement is None


def known_problem(error: BaseException, url: str) -> Problem | None:
    """The one line for an error of a known class, at the warehouse `url` (any form: the
    password is hidden here); None for any other error."""
    from lifecycle.core.campaigns import SpecError
    from lifecycle.core.segments import SegmentError
    from lifecycle.core.templates import TemplateProblem
    from lifecycle.delivery import DeliveryStopped
    from lifecycle.feedback.suppressions import SendGridAPIError
    from lifecycle.feedback.tokens import NoSharedSecret
    from lifecycle.reporting.queries import ReportError
    from lifecycle.run.preflight import PreflightError

    if isinstance(error, exc.DBAPIError):
        return warehouse_problem(error, safe_url(url))
    if isinstance(error, exc.NoSuchModuleError | exc.ArgumentError):
        return bad_url(url, error)
    if isinstance(error, SpecError):
        return Problem(f"invalid campaign spec: {first_line(error)}", exit_code=USAGE)
    if isinstance(error, SegmentError):
        return Problem(f"invalid segment: {first_line(error)}", exit_code=USAGE)
    known = (
        TemplateProblem,
        PreflightError,
        DeliveryStopped,
        SendGridAPIError,
        ReportError,
        NoSharedSecret,
    )
    if isinstance(error, known):
        return Problem(first_line(error))
    return None
