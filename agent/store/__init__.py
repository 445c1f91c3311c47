"""Durable state of the unit: one SQLite file (WAL): outbox, dose ledger, hash-chained audit log."""
