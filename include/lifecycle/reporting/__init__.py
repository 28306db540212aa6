"""What the campaigns did for retention: funnels, conversions, uplift and monthly KPIs.

Everything is computed from the warehouse relative to an explicit `as_of`, by role:

* `queries`: everything read from the warehouse (SQLAlchemy Core over our tables; orders and
  signups from `include/sql/report_orders.sql` and `report_customers.sql`).
* `statistics`: proportions and the 95% Newcombe interval of the uplift over the holdout.
* `performance`: a run's funnel, conversions, revenue and uplift.
* `kpis`: retention by calendar month and lifetime value by signup cohort.
* `report`: the `Report` dataclasses and `build_report`, which puts the above together.
* `export`: a report as CSV tables and as a plain-text summary.
"""
