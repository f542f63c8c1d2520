"""The reference collector: MQTT ingest, SQLite/PostgreSQL store, governed queries, audit."""

SESSION_EXPIRY_S = 7 * 86400  # a collector down for up to a week misses nothing; its broker queue then goes
