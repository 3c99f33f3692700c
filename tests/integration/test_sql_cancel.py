"""`tracker sql` stops runaway statements: a time limit, SIGINT/SIGTERM, a lost connection.

Each case runs the real CLI in a subprocess on SQLite and on the real PostgreSQL and
measures the time from the signal to the statement being gone on the server
(PostgreSQL: no active `tracker sql` query left in pg_stat_activity; SQLite: the
process that runs the statement has exited). Bounds are generous for a loaded 2-core box.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from tracker.db import get_engine, is_sqlite
from tracker.db.reader_role import ensure_reader_role

ROOT = Path(__file__).resolve().parents[2]
# Endless on both databases; the marker finds it in pg_stat_activity.
ENDLESS = "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT count(*) /* {marker} */ FROM r"
BOUND_S = 10.0


def _start(url: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.Popen([sys.executable, "-m", "tracker.cli", "--db", url, "sql", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _active_pids(pg_admin, url: str, marker: str) -> list[int]:
    with pg_admin.connect() as conn:
        return list(conn.execute(text(
            "SELECT pid FROM pg_stat_activity WHERE datname = :db AND application_name = 'tracker sql' "
            "AND state = 'active' AND query LIKE :q"), {"db": make_url(url).database, "q": f"%{marker}%"}).scalars())


def _has_open(pid: int, path: str) -> bool:
    """Whether process ``pid`` has ``path`` open (a descriptor may close while we look)."""
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            if os.path.realpath(os.readlink(fd)) == path:
                return True
        except OSError:
            continue
    return False


def _wait_until_running(proc: subprocess.Popen, url: str, pg_admin, marker: str) -> None:
    """Until the statement runs: in pg_stat_activity, or (SQLite) the process has the file open."""
    deadline = time.monotonic() + 60
    path = os.path.realpath(make_url(url).database) if is_sqlite(url) else None
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        if path is None:
            if _active_pids(pg_admin, url, marker):
                return
        else:
            if _has_open(proc.pid, path):
                time.sleep(0.5)  # from opening the file to stepping the endless statement
                return
        time.sleep(0.05)
    pytest.fail("the statement never started")


def _prepare(url: str) -> None:
    if not is_sqlite(url):
        ensure_reader_role(get_engine(url))


@pytest.fixture
def pg_admin_or_none(request, db_url):
    return None if is_sqlite(db_url) else request.getfixturevalue("pg_admin")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_cancels_the_statement_on_the_server(db_url, pg_admin_or_none, signum):
    _prepare(db_url)
    marker = f"cancel_{signum.name}_{os.getpid()}"
    proc = _start(db_url, ENDLESS.format(marker=marker), "--timeout", "0")
    try:
        _wait_until_running(proc, db_url, pg_admin_or_none, marker)
        sent = time.monotonic()
        proc.send_signal(signum)
        if pg_admin_or_none is not None:
            while _active_pids(pg_admin_or_none, db_url, marker):
                assert time.monotonic() - sent < BOUND_S, "the server still runs the statement"
                time.sleep(0.05)
        _, err = proc.communicate(timeout=BOUND_S)
        gone = time.monotonic() - sent
    finally:
        proc.kill()
        proc.wait()
    assert gone < BOUND_S
    assert proc.returncode == 128 + signum, err
    assert f"Error: Cancelled by {signum.name}: the statement was stopped on the database." in err
    assert "Traceback" not in err


def test_the_time_limit_stops_an_endless_statement(db_url, pg_admin_or_none):
    _prepare(db_url)
    marker = f"timeout_{os.getpid()}"
    started = time.monotonic()
    proc = _start(db_url, ENDLESS.format(marker=marker), "--timeout", "2")
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    # Python start-up included; the statement itself is stopped at 2 s by the database.
    assert time.monotonic() - started < 2 + BOUND_S + 10
    assert proc.returncode == 1 and out == ""
    assert err.startswith("Error: The statement ran past the time limit of 2 s (--timeout)"), err
    assert "Hint: " in err and "Traceback" not in err
    if pg_admin_or_none is not None:
        assert _active_pids(pg_admin_or_none, db_url, marker) == []


@pytest.mark.postgres
def test_a_lost_connection_mid_query_is_an_error_not_a_traceback(pg_admin, pg_url):
    _prepare(pg_url)
    marker = f"lost_{os.getpid()}"
    proc = _start(pg_url, f"SELECT pg_sleep(60) /* {marker} */", "--timeout", "0")
    try:
        _wait_until_running(proc, pg_url, pg_admin, marker)
        with pg_admin.connect() as conn:
            for pid in _active_pids(pg_admin, pg_url, marker):
                conn.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
        out, err = proc.communicate(timeout=BOUND_S * 3)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 1 and out == ""
    assert err.startswith("Error: The connection to ") and "was lost mid-query" in err, err
    assert "Hint: " in err and "Traceback" not in err
