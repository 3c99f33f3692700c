"""Bad input, tried as a hostile new user would: every case is `Error:` + `Hint:`, exit 1,
no traceback, nothing written. Real `tracker` processes."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import func, select

from tracker.db import dispose_engines, get_engine, session_scope
from tracker.db.schema import Job, JobStatus
from workers.tiny import build_tiny

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def _tracker(*args: str, cwd: Path, stdin: str | None = None, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tracker.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=240, input=stdin, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin",
                                                         "HF_HUB_OFFLINE": "1", "HOME": str(cwd), **env})


def _billion_laughs() -> str:
    text = ("name: laughs\ndatasets: [{name: tinyqa}]\nmodels: [{name: test-fake}]\nconditions:\n  - name: bare\n"
            "  - name: fx\n    kind: fixed_text\n    params:\n      text: hi\n"
            "      l0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n")
    for i in range(1, 10):
        text += f"      l{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]\n"
    return text


@pytest.fixture()
def workdir(tmp_path) -> Path:
    (tmp_path / "latin1.yaml").write_bytes("name: x\ndescription: \"caf\xe9\"\n".encode("latin-1"))
    (tmp_path / "laughs.yaml").write_text(_billion_laughs())
    (tmp_path / "badcfg").mkdir()
    (tmp_path / "badcfg" / "config.json").write_text("{not json")
    (tmp_path / "noweights").mkdir()
    (tmp_path / "noweights" / "config.json").write_text('{"model_type": "llama"}')
    return tmp_path


CASES = [
    (["enqueue", "latin1.yaml"], "is not UTF-8 text: byte 0xe9 on line 2"),
    (["enqueue", "laughs.yaml"], "aliases expand to"),
    (["enqueue", "demo", "--model", "./badcfg"], "is not a valid model config"),
    (["enqueue", "demo", "--model", "./noweights"], "no weight files"),
    (["enqueue", "demo", "--model", "gpt-17"], "unknown model 'gpt-17'"),
    (["sql", "SELECT 1", "--db", "sqlite:///typo.db"], "No database at"),
    (["status", "--db", "sqlite:///typo.db"], "No database at"),
    (["worker", "--gpu", "0", "--exit-when-empty"], "no GPU 0"),
    (["db", "downgrade", "base"], "drops every tracker table"),
    (["--db", "mysql://me@127.0.0.1/x", "status"], "does not support 'mysql' databases"),
    (["--db", "not a url://x", "status"], "is not a database URL"),
    (["show", "demo", "tq999"], "has no run of experiment 'demo'"),
]


def test_every_bad_input_is_an_error_with_a_hint_and_changes_nothing(workdir):
    assert _tracker("db", "upgrade", cwd=workdir).returncode == 0
    db = workdir / "tracker.db"
    before = db.read_bytes()
    for args, message in CASES:
        result = _tracker(*args, cwd=workdir)
        out = result.stdout + result.stderr
        assert result.returncode == 1, (args, out)
        assert "Traceback" not in out and "Error: " in out and "Hint: " in out, (args, out)
        assert message in out, (args, out)
    assert db.read_bytes() == before  # not one byte written
    assert not (workdir / "typo.db").exists()  # a read never creates a database


def test_a_model_folder_that_lost_its_weights_fails_its_jobs_instead_of_waiting(tmp_path):
    """A poison model: every worker would fail to load it, so its jobs fail with the reason."""
    model, tokenizer = build_tiny("tiny-random-llama")
    folder = tmp_path / "llama"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    enq = _tracker("enqueue", "demo", "--model", "./llama", "--limit", "2", cwd=tmp_path)
    assert enq.returncode == 0, enq.stderr
    for weights in folder.glob("*.safetensors"):
        weights.unlink()
    work = _tracker("worker", "--device", "cpu", "--exit-when-empty", "--poll-seconds", "0.1", cwd=tmp_path)
    assert work.returncode == 0 and "Traceback" not in work.stderr, work.stderr
    engine = get_engine(f"sqlite:///{tmp_path / 'tracker.db'}", create=False)
    try:
        with session_scope(engine) as s:
            rows = s.execute(select(Job.status, Job.error_type, func.count()).group_by(Job.status, Job.error_type)).all()
            message = s.execute(select(Job.error_message).where(Job.error_type == "ModelUnusable")).scalars().first()
    finally:
        dispose_engines()
    assert {(status, kind) for status, kind, _ in rows} <= {(JobStatus.failed, "ModelUnusable"),
                                                            (JobStatus.failed, "DependencyFailed")}
    assert sum(n for _, _, n in rows) == 2 * 9 + 2  # 2 samples x 9 conditions, and 2 surrogate generations
    assert str(folder) in message and "no weight files" in message  # stored absolute, named in the reason


def test_a_worker_whose_self_check_fails_says_why_and_leaves_the_jobs_for_another(tmp_path):
    assert _tracker("enqueue", "demo", "--model", "test-fake", "--limit", "1", cwd=tmp_path).returncode == 0
    work = _tracker("worker", "--exit-when-empty", cwd=tmp_path, TRACKER_FAKE_FAIL_SELF_CHECK="1")
    assert work.returncode == 1 and "Traceback" not in work.stderr
    assert "Error: test-fake self-check failed: bare_vs_single_pass max_abs_diff=0.42" in work.stderr
    assert "Hint: " in work.stderr
    engine = get_engine(f"sqlite:///{tmp_path / 'tracker.db'}", create=False)
    try:
        with session_scope(engine) as s:
            statuses = dict(s.execute(select(Job.status, func.count()).group_by(Job.status)).all())
    finally:
        dispose_engines()
    assert statuses == {JobStatus.pending: 9, JobStatus.blocked: 1}  # nothing claimed, nothing failed
    again = _tracker("worker", "--exit-when-empty", cwd=tmp_path)  # a worker that passes takes them
    assert again.returncode == 0 and "10 jobs finished" in again.stderr
