"""The SELECT-only login role that ``tracker sql`` uses on PostgreSQL.

A read-only transaction does not stop server functions (``COPY ... TO PROGRAM``,
``pg_terminate_backend``, ``pg_create_physical_replication_slot``...), and ``SET ROLE``
can be undone from inside one statement, so ``tracker sql`` logs in as a role of its own
that has nothing but ``SELECT`` on the tracker's tables and views (the idea of
``pg_read_all_data``, narrowed to one schema of one database, as dashboards such as
Grafana and Metabase ask their users to set up).

``tracker db upgrade`` creates the role (race-safely: roles are cluster-wide) and grants
after every migration; ``tracker sql`` only logs in as it and checks it is still plain.
Each function takes an Engine or a connection and does one thing.
"""
from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, exc, text
from sqlalchemy.engine import make_url

READER_PREFIX = "tracker_reader_"
PG_IDENTIFIER_MAX = 63  # NAMEDATALEN - 1 bytes
DEFAULT_SCHEMA = "public"
# Attributes that keep the role plain: it cannot log in as anyone else, create anything
# or read replication streams, and inherits nothing from roles it might later be granted.
READER_ATTRIBUTES = "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT NOREPLICATION NOBYPASSRLS"
# Concurrent CREATE ROLE of one name: the loser sees 42710 (duplicate_object) when the
# winner committed first, 23505 (unique_violation on pg_authid) when both were in flight.
_ROLE_EXISTS_SQLSTATES = {"42710", "23505"}


@dataclass
class ReaderRoleStatus:
    """What :func:`ensure_reader_role` did; ``problems`` is empty when the role is ready."""

    role: str
    created: bool = False
    problems: list[str] = field(default_factory=list)
    admin_sql: str = ""

    @property
    def ready(self) -> bool:
        return not self.problems


def reader_role_name(database: str) -> str:
    """``tracker_reader_<database>``, or a sanitised, hashed form that fits 63 bytes.

    Deterministic, so ``tracker db upgrade`` and ``tracker sql`` agree without storing it;
    a name that had to change carries a hash of the database name so that two databases
    never share a reader.
    """
    plain = READER_PREFIX + database
    if re.fullmatch(r"[a-z0-9_]+", plain) and len(plain) <= PG_IDENTIFIER_MAX:
        return plain
    digest = hashlib.sha256(database.encode()).hexdigest()[:10]
    stem = re.sub(r"[^a-z0-9_]", "_", database.lower())
    room = PG_IDENTIFIER_MAX - len(READER_PREFIX) - len(digest) - 1
    return f"{READER_PREFIX}{stem[:room]}_{digest}"


def reader_url(owner_url: str) -> str:
    """The URL ``tracker sql`` logs in with: the owner URL with the reader as user, no password."""
    u = make_url(owner_url)
    if u.get_driver_name() in ("psycopg2", ""):
        u = u.set(drivername="postgresql+psycopg")
    return u.set(username=reader_role_name(u.database or ""), password=None).render_as_string(hide_password=False)


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def role_statements(role: str, superuser: bool) -> list[str]:
    """Keep an existing role plain (they need CREATEROLE, as CREATE ROLE does).

    Only a superuser may touch SUPERUSER, REPLICATION and BYPASSRLS, even to clear them;
    a role that has one of them anyway is refused by ``tracker sql`` (:func:`privilege_problems`).
    """
    r = quote_ident(role)
    attributes = READER_ATTRIBUTES if superuser else "LOGIN NOCREATEDB NOCREATEROLE NOINHERIT"
    return [f"ALTER ROLE {r} {attributes}", f"ALTER ROLE {r} SET default_transaction_read_only = on"]


def grant_statements(role: str, database: str, schema: str, owner: str) -> list[str]:
    """The grants that make ``role`` a SELECT-only reader of ``schema`` (the owner may run them).

    ``ALL TABLES IN SCHEMA`` is every table and view there, the version table included;
    the default privileges cover the tables and views that later migrations (run by
    ``owner``) create or recreate.
    """
    r, s = quote_ident(role), quote_ident(schema)
    return [
        f"GRANT CONNECT ON DATABASE {quote_ident(database)} TO {r}",
        f"GRANT USAGE ON SCHEMA {s} TO {r}",
        f"REVOKE ALL ON ALL TABLES IN SCHEMA {s} FROM {r}",
        f"GRANT SELECT ON ALL TABLES IN SCHEMA {s} TO {r}",
        f"ALTER DEFAULT PRIVILEGES FOR ROLE {quote_ident(owner)} IN SCHEMA {s} GRANT SELECT ON TABLES TO {r}",
    ]


def create_statement(role: str) -> str:
    return f"CREATE ROLE {quote_ident(role)} {READER_ATTRIBUTES}"


def admin_sql(role: str, database: str, schema: str = DEFAULT_SCHEMA, owner: str = "OWNER_OF_THE_TABLES",
              password: bool = False) -> str:
    """The SQL an administrator runs (as a superuser or a role with CREATEROLE) to set the reader up."""
    create = create_statement(role) + (" PASSWORD 'choose-one'" if password else "")
    statements = [create, role_statements(role, superuser=True)[1], *grant_statements(role, database, schema, owner)]
    return ";\n".join(statements) + ";"


