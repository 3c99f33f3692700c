"""Alembic migrations of the tracker schema (a package so it ships in the wheel)."""
