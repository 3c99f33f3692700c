"""`tracker sql` on the real PostgreSQL runs as a SELECT-only login role, whatever the --db URL's role.

Every server-side side effect found with a superuser URL (and with an owner URL) is
refused with the server's reason and leaves nothing behind: no file, no slot, no large
object, no killed session. Roles are cluster-wide, so every role a test makes is dropped.
"""
from __future__ import annotations

import os
import re
import threading
import uuid
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner
from conftest import _drop_database, _pg_url
from helpers.sql_fixtures import fixture_rows
from sqlalchemy import text
from sqlalchemy.engine import make_url

from tracker.cli import cli
from tracker.db import create_tracker_engine, dispose_engines, get_engine, migrate
from tracker.db.reader_role import (
    drop_reader_role,
    ensure_reader_role,
    quote_ident,
    reader_role_name,
)
from tracker.db.schema import Base

pytestmark = pytest.mark.postgres

# Relations `tracker sql` users may read: every table of the models, the version table, the view.
TRACKER_RELATIONS = sorted([*Base.metadata.tables, migrate.VERSION_TABLE, "results"])


def _cli(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(cli, list(args), env=env)


def _psycopg(url: str) -> psycopg.Connection:
    return psycopg.connect(make_url(url).set(drivername="postgresql").render_as_string(hide_password=False),
                           autocommit=True)


@pytest.fixture
def owner_db(pg_admin, request):
    """A database owned by a fresh non-superuser login role, migrated by `tracker db upgrade` as that role.

    ``request.param``: whether the owner may create roles. Yields (url, upgrade result).
    """
    tag = uuid.uuid4().hex[:8]
    owner, name = f"tracker_test_owner_{tag}", f"tracker_o_{os.getpid()}_{tag}"
    createrole = "CREATEROLE" if request.param else "NOCREATEROLE"
    with pg_admin.connect() as conn:
        conn.execute(text(f"CREATE ROLE {owner} LOGIN NOSUPERUSER NOCREATEDB {createrole}"))
        conn.execute(text(f'CREATE DATABASE "{name}" OWNER {owner}'))
    url = _pg_url(name).replace("postgres@", f"{owner}@", 1)
    try:
        upgraded = _cli("--db", url, "db", "upgrade")
        yield url, upgraded
    finally:
        dispose_engines()
        _drop_database(pg_admin, name)
        drop_reader_role(pg_admin, name)
        with pg_admin.connect() as conn:
            conn.execute(text(f"DROP ROLE IF EXISTS {owner}"))


def _reader(url: str) -> str:
    return reader_role_name(make_url(url).database)


def _role_row(pg_admin, role: str):
    with pg_admin.connect() as conn:
        return conn.execute(text(
            "SELECT rolcanlogin, rolsuper, rolcreatedb, rolcreaterole, rolinherit, rolreplication, rolbypassrls "
            "FROM pg_roles WHERE rolname = :r"), {"r": role}).first()


def _privileges(url: str, role: str, privilege: str) -> dict[str, bool]:
    with _psycopg(_pg_url(make_url(url).database)) as conn:
        rows = conn.execute(
            "SELECT c.relname, has_table_privilege(%s, c.oid, %s) FROM pg_class c "
            "WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'v', 'm', 'p') ORDER BY 1",
            (role, privilege)).fetchall()
    return dict(rows)


def test_reader_role_name_is_deterministic_and_fits():
    assert reader_role_name("tracker") == "tracker_reader_tracker"
    long = reader_role_name("x" * 80)
    assert len(long) == 63 and long == reader_role_name("x" * 80) and long != reader_role_name("x" * 81)
    assert reader_role_name("My-DB") != reader_role_name("my_db")
    assert re.fullmatch(r"[a-z0-9_]+", reader_role_name("My-DB"))


@pytest.mark.parametrize("owner_db", [True], indirect=True)
def test_upgrade_creates_a_plain_reader_with_select_on_every_relation(pg_admin, pg_url, owner_db):
    for url, upgraded in [(pg_url, _cli("--db", pg_url, "db", "upgrade")), owner_db]:
        role = _reader(url)
        assert upgraded.exit_code == 0, upgraded.output
        assert f"reader role {role} for `tracker sql`: created" in upgraded.output
        assert tuple(_role_row(pg_admin, role)) == (True, False, False, False, False, False, False)
        select = _privileges(url, role, "SELECT")
        assert sorted(select) == TRACKER_RELATIONS and all(select.values()), select
        for privilege in ("INSERT", "UPDATE", "DELETE", "TRUNCATE"):
            assert not any(_privileges(url, role, privilege).values()), privilege
        again = _cli("--db", url, "db", "upgrade")
        assert again.exit_code == 0 and f"reader role {role} for `tracker sql`: up to date" in again.output


def test_grants_cover_recreated_views_new_tables_and_are_restored_by_upgrade(pg_url):
    assert _cli("--db", pg_url, "db", "upgrade").exit_code == 0
    role = _reader(pg_url)
    with _psycopg(pg_url) as owner:
        view = owner.execute("SELECT pg_get_viewdef('results'::regclass)").fetchone()[0]
        owner.execute("DROP VIEW results")
        owner.execute(f"CREATE VIEW results AS {view}")  # as a later migration would
        owner.execute("CREATE TABLE later_table (x int)")
        owner.execute("INSERT INTO later_table VALUES (7)")
        owner.execute(f"REVOKE SELECT ON jobs FROM {quote_ident(role)}")
    assert _cli("--db", pg_url, "sql", "SELECT count(*) AS n FROM results", "--format", "csv").output == "n\n0\n"
    assert _cli("--db", pg_url, "sql", "SELECT x FROM later_table", "--format", "csv").output == "x\n7\n"
    refused = _cli("--db", pg_url, "sql", "SELECT count(*) FROM jobs")
    assert refused.exit_code == 1 and "permission denied for table jobs" in refused.output
    assert _cli("--db", pg_url, "db", "upgrade").exit_code == 0
    assert _cli("--db", pg_url, "sql", "SELECT count(*) AS n FROM jobs", "--format", "csv").output == "n\n0\n"


def test_concurrent_upgrades_create_the_reader_once(pg_admin, pg_url):
    engines = [create_tracker_engine(pg_url) for _ in range(4)]
    barrier = threading.Barrier(len(engines))
    statuses, errors = [], []

    def ensure(engine):
        barrier.wait()
        try:
            statuses.append(ensure_reader_role(engine))
        except Exception as err:  # noqa: BLE001 - the test reports any failure
            errors.append(err)

    threads = [threading.Thread(target=ensure, args=(e,)) for e in engines]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for engine in engines:
        engine.dispose()
    assert errors == []
    assert len(statuses) == 4 and all(s.ready for s in statuses)
    assert sum(s.created for s in statuses) == 1
    with pg_admin.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM pg_roles WHERE rolname = :r"),
                            {"r": _reader(pg_url)}).scalar_one() == 1


