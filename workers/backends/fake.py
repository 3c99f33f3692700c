"""``test-fake``: a deterministic scoring backend that needs no model, for queue tests.

It is a TEST backend: its NLLs are hashes, not measurements. What it offers the tests:

- determinism: the NLLs of a task are a pure function of (sample id, condition name, mode,
  surrogate text), see :func:`fake_token_nlls`, so a test can recompute every stored score;
- an optional sleep per job (``sleep_per_job=`` or ``$TRACKER_FAKE_SLEEP`` seconds), to make
  the worker, not the queue, the bottleneck;
- a call counter that survives processes: with ``calls_file=`` or ``$TRACKER_FAKE_CALLS``
  set, every scored or generated job appends one line ``"<pid> <job_id>\\n"`` to that file
  (O_APPEND, so lines from concurrent workers never interleave) once the whole call succeeded;
- failure injection: tasks of the condition named by ``fail_condition=`` or
  ``$TRACKER_FAKE_FAIL_CONDITION`` raise :class:`FakeScoringError` (nothing is counted);
  ``$TRACKER_FAKE_FAIL_SELF_CHECK=1`` makes the start-up self-check fail.
"""
from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Sequence
from typing import Any

from tracker import settings
from tracker.catalogue import FAKE, FAKE_MODEL_NAME, SCORER_VERSIONS
from tracker.errors import SelfCheckFailed
from workers.backends.base import (
    GenerateResult,
    GenerateTask,
    ScoreResult,
    ScoreTask,
    ScoringBackend,
)

FAKE_SCORER_VERSION = SCORER_VERSIONS[FAKE]
ENV_SLEEP = "TRACKER_FAKE_SLEEP"
ENV_CALLS = "TRACKER_FAKE_CALLS"
ENV_FAIL_CONDITION = "TRACKER_FAKE_FAIL_CONDITION"
PROBE_TARGETS = (("merged", "prefix"), ("merged", "doc"))


class FakeScoringError(RuntimeError):
    """The injected failure of the fake backend."""


def _unit_hash(*parts: Any) -> float:
    """A float in [0, 1) from the SHA-256 of ``parts``."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def fake_ids(text: str, salt: str) -> list[int]:
    """Stand-in token ids: one per whitespace word, hashed into [0, 1000)."""
    return [int(_unit_hash(salt, i, word) * 1000) for i, word in enumerate(text.split())]


def fake_token_nlls(sample_id: int, condition_name: str, mode: str, surrogate_text: str | None,
                    n_tokens: int) -> list[float]:
    """The fake per-token NLLs: in (0.5, 4.5), a pure function of the arguments."""
    return [0.5 + 4.0 * _unit_hash(sample_id, condition_name, mode, surrogate_text, i) for i in range(n_tokens)]


def fake_score(task: ScoreTask, batch_size: int = 1) -> ScoreResult:
    """The result :class:`FakeBackend` returns for ``task`` (for tests to compare against)."""
    answer_ids = fake_ids(task.sample["answer"], "answer") or [0]
    nlls = fake_token_nlls(task.sample["id"], task.condition["name"], task.mode, task.surrogate_text, len(answer_ids))
    prefix = None if task.condition.get("kind") == "bare" else fake_ids(
        task.surrogate_text or task.condition["name"], "prefix")
    extras: dict[str, Any] = {"fake": True}
    if task.mode.endswith("_probe"):
        extras["attention"] = [
            {"layer": -1, "position": pos, "softmax": softmax, "target": target,
             "share": _unit_hash("share", task.job_id, pos, target)}
            for pos in range(len(answer_ids)) for softmax, target in PROBE_TARGETS
        ]
    return ScoreResult(
        job_id=task.job_id, nll_mean=sum(nlls) / len(nlls), token_nlls=nlls, answer_ids=answer_ids,
        prefix_ids=prefix, doc_ids=fake_ids(task.sample["doc"], "doc"),
        query_ids=fake_ids(task.sample["query"], "query"), bos_id=1, batch_size=batch_size, extras=extras,
    )


def fake_generation(task: GenerateTask) -> str:
    """The surrogate text :class:`FakeBackend` writes for ``task``."""
    return f"fake {task.kind} for sample {task.sample['id']} ({_unit_hash(task.prompt):.6f})"


def count_calls(path: str | os.PathLike) -> list[tuple[int, int]]:
    """(pid, job id) of every call line in a calls file (empty when absent)."""
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as fh:
        return [(int(pid), int(job)) for pid, job in (line.split() for line in fh if line.strip())]


class FakeBackend(ScoringBackend):
    """Deterministic no-model backend registered as ``test-fake`` (tests and benchmarks only)."""

    name = FAKE_MODEL_NAME

    def __init__(self, spec: Any = None, device: str = "cpu", dtype: str | None = None, *,
                 sleep_per_job: float | None = None, calls_file: str | None = None,
                 fail_condition: str | None = None, **_: Any) -> None:
        self.device = str(device)
        self.dtype = dtype or "float32"
        hooks = settings.fake_backend_env()
        self.sleep_per_job = float(sleep_per_job if sleep_per_job is not None else hooks["sleep"] or 0.0)
        self.calls_file = calls_file if calls_file is not None else hooks["calls"]
        self.fail_condition = fail_condition if fail_condition is not None else hooks["fail_condition"]
        self.fail_self_check = bool(hooks["fail_self_check"])
        self.calls = 0  # jobs scored or generated by this instance

    def score(self, tasks: list[ScoreTask]) -> list[ScoreResult]:
        for task in tasks:
            if self.fail_condition is not None and task.condition["name"] == self.fail_condition:
                raise FakeScoringError(f"injected failure for condition {self.fail_condition!r} (job {task.job_id})")
        self._sleep(len(tasks))
        results = [fake_score(task, batch_size=len(tasks)) for task in tasks]
        self._record(task.job_id for task in tasks)
        return results

    def generate(self, tasks: list[GenerateTask]) -> list[GenerateResult]:
        self._sleep(len(tasks))
        results = [GenerateResult(job_id=t.job_id, text=fake_generation(t), settings={"fake": True}) for t in tasks]
        self._record(task.job_id for task in tasks)
        return results

    def describe(self) -> dict:
        return {"model": FAKE_MODEL_NAME, "backend": "fake", "revision": "", "dtype": self.dtype,
                "attn_implementation": "", "device": self.device, "scorer_version": FAKE_SCORER_VERSION}

    def self_check(self) -> dict:
        """The one invariant a hash backend has: the same task gives the same result."""
        probe = ScoreTask(job_id=0, mode="two_phase", condition={"name": "bare", "kind": "bare", "params": {}},
                          sample={"id": 0, "dataset": "", "source_key": "", "doc": "d", "query": "q",
                                  "answer": "a b", "meta": {}})
        same = fake_score(probe).token_nlls == fake_score(probe).token_nlls
        if not same or self.fail_self_check:
            raise SelfCheckFailed("test-fake self-check failed: bare_vs_single_pass max_abs_diff=0.42 > tolerance 1e-05"
                                  if same else "test-fake gave two different results for one task",
                                  hint="do not score with this model/dtype/device")
        return {"ok": True, "deterministic": same}

    def _sleep(self, n_jobs: int) -> None:
        if self.sleep_per_job > 0:
            time.sleep(self.sleep_per_job * n_jobs)

    def _record(self, job_ids: Sequence[int] | Any) -> None:
        ids = list(job_ids)
        self.calls += len(ids)
        if self.calls_file:
            pid = os.getpid()
            data = "".join(f"{pid} {job_id}\n" for job_id in ids).encode("utf-8")
            fd = os.open(self.calls_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
