"""The project's one exception hierarchy.

Every error a user can cause is a :class:`TrackerError` whose message names the fix.
Driver errors are translated into these only where the code meets the database
(:mod:`tracker.db`).
"""
from __future__ import annotations


class TrackerError(Exception):
    """Base class of every error the CLI reports as ``Error: ...`` with exit status 1."""

    hint: str | None = None
    exit_code: int = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        if hint is not None:
            self.hint = hint

    def __str__(self) -> str:
        base = super().__str__()
        return f"{base}\nHint: {self.hint}" if self.hint else base


class ConfigError(TrackerError):
    """Bad settings, URLs or command-line combinations."""


class SpecError(TrackerError):
    """An experiment spec is malformed; the message names the field."""


class DatabaseError(TrackerError):
    """The database refused an operation or could not be reached."""


class DatabaseUnavailable(DatabaseError):
    """The database does not answer (connection refused, dropped, timed out): retry later."""


class TransientDatabaseError(DatabaseError):
    """The transaction lost a race (deadlock, serialization failure, SQLite lock): retry it."""


class SchemaOutOfDate(DatabaseError):
    """The database is not at the head revision of our migrations."""


class ReadOnlyViolation(DatabaseError):
    """``tracker sql`` was asked to write."""


class UnknownModelError(TrackerError):
    """A model name is neither registered nor a local folder."""


class ModelUnusable(UnknownModelError):
    """A model folder exists but cannot be loaded anywhere (broken config, no weights)."""


class UnknownExperimentError(TrackerError):
    """No spec of that name and no such spec file."""


class DatasetError(TrackerError):
    """A dataset cannot be loaded (offline hub, missing local copy, bad rows)."""


class AmbiguousSampleError(TrackerError):
    """A sample key matches several samples of a run (ed02's padded variants, one key in two datasets)."""


class DeviceError(TrackerError):
    """A device was asked for that this machine does not have."""


class SelfCheckFailed(TrackerError):
    """A model failed the scorer's start-up invariant probes on this device."""


class InputTooLongError(TrackerError):
    """A sequence does not fit the model's context window."""


class EmptyAnswerError(TrackerError):
    """A sample's answer tokenizes to nothing, so there is no NLL to measure."""


class DatabaseMissing(DatabaseError):
    """A read command was pointed at a database that does not exist (it never creates one)."""


class ReaderRoleUnavailable(DatabaseError):
    """``tracker sql`` has no SELECT-only login role to run the statement as (PostgreSQL)."""


class QueryTimeLimit(DatabaseError):
    """A ``tracker sql`` statement ran past its time limit and the database stopped it."""


class QueryCancelled(TrackerError):
    """SIGINT or SIGTERM stopped a ``tracker sql`` statement; exits 128 + the signal number."""

    def __init__(self, message: str, signal_number: int, hint: str | None = None) -> None:
        super().__init__(message, hint)
        self.exit_code = 128 + signal_number