# (statement, a phrase of the server's reason). {file}, {victim}, {slot} are filled in per run.
# Terminating a superuser's session and an ordinary one are refused in different words.
TERMINATE = ("must be a superuser to terminate superuser process",
             "must be a member of the role whose process is being terminated", "permission denied to terminate process")
ATTACKS = [
    ("COPY (SELECT 1) TO PROGRAM 'touch {file}'", "pg_execute_server_program"),
    ("COPY (SELECT 1) TO '{file}'", "pg_write_server_files"),
    ("SELECT pg_read_file('/etc/hostname')", "permission denied for function pg_read_file"),
    ("SELECT pg_ls_dir('.')", "permission denied for function pg_ls_dir"),
    ("SELECT lo_import('/etc/hostname')", "permission denied for function lo_import"),
    ("SELECT pg_create_physical_replication_slot('{slot}', true)", "replication"),
    ("SELECT pg_terminate_backend({victim})", TERMINATE),
    ("SELECT pg_reload_conf()", "permission denied for function pg_reload_conf"),
    ("SELECT pg_switch_wal()", "permission denied for function pg_switch_wal"),
    ("CHECKPOINT", "pg_checkpoint"),
    ("SELECT set_config('role', 'postgres', false), "
     "query_to_xml('SELECT pg_terminate_backend({victim})', true, true, '')", "permission denied to set role"),
    ("SELECT set_config('session_authorization', 'postgres', false), "
     "query_to_xml('SELECT pg_terminate_backend({victim})', true, true, '')",
     "permission denied to set session authorization"),
    ("DO $$ BEGIN PERFORM set_config('role', 'postgres', false); PERFORM pg_terminate_backend({victim}); END $$",
     "permission denied to set role"),
    ("DO $$ BEGIN EXECUTE 'COPY (SELECT 1) TO PROGRAM ''touch {file}'''; END $$", "pg_execute_server_program"),
    ("DO $$ BEGIN PERFORM pg_terminate_backend({victim}); END $$", TERMINATE),
]


