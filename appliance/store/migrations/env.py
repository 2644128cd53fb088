"""Alembic environment: the appliance passes its own connection in `config.attributes["connection"]`."""

from alembic import context

from appliance.store.tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through appliance.store.schema.upgrade()")
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
