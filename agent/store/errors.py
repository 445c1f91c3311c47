"""Errors raised by the store.

One root class (`StoreError`); leaves that describe a caller mistake also inherit the matching
builtin (e.g. an unknown slot is also a `KeyError`) so generic handlers keep working.
"""

from __future__ import annotations


class StoreError(Exception):
    """Root of every error the store raises on purpose."""


class StoreCorrupt(StoreError):  # noqa: N818 (name fixed by the brief)
    """The database file failed `PRAGMA quick_check` or is not a SQLite database at all."""


class SchemaTooNewError(StoreError):
    """The file was written by a newer agent; refusing to guess how to read it."""


class StoreUsageError(StoreError, RuntimeError):
    """The store was used the wrong way (mutation outside a transaction, nested transaction...)."""


class AlreadyDispensed(StoreError):  # noqa: N818 (name fixed by the brief)
    """The slot already has a ledger row (begun or resolved): it must never be dispensed again."""


class OutcomeAlreadyRecorded(StoreError):  # noqa: N818 (name fixed by the brief)
    """A slot already has its one terminal outcome."""


class UnknownSlotError(StoreError, KeyError):
    """No ledger row for this slot id."""


class UnknownEventError(StoreError, KeyError):
    """No outbox row for this sequence number (never appended, dropped, or pruned)."""


class CommandAlreadyRecordedError(StoreError):
    """An inbound command id was already executed and recorded."""


class BacklogNotEmptyError(StoreError):
    """A factory reset was refused because undelivered events would be lost."""
