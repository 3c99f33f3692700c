"""CLI commands, one module per area; each exports ``COMMANDS`` (see :mod:`tracker.cli`)."""
