"""How a claimed batch is cut into backend calls: scoring per (model, mode) across samples, generations per model."""
from __future__ import annotations

from tracker.db.schema import JobKind
from tracker.queue import ClaimedJob, group_jobs


def _job(id_: int, kind: JobKind, sample: int, model: int, mode: str = "") -> ClaimedJob:
    return ClaimedJob(id=id_, job_key=str(id_), kind=kind, sample_id=sample, condition_id=None, model_id=model,
                      mode=mode, scorer_version="", payload={}, priority=0, attempts=0, max_attempts=3,
                      lease_token="t", lease_expires_at=None)


def test_generations_of_one_model_share_a_call_and_scoring_spans_samples():
    batch = [
        _job(1, JobKind.generate, 10, 1), _job(2, JobKind.generate, 11, 1), _job(3, JobKind.generate, 12, 2),
        _job(4, JobKind.score, 10, 1, "two_phase"), _job(5, JobKind.score, 10, 1, "two_phase"),
        _job(6, JobKind.score, 11, 1, "two_phase"), _job(7, JobKind.generate, 13, 1),
        _job(8, JobKind.select, None, 1), _job(9, JobKind.score, 11, 1, "full"), _job(10, JobKind.score, 12, 2, "full"),
    ]
    groups = [[j.id for j in g] for g in group_jobs(batch)]
    # samples 10 and 11 share one two_phase call; another mode or model is another call
    assert groups == [[1, 2, 7], [3], [4, 5, 6], [8], [9], [10]]
