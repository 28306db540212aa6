"""`customer_features`: the features snapshot campaigns read, published as an Airflow Asset.

Hourly; campaigns scheduled `after_features` run on each fresh snapshot.
"""

from lifecycle.airflow.features_dag import build_features_dag

customer_features = build_features_dag()