def role_exists(conn: Connection, role: str) -> bool:
    return conn.execute(text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role}).first() is not None


def create_role(engine: Engine, role: str) -> bool:
    """``CREATE ROLE`` in a transaction of its own; True if this call created it.

    Safe against a concurrent creation of the same role (by another ``tracker db upgrade``).
    """
    try:
        with engine.connect() as conn:
            conn.execute(text(create_statement(role)))
            conn.commit()
        return True
    except exc.DBAPIError as err:
        if getattr(err.orig, "sqlstate", None) in _ROLE_EXISTS_SQLSTATES:
            return False
        raise


def ensure_reader_role(engine: Engine) -> ReaderRoleStatus:
    """Create the reader of this database if needed and (re-)grant it SELECT on every table and view.

    Run after every migration. Never raises for missing privileges: the status says what
    could not be done and carries the SQL an administrator would run instead.
    """
    with engine.connect() as conn:
        me = conn.execute(text(
            "SELECT current_database() AS db, current_schema() AS schema, current_user AS owner, "
            "rolsuper, rolcreaterole FROM pg_roles WHERE rolname = current_user")).one()
        conn.rollback()
    role = reader_role_name(me.db)
    status = ReaderRoleStatus(role, admin_sql=admin_sql(role, me.db, me.schema, me.owner))
    may_manage_roles = bool(me.rolsuper or me.rolcreaterole)
    with engine.connect() as conn:
        exists = role_exists(conn, role)
        conn.rollback()
    if not exists:
        if not may_manage_roles:
            status.problems.append(f"the role {me.owner} may not create roles (no CREATEROLE), "
                                   f"so the reader role {role} does not exist")
            return status
        status.created = create_role(engine, role)
    with engine.connect() as conn:
        # One upgrade at a time grants on this database: concurrent GRANTs on one table
        # fail with "tuple concurrently updated".
        conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:r))"), {"r": role})
        statements = role_statements(role, bool(me.rolsuper)) if may_manage_roles else []
        for statement in statements + grant_statements(role, me.db, me.schema, me.owner):
            _run_in_savepoint(conn, statement, status)
        conn.commit()
    return status


def _run_in_savepoint(conn: Connection, statement: str, status: ReaderRoleStatus) -> None:
    try:
        with conn.begin_nested():
            conn.execute(text(statement))
    except exc.DBAPIError as err:
        if getattr(err.orig, "sqlstate", None) != "42501":  # insufficient_privilege
            raise
        status.problems.append(f"{statement}: {str(err.orig).strip()}")


# One row about the logged-in role: everything that would let it do more than read.
PRIVILEGE_CHECK_SQL = (
    "SELECT r.rolsuper, r.rolcreaterole, r.rolcreatedb, r.rolreplication, r.rolbypassrls, "
    "  (SELECT string_agg(g.rolname, ', ' ORDER BY g.rolname) FROM pg_auth_members m "
    "     JOIN pg_roles g ON g.oid = m.roleid WHERE m.member = r.oid) AS member_of, "
    "  (SELECT count(*) FROM pg_class c WHERE c.relowner = r.oid "
    "     AND c.relnamespace NOT IN ('pg_catalog'::regnamespace, 'information_schema'::regnamespace)) AS owned, "
    "  (SELECT d.datdba = r.oid FROM pg_database d WHERE d.datname = current_database()) AS owns_db, "
    "  session_user = current_user AS same_user "
    "FROM pg_roles r WHERE r.rolname = session_user"
)


def privilege_problems(row: Mapping[str, Any]) -> list[str]:
    """Why the role described by a :data:`PRIVILEGE_CHECK_SQL` row is not a plain reader (empty if it is).

    ``tracker sql`` refuses to run a statement as a role that could do more than read:
    a superuser or role manager, a member of other roles (``pg_signal_backend``,
    ``pg_read_server_files``...), or the owner of this database or of its tables (an
    owner can terminate its own workers' sessions).
    """
    problems = [f"it is {what}" for what, key in (
        ("a superuser", "rolsuper"), ("allowed to create roles", "rolcreaterole"),
        ("allowed to create databases", "rolcreatedb"), ("a replication role", "rolreplication"),
        ("exempt from row security", "rolbypassrls"), ("the owner of the database", "owns_db")) if row[key]]
    if row["member_of"]:
        problems.append(f"it is a member of {row['member_of']}")
    if row["owned"]:
        problems.append(f"it owns {row['owned']} tables or other objects here")
    if not row["same_user"]:
        problems.append("the session runs under another role (SET ROLE)")
    return problems


def drop_reader_role(engine: Engine, database: str) -> None:
    """Drop the reader of ``database`` if it exists; roles are cluster-wide, so tests drop theirs.

    ``engine`` is a superuser's, on ``database`` itself while it exists (its grants there go
    first) or on any other database once ``database`` is dropped.
    """
    role = reader_role_name(database)
    with engine.connect() as conn:
        if role_exists(conn, role):
            if conn.execute(text("SELECT current_database()")).scalar_one() == database:
                conn.execute(text(f"DROP OWNED BY {quote_ident(role)}"))
            conn.execute(text(f"DROP ROLE {quote_ident(role)}"))
        conn.commit()
