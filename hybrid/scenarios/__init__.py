"""Shipped example studies.  Each is data (a JSON file) plus a few functions; copy one to start yours."""

from hybrid.scenarios import construction_audit

__all__ = ["construction_audit"]
