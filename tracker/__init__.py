"""tracker: a database-backed experiment tracker and GPU job queue for directed KV-cache experiments."""
from __future__ import annotations

__version__ = "0.1.0"
