"""The Airflow side of Lifecycle, and the only engine room that imports Airflow.

It reads like a small provider: `connections` turns the connections `lifecycle_warehouse` and
`sendgrid_default` into `Settings` (at task run time, never while parsing); one factory per
kind of DAG (`campaign_dag`, `features_dag`, `report_dag`, `suppression_dag`) wraps engine
steps as thin tasks, with `params` (the trigger form), `schedules` (start date, Assets),
`docs` and `notifier` beside them; `plugin` builds the web apps the Airflow plugin mounts.
Parsing a DAG file only reads the YAML specs: the pipeline, the warehouse and pandas are
imported inside the tasks.
"""
