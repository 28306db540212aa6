"""`privacy_request`: a person's export or erasure request, answered from the Airflow UI.

Triggered by hand with two params: the address and the action. The task runs what
`lifecycle privacy export|erase` runs. An export is written as a JSON file (owner-only) under
`privacy_exports/` under `$LIFECYCLE_SHARED_DIR` (required when tasks run on many hosts) or
`$LIFECYCLE_HOME`, never to the task log or an XCom; the XCom holds the file's
path and row counts, or for an erasure the rows changed per table.
"""

from __future__ import annotations

import json
import os
import re
from datetime import UTC, datetime
from typing import Any

from airflow.sdk import DAG, Param, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException

from lifecycle.airflow.connections import runtime_settings, warehouse_engine
from lifecycle.airflow.schedules import START_DATE

DOC_MD = """# privacy_request

Answer one person's request about their data. Trigger with **email** (matched trimmed and
case-insensitively) and **action**:

* `export`: everything the marketing tables hold about the address, as a JSON file under
  `privacy_exports/` in `$LIFECYCLE_SHARED_DIR` (or `$LIFECYCLE_HOME` on one host; the task
  log names the file);
* `erase`: the address's rows deleted or pseudonymised in one transaction, and a hashed
  suppression kept so the address is never mailed again.

The source tables (customers, orders) belong to the company and are not touched. The address
stays in this DAG run's conf: delete the run once the request is answered.
"""


def build_privacy_dag() -> DAG:
    """`privacy_request`: never scheduled; one `answer` task per triggered request."""

    @dag(
        dag_id="privacy_request",
        description="Export or erase what the marketing tables hold about one email address.",
        doc_md=DOC_MD,
        schedule=None,
        start_date=START_DATE,
        catchup=False,
        tags=["lifecycle", "privacy"],
        params={
            "email": Param(
                "",
                type="string",
                pattern=r"^\s*[^@\s]+@[^@\s]+\s*$",
                title="Email address",
                description="The address the request is about.",
            ),
            "action": Param(
                "export",
                type="string",
                enum=["export", "erase"],
                title="Action",
                description="export: a JSON file of everything held; erase: delete it.",
            ),
        },
        default_args={"owner": "privacy", "retries": 1},
    )
    def privacy_request() -> None:
        answer()

    return privacy_request()


@task
def answer() -> dict[str, Any]:
    from lifecycle.feedback import privacy

    context = get_current_context()
    email, action = str(context["params"]["email"]), str(context["params"]["action"])
    settings = runtime_settings()
    engine = warehouse_engine(settings)
    if action == "erase":
        changed = privacy.erase(engine, settings, email, datetime.now(UTC))
        print(f"erased: {changed}")
        return {"action": "erase", "changed": changed}
    if settings.runs_on_many_hosts and settings.shared_dir is None:
        raise AirflowFailException(
            f"set LIFECYCLE_SHARED_DIR to a directory every worker mounts: {settings.executor} "
            "may run this task on any worker, and the export would stay on that worker's disk"
        )
    held = privacy.export(engine, settings, email)
    folder = settings.exports_dir
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (re.sub(r"[^A-Za-z0-9._-]", "_", context["dag_run"].run_id) + ".json")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(held, handle, indent=2, ensure_ascii=False, sort_keys=True)
    rows = {name: len(value) for name, value in held.items() if isinstance(value, list)}
    print(f"exported to {path}: {rows}")
    return {"action": "export", "path": str(path), "rows": rows}
