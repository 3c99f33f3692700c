"""Every setting read from the environment, read here and nowhere else.

One rule for flags: a variable is "on" when it is ``1``, ``true``, ``yes`` or ``on``
(any case); anything else, ``0`` and the empty string included, is "off". Hugging Face's
own libraries follow the same rule for ``HF_HUB_OFFLINE``.
"""
from __future__ import annotations

import os
from pathlib import Path

from tracker.errors import ConfigError

DEFAULT_DB_URL = "sqlite:///tracker.db"
ENV_DB = "TRACKER_DB"
ENV_READER_DB = "TRACKER_READER_DB"
ENV_DATA_DIR = "TRACKER_DATA_DIR"
ENV_CACHE_DIR = "TRACKER_CACHE_DIR"
ENV_MLFLOW_URI = "MLFLOW_TRACKING_URI"
HUB_OFFLINE_FLAGS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
DATASETS_OFFLINE_FLAGS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
_ON = {"1", "true", "yes", "on"}


def flag_is_on(name: str) -> bool:
    """Whether the environment variable ``name`` is set to an "on" value (see the module docstring)."""
    return os.environ.get(name, "").strip().lower() in _ON


def hub_offline() -> bool:
    """Models and tokenizers must not be fetched from the Hugging Face hub."""
    return any(flag_is_on(name) for name in HUB_OFFLINE_FLAGS)


def datasets_offline() -> bool:
    """Datasets must not be fetched from the Hugging Face hub."""
    return any(flag_is_on(name) for name in DATASETS_OFFLINE_FLAGS)


SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")
_URL_ALIASES = {"postgres": "postgresql+psycopg", "postgresql": "postgresql+psycopg",
                "postgresql+psycopg2": "postgresql+psycopg"}
_SUPPORTED = ("sqlite", "postgresql+psycopg")


def resolve_db_url(explicit: str | None = None) -> str:
    """``--db URL``, else ``$TRACKER_DB``, else ``sqlite:///tracker.db`` in the working directory.

    The one place a database argument is parsed: a SQLite file path (``tracker.db``,
    ``./runs/x.sqlite``, any existing file) becomes ``sqlite:///PATH``; ``postgres://`` and
    ``postgresql://`` become ``postgresql+psycopg://`` (the driver we ship); any other
    scheme (``mysql://``) or a string that is neither a URL nor a SQLite path is a
    :class:`~tracker.errors.ConfigError` naming the fix.
    """
    value = (explicit or os.environ.get(ENV_DB) or DEFAULT_DB_URL).strip()
    source = "--db" if explicit else (f"${ENV_DB}" if os.environ.get(ENV_DB) else "the default")
    if "://" not in value:
        return _sqlite_path_url(value, source)
    from sqlalchemy.engine import (
        make_url,  # here, not at the top: workers import settings without a database stack
    )
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(value)
    except ArgumentError as err:
        raise ConfigError(f"{source} {value!r} is not a database URL ({err}).", hint=_DB_HINT) from err
    driver = _URL_ALIASES.get(url.drivername, url.drivername)
    if driver.startswith("sqlite"):
        driver = "sqlite"
    if driver not in _SUPPORTED:
        raise ConfigError(f"{source} {redact_url(value)}: the tracker does not support {url.drivername!r} databases.",
                          hint=_DB_HINT)
    return value if driver == url.drivername else url.set(drivername=driver).render_as_string(hide_password=False)


_DB_HINT = ("use a SQLite file (`--db tracker.db` or sqlite:///PATH) or PostgreSQL "
            "(`--db postgresql+psycopg://user@host/dbname`; postgres:// works too)")


def _sqlite_path_url(value: str, source: str) -> str:
    path = Path(value).expanduser()
    if value and (path.suffix.lower() in SQLITE_SUFFIXES or path.is_file()):
        return f"sqlite:///{path}"
    raise ConfigError(
        f"{source} {value!r} is neither a database URL nor a SQLite file path.",
        hint="a SQLite file path ends in .db, .sqlite or .sqlite3 (or names an existing file); "
             "otherwise " + _DB_HINT,
    )


def resolve_reader_url(explicit: str | None = None) -> str | None:
    """``--reader-db URL``, else ``$TRACKER_READER_DB``, else None (``tracker sql`` derives one)."""
    return explicit or os.environ.get(ENV_READER_DB) or None


def redact_url(url: str) -> str:
    """The URL without its password, for logs and MLflow params."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def data_dir(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """``--data-dir``, else ``$TRACKER_DATA_DIR``, else None (use the hub)."""
    value = explicit or os.environ.get(ENV_DATA_DIR)
    return Path(value).expanduser() if value else None


def model_cache_dir() -> Path:
    """Where converted models live: ``$TRACKER_CACHE_DIR`` or ``~/.cache/tracker/models/``."""
    return Path(os.environ.get(ENV_CACHE_DIR) or Path.home() / ".cache" / "tracker" / "models").expanduser()


def mlflow_tracking_uri() -> str | None:
    """``$MLFLOW_TRACKING_URI`` when set."""
    return os.environ.get(ENV_MLFLOW_URI) or None


def quiet_mlflow() -> None:
    """No MLflow system-metrics thread and no usage telemetry (these machines are often offline),
    unless the user asked for them."""
    os.environ.setdefault("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "false")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def fake_backend_env() -> dict[str, str | bool | None]:
    """Test hooks of the ``test-fake`` backend (per-job sleep, a calls log, a condition that fails,
    a self-check that fails)."""
    hooks: dict = {key: os.environ.get(f"TRACKER_FAKE_{key.upper()}") or None
                   for key in ("sleep", "calls", "fail_condition")}
    hooks["fail_self_check"] = flag_is_on("TRACKER_FAKE_FAIL_SELF_CHECK")
    return hooks


def pin_gpu(index: int) -> str:
    """Make GPU ``index`` (counted among those this process may see) the only one it sees, before
    torch starts CUDA; returns its physical id (``CUDA_VISIBLE_DEVICES`` entry, e.g. from SLURM)."""
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    if visible and index >= len(visible):
        from tracker.errors import DeviceError

        raise DeviceError(f"--gpu {index}: this process may use {len(visible)} GPU(s) "
                          f"(CUDA_VISIBLE_DEVICES={','.join(visible)})",
                          hint=f"pick --gpu between 0 and {len(visible) - 1}")
    physical = visible[index] if visible else str(index)
    os.environ["CUDA_VISIBLE_DEVICES"] = physical
    return physical


def child_environment(**overrides: str) -> dict[str, str]:
    """The environment for a worker subprocess: this one's, with ``overrides``."""
    return {**os.environ, **overrides}
