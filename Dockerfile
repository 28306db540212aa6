# The Lifecycle image for docker-compose.yml: Airflow 3.3.2 plus exactly this repo's runtime lock
# (requirements.txt; the dev lock, requirements-dev.txt, never goes in).
FROM apache/airflow:3.3.2-python3.11

# Dependencies first, so code changes do not reinstall them. The lock pins apache-airflow==3.3.2,
# the same version as the base image, so pip keeps Airflow as it is.
COPY --chown=airflow:0 requirements.txt /opt/lifecycle/requirements.txt
RUN pip install --no-cache-dir -r /opt/lifecycle/requirements.txt

# Editable install: lifecycle.core.config finds templates/, include/campaigns and include/sql
# relative to the package, exactly as in a checkout.
COPY --chown=airflow:0 . /opt/lifecycle
RUN pip install --no-cache-dir --no-deps -e /opt/lifecycle \
    && mkdir -p /opt/airflow/auth /opt/airflow/lifecycle \
    && chmod -R g+rwX /opt/airflow/auth /opt/airflow/lifecycle /opt/lifecycle

ENV AIRFLOW__CORE__DAGS_FOLDER=/opt/lifecycle/dags \
    AIRFLOW__CORE__PLUGINS_FOLDER=/opt/lifecycle/plugins \
    LIFECYCLE_HOME=/opt/airflow/lifecycle
