"""The reference collector: MQTT ingest, SQLite/PostgreSQL store, governed queries, audit."""
