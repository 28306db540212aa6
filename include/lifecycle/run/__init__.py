"""A campaign run, the one code path of the DAG tasks and of `lifecycle run`, one module a phase:

    preflight ──► plan ──► deliver (one call per batch, retried at will) ──► finalize

* `preflight`: refuse to start a run that cannot succeed (warehouse revision, segment,
  templates, transport), saying what to fix.
* `plan`: the run row, the ledger rows (audience × policies), batches of due rows; a dry run
  renders instead (`dry_run`).
* `deliver`: claim a batch's rows, compose them (`compose`), send them concurrently, record.
* `finalize`: count the outcomes and judge the run (`RunOutcome`).
* `test_sends`: real customers' emails to internal recipients only, before a run.
* `campaign`: all phases in one process (`lifecycle run`).

Every phase reads and writes the warehouse, so any of them can be retried. `rows` is the one
shape of an email to render; `compose.Composer.email` renders every one of them.
"""
