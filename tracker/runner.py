"""`tracker run`: enqueue, score with worker subprocesses until done, analyse — in one command.

The workers are the same `tracker worker` processes a cluster runs, started here as
subprocesses on this machine; progress is read from the database (jobs of this experiment
run by status), so an interrupted run resumes where it stopped when started again.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Engine, func, select

from tracker import settings
from tracker.db import session_scope
from tracker.db.schema import Job, RunJob
from tracker.errors import DeviceError, TrackerError

STOP_GRACE_SECONDS = 60.0


@dataclass
class RunProgress:
    """Jobs of one experiment run by status."""

    counts: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def finished(self) -> int:
        return self.counts.get("done", 0) + self.counts.get("failed", 0)

    @property
    def failed(self) -> int:
        return self.counts.get("failed", 0)

    @property
    def unfinished(self) -> int:
        return self.total - self.finished


def run_progress(engine: Engine, run_id: int) -> RunProgress:
    with session_scope(engine) as session:
        rows = session.execute(
            select(Job.status, func.count()).join(RunJob, RunJob.job_id == Job.id)
            .where(RunJob.run_id == run_id).group_by(Job.status)
        ).all()
    return RunProgress({(s.value if hasattr(s, "value") else str(s)): int(n) for s, n in rows})


def worker_devices(device: str, workers: int) -> list[str]:
    """One device per worker: `cuda` spreads workers over the GPUs, `cpu` repeats."""
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        import torch

        count = torch.cuda.device_count()
        if count == 0:
            raise DeviceError("--device cuda, but this machine has no CUDA GPU.", hint="use --device cpu")
        return [f"cuda:{i % count}" for i in range(workers)]
    return [device] * workers


@dataclass
class WorkerProcess:
    index: int
    device: str
    proc: subprocess.Popen
    log_path: Path

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def worker_log_dir(db_url: str) -> Path:
    """Worker logs go beside a SQLite database, else into ./tracker-logs."""
    from sqlalchemy.engine import make_url

    u = make_url(db_url)
    if u.get_backend_name() == "sqlite" and u.database and u.database != ":memory:":
        return Path(u.database).resolve().parent / "tracker-logs"
    return Path("tracker-logs").resolve()


def start_workers(db_url: str, devices: list[str], *, models: list[str] | None, batch_size: int | None,
                  log_dir: Path) -> list[WorkerProcess]:
    """Start one `tracker worker --exit-when-empty` subprocess per device, logging to ``log_dir``."""
    log_dir.mkdir(parents=True, exist_ok=True)
    out = []
    for i, device in enumerate(devices):
        cmd = [sys.executable, "-m", "tracker.cli", "--db", db_url, "worker", "--device", device, "--exit-when-empty"]
        if models and len(models) == 1:
            cmd += ["--model", models[0]]
        if batch_size:
            cmd += ["--batch-size", str(batch_size)]
        log_path = log_dir / f"worker-{i}.log"
        env = settings.child_environment()
        if device == "cpu" and len(devices) > 1:
            # share the cores instead of oversubscribing them
            env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 2) // len(devices))))
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                    start_new_session=True)  # our Ctrl-C is forwarded once, by us
        out.append(WorkerProcess(i, device, proc, log_path))
    return out


def stop_workers(workers: list[WorkerProcess], grace: float = STOP_GRACE_SECONDS) -> None:
    """SIGINT every worker (each releases or finishes its batch), then wait; SIGKILL stragglers."""
    for w in workers:
        if w.proc.poll() is None:
            w.proc.send_signal(signal.SIGINT)
    deadline = time.monotonic() + grace
    for w in workers:
        try:
            w.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            w.proc.kill()
            w.proc.wait()


def drive_workers(engine: Engine, run_id: int, workers: list[WorkerProcess],
                  on_progress: Callable[[RunProgress], None], poll_seconds: float = 1.0) -> RunProgress:
    """Poll progress until every worker has exited; stop the rest if one dies with an error."""
    while True:
        progress = run_progress(engine, run_id)
        on_progress(progress)
        alive = [w for w in workers if w.proc.poll() is None]
        crashed = [w for w in workers if w.proc.returncode not in (None, 0)]
        if crashed:
            stop_workers(alive)
            w = crashed[0]
            raise TrackerError(
                f"worker {w.index} on {w.device} exited with status {w.proc.returncode}; its log ({w.log_path}) ends:\n"
                f"{w.tail()}",
                hint="fix the cause and run the same command again: finished jobs are kept",
            )
        if not alive:
            return run_progress(engine, run_id)
        time.sleep(poll_seconds)