def _side_effects(pg_admin, files: list[Path], slot: str, victims: list[psycopg.Connection]) -> dict:
    with pg_admin.connect() as conn:
        slots = conn.execute(text("SELECT count(*) FROM pg_replication_slots WHERE slot_name = :s"),
                             {"s": slot}).scalar_one()
    alive = []
    for victim in victims:
        try:
            alive.append(victim.execute("SELECT 1").fetchone() == (1,))
        except psycopg.Error:
            alive.append(False)
    return {"files": [f.exists() for f in files], "slots": slots, "alive": alive}


def _large_objects(url: str) -> int:
    with _psycopg(_pg_url(make_url(url).database)) as conn:
        return conn.execute("SELECT count(*) FROM pg_largeobject_metadata").fetchone()[0]


def _assert_attacks_refused(pg_admin, url: str) -> None:
    tag = uuid.uuid4().hex[:8]
    file = Path(f"/tmp/tracker_sqlsafe_{tag}")
    slot = f"tracker_sqlsafe_{tag}"
    # A session on another database and one of the URL's own role (a worker's): neither may die.
    victims = [_psycopg(_pg_url("postgres")), _psycopg(url)]
    try:
        expected = {"files": [False], "slots": 0, "alive": [True, True]}
        lo_before = _large_objects(url)
        for statement, reason in ATTACKS:
            for victim in victims:
                sql = statement.format(file=file, slot=slot, victim=victim.info.backend_pid)
                result = _cli("--db", url, "sql", sql)
                assert result.exit_code == 1, f"{sql!r} was not refused: {result.output}"
                assert result.output.startswith("Error: Refused: "), result.output
                reasons = (reason,) if isinstance(reason, str) else reason
                assert any(r in result.output for r in reasons), (sql, result.output)
                assert "Traceback" not in result.output
                assert _side_effects(pg_admin, [file], slot, victims) == expected, sql
                if "{victim}" not in statement:
                    break
        assert _large_objects(url) == lo_before
    finally:
        for victim in victims:
            victim.close()
        file.unlink(missing_ok=True)


def test_attacks_are_refused_with_a_superuser_url(pg_admin, pg_url):
    assert make_url(pg_url).username == "postgres"
    assert _cli("--db", pg_url, "db", "upgrade").exit_code == 0
    fixture_rows(pg_url)
    _assert_attacks_refused(pg_admin, pg_url)
    ok = _cli("--db", pg_url, "sql", "SELECT condition, count(*) AS n, sum(nll) AS s FROM results "
                                    "GROUP BY 1 ORDER BY 1", "--format", "csv")
    assert ok.exit_code == 0 and ok.output == "condition,n,s\nbare,2,3.5\noracle,2,1.25\n"


@pytest.mark.parametrize("owner_db", [True], indirect=True)
def test_attacks_are_refused_with_an_owner_url(pg_admin, owner_db):
    url, upgraded = owner_db
    assert upgraded.exit_code == 0 and "created" in upgraded.output
    fixture_rows(url)
    _assert_attacks_refused(pg_admin, url)
    ok = _cli("--db", url, "sql", "SELECT count(*) AS n FROM token_nlls", "--format", "csv")
    assert ok.exit_code == 0 and ok.output == "n\n0\n"


