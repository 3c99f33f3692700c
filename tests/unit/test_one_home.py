"""Rules that several layers must agree on live in one place; each test pins one of them."""
from __future__ import annotations

import sqlite3
from fractions import Fraction

import psycopg
import pytest
from sqlalchemy import exc, text

from tracker import settings
from tracker.catalogue import revision_matches
from tracker.db import create_tracker_engine
from tracker.db.errors import classify, translate_db_error
from tracker.errors import DatabaseError, DatabaseUnavailable, TransientDatabaseError
from tracker.specs.schema import SelectRule, hardest_count
from workers.worker.retry import retry_database
from workers.worker.signals import StopControl


@pytest.mark.parametrize("value, on", [("1", True), ("true", True), ("YES", True), ("on", True),
                                       ("0", False), ("false", False), ("", False), ("no", False)])
def test_the_offline_flag_means_the_same_everywhere(monkeypatch, value, on):
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", value)
    assert settings.hub_offline() is on  # models and tokenizers (workers.registry, workers.tokenizers)
    assert settings.datasets_offline() is on  # datasets (tracker.datasets)


def _wrapped(orig: BaseException) -> exc.DBAPIError:
    return exc.OperationalError("SELECT 1", {}, orig)


@pytest.mark.parametrize("driver_error, kind", [
    (psycopg.errors.DeadlockDetected("deadlock detected"), TransientDatabaseError),  # 40P01
    (psycopg.errors.SerializationFailure("could not serialize access"), TransientDatabaseError),  # 40001
    (psycopg.errors.LockNotAvailable("canceling statement due to lock timeout"), TransientDatabaseError),  # 55P03
    (psycopg.errors.AdminShutdown("terminating connection due to administrator command"), DatabaseUnavailable),
    (psycopg.errors.ConnectionFailure("connection failure"), DatabaseUnavailable),  # 08006
    (psycopg.OperationalError("connection failed: Connection refused"), DatabaseUnavailable),  # no SQLSTATE
    (psycopg.errors.UndefinedTable('relation "nope" does not exist'), DatabaseError),  # 42P01: a refusal
])
def test_postgres_errors_are_classified_by_sqlstate(driver_error, kind):
    err = translate_db_error(_wrapped(driver_error))
    assert type(err) is kind


def test_a_message_alone_never_decides():
    """A refusal whose text mentions a deadlock is still a refusal: only codes count."""
    assert classify(_wrapped(psycopg.errors.UndefinedTable("deadlock detected in my table name"))) == "refused"


def test_a_real_sqlite_lock_is_transient(tmp_path):
    path = tmp_path / "locked.db"
    engine = create_tracker_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (x)"))
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("INSERT INTO t VALUES (1)")
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA busy_timeout=0")
            with pytest.raises(exc.OperationalError) as info:
                conn.execute(text("INSERT INTO t VALUES (2)"))
        assert "locked" in str(info.value) and type(translate_db_error(info.value)) is TransientDatabaseError
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        engine.dispose()


@pytest.mark.parametrize("error", [TransientDatabaseError("deadlock"), DatabaseUnavailable("gone")])
def test_the_worker_retries_what_the_classifier_calls_retryable(error):
    calls = []

    def op():
        calls.append(1)
        if len(calls) < 3:
            raise error
        return "written"

    stop = StopControl()
    stop.wait = lambda seconds: None  # no sleeping in a unit test
    assert retry_database("complete", op, stop=stop, patient=False) == "written" and len(calls) == 3


def test_the_worker_does_not_retry_a_refusal():
    calls = []

    def op():
        calls.append(1)
        raise DatabaseError("The database refused the operation: syntax error")

    with pytest.raises(DatabaseError):
        retry_database("complete", op, stop=StopControl(), patient=False)
    assert len(calls) == 1


@pytest.mark.parametrize("error, runs", [
    (psycopg.errors.DeadlockDetected("deadlock detected"), 2),  # a lost race: the transaction runs again
    (psycopg.errors.UndefinedTable("no such table"), 1),  # a refusal: never
])
def test_enqueue_reruns_its_transaction_on_a_lost_race_only(sqlite_url, error, runs):
    """enqueue runs in ``run_transaction``; the classifier decides what is run again."""
    from tracker.db import get_engine, run_transaction

    engine = get_engine(sqlite_url)
    calls = []

    def op(session):
        calls.append(1)
        session.execute(text("INSERT INTO experiments (name, description) VALUES ('raced', '')"))
        if len(calls) == 1:
            raise translate_db_error(_wrapped(error))
        return "ok"

    if runs == 2:
        assert run_transaction(engine, op) == "ok"
    else:
        with pytest.raises(DatabaseError):
            run_transaction(engine, op)
    assert len(calls) == runs
    with engine.connect() as conn:  # the failed run left nothing behind
        assert conn.execute(text("SELECT count(*) FROM experiments WHERE name='raced'")).scalar_one() == runs - 1


def test_the_hardest_fraction_count_is_one_rule():
    from analysis.stats import top_fraction_size

    for fraction in (0.4, 0.1, 0.3, 0.7, 0.25):
        exact = Fraction(str(fraction))
        for n in range(1, 1001):
            want = -(-exact.numerator * n // exact.denominator)  # ceil in integers
            assert hardest_count(n, fraction) == SelectRule(fraction=fraction).count(n) == want
            assert top_fraction_size(n, fraction) == want, (n, fraction)  # analysis counts the same


@pytest.mark.parametrize("wanted, loaded, same", [
    ("tiny-seed1234", "tiny-seed1234", True), ("tiny-seed1234", "tiny-seed99", False),
    ("gguf-sha256:0123456789abcdef", "gguf-sha256:0123456789abcdef", True),
    ("local-aaaa", "local-bbbb", False),
    ("0123abc", "0123abcdef0123456789abcdef0123456789abcd", True), ("0123abc", "ffff", False),
    ("main", "0123abcdef", True), ("", "anything", True),
])
def test_one_revision_rule(wanted, loaded, same):
    assert revision_matches(wanted, loaded) is same


def test_a_describe_device_is_the_torch_device_for_every_backend(monkeypatch):
    """``scores.device`` holds the torch device (``cuda:3``) for every family; the product name
    is a separate field (and goes on the worker row)."""
    import torch

    from workers.backends import get_backend

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    for name in ("tiny-random-llama", "tiny-random-t5"):
        backend = get_backend(name, "cpu")
        backend.loaded.device = torch.device("cuda:3")  # as a worker on GPU 3 would have it
        described = backend.describe()
        assert (described["device"], described["device_name"]) == ("cuda:3", "NVIDIA H200"), name
        assert backend.name == name  # a backend's name is its model's name, in every family
    assert get_backend("test-fake", "cpu").name == "test-fake"


def test_gpu_pinning_maps_to_the_physical_gpu(monkeypatch):
    from tracker.errors import DeviceError

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")  # e.g. SLURM gave this job GPUs 4 and 5
    assert settings.pin_gpu(1) == "5"
    import os

    assert os.environ["CUDA_VISIBLE_DEVICES"] == "5"  # the worker sees GPU 5 only, as cuda:0
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")
    with pytest.raises(DeviceError, match="may use 2 GPU"):
        settings.pin_gpu(2)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert settings.pin_gpu(3) == "3"
