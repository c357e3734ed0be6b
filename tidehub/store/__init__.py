"""Storage: one schema (schema.py), one queries module per domain, migrations; ``Store`` is the handle."""

from tidehub.store.database import Store

__all__ = ["Store"]
