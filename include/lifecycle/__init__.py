"""Lifecycle: retention email automation on Apache Airflow."""
