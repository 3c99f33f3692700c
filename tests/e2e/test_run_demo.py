"""The main job as a newcomer runs it: `tracker run demo` from an empty directory, with the real SmolLM2.

Test-sized with `--limit 8` (8 of the 60 tinyqa samples, every demo condition), the rest of
the path is exactly the README's first command: the default SQLite file, a worker
subprocess, the analysis, the MLflow run.
"""
from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tracker.specs import load_spec

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
LIMIT = 8


def _tracker(*args: str, cwd: Path, **kw) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("TRACKER_DB", "MLFLOW_TRACKING_URI")}
    return subprocess.Popen([sys.executable, "-m", "tracker.cli", *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def _scores(db: Path) -> list[tuple[int, int, float]]:
    if not db.exists():
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return conn.execute("SELECT id, job_id, nll FROM scores ORDER BY id").fetchall()
    except sqlite3.OperationalError:  # schema not there yet
        return []
    finally:
        conn.close()


def _expected_counts() -> tuple[int, int]:
    spec = load_spec("demo")
    n_conditions = len(spec.conditions)
    n_llm = sum(1 for c in spec.conditions if c.needs_surrogate)
    return LIMIT * n_conditions, LIMIT * n_llm


def test_run_demo_interrupted_then_resumed_scores_each_job_once(tmp_path):
    db = tmp_path / "tracker.db"
    n_scores, n_generations = _expected_counts()

    # 1. start, and interrupt it (Ctrl-C) once some scores exist
    first = _tracker("run", "demo", "--limit", str(LIMIT), "--no-mlflow", cwd=tmp_path)
    deadline = time.monotonic() + 600
    while len(_scores(db)) < 5 and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    assert first.poll() is None, f"run finished or died before it could be interrupted: {first.communicate()}"
    first.send_signal(signal.SIGINT)
    out, err = first.communicate(timeout=180)
    assert first.returncode == 130, (out, err)
    assert "Run the same command again to resume" in err
    before = _scores(db)
    assert 5 <= len(before) < n_scores

    # nothing is left running with a live lease after the interruption
    conn = sqlite3.connect(db)
    running = conn.execute("SELECT count(*) FROM jobs WHERE status = 'running'").fetchone()[0]
    conn.close()
    assert running == 0

    # 2. the same command again resumes and finishes
    second = _tracker("run", "demo", "--limit", str(LIMIT), cwd=tmp_path)
    out, err = second.communicate(timeout=900)
    assert second.returncode == 0, (out, err)

    after = _scores(db)
    assert len(after) == n_scores
    assert len({job_id for _, job_id, _ in after}) == n_scores
    assert set(before) <= set(after), "scores from before the interruption were recomputed or changed"

    conn = sqlite3.connect(db)
    statuses = dict(conn.execute("SELECT kind || ':' || status, count(*) FROM jobs GROUP BY 1").fetchall())
    n_tokens_rows = conn.execute("SELECT count(*) FROM token_nlls").fetchone()[0]
    token_sum = conn.execute("SELECT sum(n_tokens) FROM scores").fetchone()[0]
    surrogates = conn.execute("SELECT count(*) FROM surrogates WHERE length(text) > 0").fetchone()[0]
    conn.close()
    assert statuses == {"score:done": n_scores, "generate:done": n_generations}
    assert n_tokens_rows == token_sum
    assert surrogates == n_generations

    # the analysis table: one effect line per non-bare condition, each over all LIMIT samples
    spec = load_spec("demo")
    for condition in (c.name for c in spec.conditions if c.name != "bare"):
        line = next((ln for ln in out.splitlines() if ln.strip().startswith(condition + " ")), None)
        assert line is not None, f"no effect line for {condition} in:\n{out}"
        assert re.search(rf"\bn={LIMIT}\b", line), line
    assert "MLflow run" in out

    # the MLflow run, read back with MlflowClient
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("demo")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.data.params["spec_hash"] == spec.spec_hash()
    assert any(k.startswith("d.") and "oracle" in k for k in run.data.metrics)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"spec.yaml", "report.json"} <= artifacts

    # 3. a third run has nothing left to do and changes nothing
    third = _tracker("run", "demo", "--limit", str(LIMIT), "--no-mlflow", "--format", "json", cwd=tmp_path)
    out3, err3 = third.communicate(timeout=300)
    assert third.returncode == 0, err3
    assert _scores(db) == after
    effects = json.loads(out3)["effects"]
    main = [e for e in effects if e.get("table", "main") == "main" and e["dataset"] == "tinyqa"]
    assert {e["condition"] for e in main} == {c.name for c in spec.conditions if c.name != "bare"}
    assert all(e["n"] == LIMIT and e["reference"] == "bare" for e in main)


def test_readme_starts_with_the_two_commands_and_make_runs_them():
    lines = [ln for ln in (ROOT / "README.md").read_text().splitlines() if ln.strip()]
    fence = lines.index("```bash")
    first, second = lines[fence + 1].split("#")[0].strip(), lines[fence + 2].split("#")[0].strip()
    assert (first, second) == ("make demo", "make test")
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^demo: install\n\t\$\(BIN\)/tracker run demo$", makefile, re.M)
    assert re.search(r"^test: install\n\t\$\(BIN\)/python -m pytest", makefile, re.M)
    assert "make test" in (ROOT / ".ci" / "run").read_text()
