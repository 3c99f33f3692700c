"""ed07 as a user runs it on PostgreSQL: `tracker enqueue`, a `tracker worker` process, `tracker analyze`.

The probing modes score on their own model row (eager attention) under the same model
name, so one `tracker worker --model NAME` must take both kinds of jobs; the stored shares
and the analysis's 2x2 must come out of it.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers.dataset_fixtures import FIXTURES
from sqlalchemy import text

from tracker.cli import cli  # noqa: E402
from tracker.datasets import clear_cache  # noqa: E402
from tracker.db import get_engine  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
MODEL = "tiny-random-t5gemma"
LIMIT = 3


@pytest.mark.postgres
def test_ed07_with_a_worker_process_on_postgres(pg_url, tmp_path):
    clear_cache()
    out = CliRunner().invoke(cli, ["--db", pg_url, "enqueue", "ed07", "--model", MODEL, "--limit", str(LIMIT),
                                   "--device", "cpu", "--data-dir", str(FIXTURES)])
    assert out.exit_code == 0, out.output
    env = {**os.environ, "TRACKER_DB": pg_url, "OMP_NUM_THREADS": "1"}
    log = tmp_path / "worker.log"
    with open(log, "wb") as handle:
        code = subprocess.run([sys.executable, "-m", "tracker.cli", "worker", "--model", MODEL, "--device", "cpu",
                               "--exit-when-empty", "--poll-seconds", "0.2"], cwd=ROOT, env=env, stdout=handle,
                              stderr=subprocess.STDOUT, timeout=600).returncode
    assert code == 0, log.read_text()[-4000:]
    with get_engine(pg_url).connect() as conn:
        cells = dict(conn.execute(text(
            "SELECT condition || '@' || mode, COUNT(nll) FROM results WHERE experiment = 'ed07' GROUP BY 1")).all())
        attn = conn.execute(text("SELECT DISTINCT m.attn_implementation FROM jobs j JOIN models m ON m.id = j.model_id"
                                 " WHERE j.kind = 'score'")).scalars().all()
        n_layers = 2  # tiny T5Gemma 2 decoder layers, plus the layer mean (-1)
        shares = conn.execute(text("SELECT COUNT(DISTINCT score_id), COUNT(DISTINCT layer) FROM attention_shares")).one()
    assert cells == {f"{c}@{m}": LIMIT for c in ("bare", "oracle") for m in ("encdec_nq_probe", "encdec_q_probe")}
    assert attn == ["eager"] and tuple(shares) == (LIMIT * 4, n_layers + 1)
    out = CliRunner().invoke(cli, ["--db", pg_url, "analyze", "ed07", "--no-mlflow", "--format", "json",
                                   "--bootstrap", "0"])
    assert out.exit_code == 0, out.output
    report = json.loads(out.output)
    assert {r["step"] for r in report["tables"]["factorial"] if r["contrast"] == "interaction"} == {"nq->q"}
    cells = {(r["condition"], r["mode"]) for r in report["tables"]["attention"]}
    assert cells == {(c, m) for c in ("bare", "oracle") for m in ("encdec_nq_probe", "encdec_q_probe")}
