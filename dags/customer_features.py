"""`customer_features`: the features snapshot campaigns read, published as an Airflow Asset."""

from lifecycle.airflow.adapter import build_features_dag

customer_features = build_features_dag()
