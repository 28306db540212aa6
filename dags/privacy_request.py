"""`privacy_request`: export or erase what the marketing tables hold about one address.

Triggered by hand from the Airflow UI (params: email, action). An Airflow DAG built by
`lifecycle.airflow.privacy_dag`.
"""

from lifecycle.airflow.privacy_dag import build_privacy_dag

privacy_request = build_privacy_dag()
