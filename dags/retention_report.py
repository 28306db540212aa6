"""`retention_report`: the daily campaign and retention report, in the Airflow task log.

The same figures as `lifecycle report` and the Campaigns dashboard (which computes them live);
this DAG keeps a dated record in the logs and returns the headline numbers as a small XCom.
"""

from lifecycle.airflow.report_dag import build_report_dag

retention_report = build_report_dag()
