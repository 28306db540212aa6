"""Alembic environment: runs on the engine `lifecycle.store.warehouse` hands over."""

from alembic import context

from lifecycle.store.schema import marketing

engine = context.config.attributes["engine"]
with engine.begin() as connection:
    context.configure(
        connection=connection,
        target_metadata=marketing,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    context.run_migrations()
