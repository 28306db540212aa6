"""What every command shares: argument types, the warehouse and settings of a call, and how an
error becomes one line on stderr with an exit code (`explain`, used by `lifecycle.cli.main`)."""

from __future__ import annotations

import argparse
from typing import TypeAlias

from sqlalchemy import Engine

from lifecycle.core.config import Settings, load_settings
from lifecycle.run import problems
from lifecycle.run.problems import DEBUG_HINT, FAILURE, USAGE, Problem, first_line, safe_url
from lifecycle.store import warehouse

# What `add_subparsers` returns; each topic module adds its commands to it.
Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"

# Re-exported: the one-line explanations live in run.problems, shared with the Airflow tasks.
__all__ = ["DEBUG_HINT", "FAILURE", "USAGE", "Problem", "first_line", "safe_url"]


class UsageError(Exception):
    """A bad input found after parsing (an unknown campaign id, say): one line, exit 2."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


# --- settings, warehouse, campaigns --------------------------------------------------------
def settings_from(args: argparse.Namespace) -> Settings:
    """The environment's settings, with `--warehouse` if it was given."""
    return load_settings(**({"warehouse_url": args.warehouse} if args.warehouse else {}))


def engine_from(args: argparse.Namespace) -> Engine:
    """The warehouse engine; a URL SQLAlchemy cannot use is a usage error."""
    url = settings_from(args).warehouse_url
    try:
        return warehouse.engine_for(url)
    except problems.BAD_URL_ERRORS as error:
        problem = problems.bad_url(url, error)
        raise UsageError(problem.message, hint=problem.hint) from error


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
def redact(text: str, args: argparse.Namespace) -> str:
    """Secrets of this call's settings never reach the terminal."""
    try:
        settings = settings_from(args)
    except Exception:
        return text
    return problems.redact(text, settings)


def explain(error: Exception, args: argparse.Namespace) -> Problem:
    """The one line (and hint, and exit code) for an error that reached `main`."""
    from alembic.util import CommandError

    if isinstance(error, UsageError):
        return Problem(str(error), error.hint, USAGE)
    if isinstance(error, CommandError):  # Alembic: a revision that does not exist, say
        hint = "`lifecycle db current` shows the current and the head revision"
        return Problem(f"db: {first_line(error)}", hint, USAGE)
    try:
        url = settings_from(args).warehouse_url
    except Exception:
        url = "(the configured URL)"
    known = problems.known_problem(error, url)
    if known is not None:
        return known
    if isinstance(error, OSError) and error.strerror:
        where = f": {error.filename}" if error.filename else ""
        return Problem(f"{error.strerror}{where}")
    return Problem(f"unexpected error: {type(error).__name__}: {first_line(error)}", DEBUG_HINT)