@pytest.mark.parametrize("owner_db", [False], indirect=True)
def test_owner_without_createrole_gets_the_admin_sql_and_sql_refuses(pg_admin, owner_db):
    url, upgraded = owner_db
    role = _reader(url)
    owner = make_url(url).username
    assert upgraded.exit_code == 0, upgraded.output
    assert "Note: `tracker sql` needs the SELECT-only login role" in upgraded.output
    assert f'CREATE ROLE "{role}" LOGIN NOSUPERUSER' in upgraded.output
    assert _role_row(pg_admin, role) is None
    with _psycopg(url) as worker:  # a worker's session, of the owner's role
        refused = _cli("--db", url, "sql", f"SELECT pg_terminate_backend({worker.info.backend_pid})")
        assert refused.exit_code == 1 and refused.output.startswith("Error: ")
        assert "--reader-db" in refused.output and "TRACKER_READER_DB" in refused.output
        assert f'CREATE ROLE "{role}"' in refused.output and f'FOR ROLE "{owner}"' in refused.output
        assert worker.execute("SELECT 1").fetchone() == (1,)
    # The SQL printed for the administrator is enough: run it, and `tracker sql` works.
    admin_sql = upgraded.output.split("runs:\n", 1)[1].split("\nor give", 1)[0]
    with _psycopg(_pg_url(make_url(url).database)) as admin:
        admin.execute(admin_sql)
    ok = _cli("--db", url, "sql", "SELECT current_user AS u, count(*) AS n FROM results GROUP BY 1",
              "--format", "csv")
    assert ok.exit_code == 0 and ok.output == "u,n\n", ok.output
    who = _cli("--db", url, "sql", "SELECT current_user AS u", "--format", "csv")
    assert who.output == f"u\n{role}\n"


@pytest.mark.parametrize("owner_db", [True], indirect=True)
def test_a_privileged_reader_url_is_refused(pg_url, owner_db):
    owner_url, _ = owner_db
    superuser = _cli("--db", owner_url, "sql", "SELECT 1", "--reader-db", pg_url)
    assert superuser.exit_code == 1 and "refuses to run a statement as postgres: it is a superuser" in superuser.output
    owner = _cli("--db", owner_url, "sql", "SELECT 1", env={"TRACKER_READER_DB": owner_url})
    assert owner.exit_code == 1 and "the owner of the database" in owner.output and "owns" in owner.output
    reader_url = owner_url.replace(make_url(owner_url).username, _reader(owner_url), 1)
    ok = _cli("--db", owner_url, "sql", "SELECT current_user AS u", "--format", "csv", "--reader-db", reader_url)
    assert ok.exit_code == 0 and ok.output == f"u\n{_reader(owner_url)}\n"


def test_a_reader_that_cannot_log_in_is_refused_with_the_admin_sql(pg_admin, pg_url):
    assert _cli("--db", pg_url, "db", "upgrade").exit_code == 0
    role = _reader(pg_url)
    with pg_admin.connect() as conn:
        conn.execute(text(f"ALTER ROLE {quote_ident(role)} NOLOGIN"))
    result = _cli("--db", pg_url, "sql", "SELECT 1")
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: `tracker sql` cannot log in as its SELECT-only role {role}")
    assert "is not permitted to log in" in result.output
    assert f'CREATE ROLE "{role}"' in result.output and "PASSWORD" in result.output
    assert "--reader-db" in result.output and "TRACKER_READER_DB" in result.output


def test_missing_reader_says_run_upgrade(pg_url):
    result = _cli("--db", pg_url, "sql", "SELECT 1")
    assert result.exit_code == 1 and "does not exist" in result.output
    assert "run `tracker db upgrade`" in result.output and "--reader-db" in result.output


def test_the_reader_cannot_see_other_sessions_queries(pg_url):
    assert _cli("--db", pg_url, "db", "upgrade").exit_code == 0
    with _psycopg(pg_url) as other:
        result = _cli("--db", pg_url, "sql", f"SELECT query FROM pg_stat_activity WHERE pid = "
                                             f"{other.info.backend_pid}", "--format", "csv")
    assert result.exit_code == 0 and result.output == "query\n<insufficient privilege>\n"


def test_upgrade_needs_no_second_role_for_sqlite(sqlite_url):
    result = _cli("--db", sqlite_url, "db", "upgrade")
    assert result.exit_code == 0 and "reader role" not in result.output
    assert get_engine(sqlite_url) is not None
