"""`suppression_sync`: SendGrid's suppression lists in, our own unsubscribes out (hourly).

Pulls bounces, spam reports, invalid emails, global and group unsubscribes into the
warehouse's `suppressions` table, then pushes unsubscribes made on our own pages to SendGrid.
An Airflow DAG built by `lifecycle.airflow.suppression_dag`.
"""

from lifecycle.airflow.suppression_dag import build_suppression_dag

suppression_sync = build_suppression_dag()
