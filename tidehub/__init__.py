"""Tidehub: a self-hosted AI generation gateway."""

__version__ = "0.1.0"
