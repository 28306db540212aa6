"""What every command shares: argument types, the warehouse and settings of a call, and how an
error becomes one line on stderr with an exit code (`explain`, used by `lifecycle.cli.main`)."""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from typing import TypeAlias

from sqlalchemy import Engine, exc, make_url

from lifecycle.core.config import Settings, load_settings
from lifecycle.store import warehouse

# What `add_subparsers` returns; each topic module adds its commands to it.
Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"

USAGE = 2  # exit code: bad arguments, an unknown campaign id, a URL that is no URL
FAILURE = 1  # exit code: the command ran and failed
DEBUG_HINT = "run again with --debug for the traceback"
DIALECT_HINT = (
    "PostgreSQL: postgresql+psycopg://USER:PASSWORD@HOST:5432/DATABASE; "
    "SQLite: sqlite:///path/to/warehouse.db"
)


class UsageError(Exception):
    """A bad input found after parsing (an unknown campaign id, say): one line, exit 2."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


@dataclass(frozen=True)
class Problem:
    """What the user reads: one line, perhaps a hint, and the exit code."""

    message: str
    hint: str | None = None
    exit_code: int = FAILURE


# --- settings, warehouse, campaigns --------------------------------------------------------
def settings_from(args: argparse.Namespace) -> Settings:
    """The environment's settings, with `--warehouse` if it was given."""
    return load_settings(**({"warehouse_url": args.warehouse} if args.warehouse else {}))


def engine_from(args: argparse.Namespace) -> Engine:
    """The warehouse engine; a URL SQLAlchemy cannot use is a usage error."""
    url = settings_from(args).warehouse_url
    try:
        return warehouse.engine_for(url)
    except (exc.NoSuchModuleError, exc.ArgumentError, ImportError, ValueError) as error:
        raise UsageError(
            f"warehouse URL {safe_url(url)} cannot be used: {first_line(error)}",
            hint=DIALECT_HINT,
        ) from error


def known_campaign(args: argparse.Namespace, campaign_id: str, *, with_runs: bool = False) -> None:
    """Refuse a campaign id that no spec file has, valid or not (nor, `with_runs`, any run in
    the warehouse)."""
    from lifecycle.core.campaigns import load_campaigns

    known = set(load_campaigns(settings_from(args).campaigns_dir).ids)
    if with_runs and campaign_id not in known:
        from lifecycle.reporting.queries import campaign_ids

        known.update(campaign_ids(engine_from(args)))
    if campaign_id not in known:
        raise UsageError(f"no campaign {campaign_id!r}; known: {', '.join(sorted(known))}")


# --- errors as one line --------------------------------------------------------------------
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


def redact(text: str, args: argparse.Namespace) -> str:
    """Secrets of this call's settings never reach the terminal."""
    try:
        settings = settings_from(args)
    except Exception:
        return text
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


def _warehouse_problem(error: exc.DBAPIError, url: str) -> Problem:
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
    if isinstance(error, exc.OperationalError) and error.statement is None:
        return Problem(
            f"cannot connect to the warehouse at {url}: {first_line(error)}",
            "check host, port, user and password, and that the database exists "
            "(e.g. createdb); then `lifecycle db upgrade`",
        )
    return Problem(f"warehouse error at {url}: {first_line(error)}", DEBUG_HINT)


def explain(error: Exception, args: argparse.Namespace) -> Problem:
    """The one line (and hint, and exit code) for an error that reached `main`."""
    from alembic.util import CommandError

    from lifecycle.core.campaigns import SpecError
    from lifecycle.core.segments import SegmentError
    from lifecycle.core.templates import TemplateProblem
    from lifecycle.delivery import DeliveryStopped
    from lifecycle.feedback.suppressions import SendGridAPIError
    from lifecycle.reporting.queries import ReportError
    from lifecycle.run.preflight import PreflightError

    if isinstance(error, UsageError):
        return Problem(str(error), error.hint, USAGE)
    if isinstance(error, exc.DBAPIError):
        try:
            url = safe_url(settings_from(args).warehouse_url)
        except Exception:
            url = "(the configured URL)"
        return _warehouse_problem(error, url)
    if isinstance(error, CommandError):  # Alembic: a revision that does not exist, say
        hint = "`lifecycle db current` shows the current and the head revision"
        return Problem(f"db: {first_line(error)}", hint, USAGE)
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
    )
    if isinstance(error, known):
        return Problem(first_line(error))
    if isinstance(error, OSError) and error.strerror:
        where = f": {error.filename}" if error.filename else ""
        return Problem(f"{error.strerror}{where}")
    return Problem(f"unexpected error: {type(error).__name__}: {first_line(error)}", DEBUG_HINT)
