"""The warehouse: schema and migrations, typed states, the send ledger and campaign runs,
coupons, and the dialect helpers that keep SQLite and PostgreSQL on one code path."""
