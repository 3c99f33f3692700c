"""A worker never scores with weights other than the revision its jobs were enqueued for."""
from __future__ import annotations

import pytest

from tracker.catalogue import resolve_model
from tracker.errors import ConfigError
from workers.worker import check_revision


@pytest.mark.parametrize("wanted, loaded", [
    ("", "0123abcd" * 5),                  # unpinned hub model: any revision, recorded on the score
    ("0123abcd" * 5, "0123abcd" * 5),      # pinned and loaded
    ("0123abc", "0123abcd" * 5),           # a short sha pins its full sha
    ("gguf-sha256:1234", "gguf-sha256:1234"),
    ("local-feed", ""),                    # a backend that reports no revision cannot be checked
    ("v1.0", "0123abcd" * 5),              # a tag: from_pretrained resolved it to this commit
])
def test_matching_or_unpinned_revisions_pass(wanted, loaded):
    check_revision("m", wanted, loaded)


@pytest.mark.parametrize("wanted, loaded", [
    ("0123abc", "fffff" * 8), ("tiny-seed1", "tiny-seed2"), ("gguf-sha256:aa", "gguf-sha256:bb"),
    ("local-1234", "local-5678"),
])
def test_another_revision_is_refused_with_the_fix(wanted, loaded):
    with pytest.raises(ConfigError) as info:
        check_revision("org/model", wanted, loaded)
    assert wanted in str(info.value) and loaded in str(info.value) and "--revision" in str(info.value)


class _Recorder:
    """Stands in for transformers' auto classes; records what from_pretrained was asked."""

    calls: list = []

    @classmethod
    def from_pretrained(cls, location, **kw):
        cls.calls.append((location, kw))
        return object()


def test_a_pinned_revision_reaches_from_pretrained_for_model_and_tokenizer(monkeypatch):
    import transformers

    from workers import registry

    _Recorder.calls = []
    monkeypatch.setattr(registry, "_auto_class", lambda spec: _Recorder)
    monkeypatch.setattr(transformers, "AutoTokenizer", _Recorder)
    spec = resolve_model("google/gemma-3-4b-it")
    registry._from_hub_or_folder(spec, "float32", "sdpa", "0123abc")
    assert [kw.get("revision") for _, kw in _Recorder.calls] == ["0123abc", "0123abc"]
    assert all(loc == "google/gemma-3-4b-it" for loc, _ in _Recorder.calls)

    _Recorder.calls = []
    registry._from_hub_or_folder(spec, "float32", "sdpa", None)  # unpinned: the hub's default branch
    assert ["revision" in kw for _, kw in _Recorder.calls] == [False, False]


def test_the_worker_passes_only_a_hub_models_pinned_revision_to_its_loader(sqlite_url):
    from tracker.db import get_engine, session_scope
    from tracker.db.schema import ModelRow
    from workers.worker import QueueWorker, WorkerOptions

    seen = []

    class _Stop(Exception):
        pass

    def loader(name, device, dtype, **kw):
        seen.append((name, kw))
        raise _Stop

    engine = get_engine(sqlite_url)
    with session_scope(engine) as s:
        hub = ModelRow(name="google/gemma-3-4b-it", source="hub", family="gemma3", revision="0123abc", dtype="float32",
                    attn_implementation="sdpa")
        tiny = ModelRow(name="tiny-random-llama", source="tiny", family="llama", revision="tiny-seed1234",
                     dtype="float32", attn_implementation="sdpa")
        s.add_all([hub, tiny])
    worker = QueueWorker(engine, WorkerOptions(device="cpu", model=None), backend_loader=loader)
    for model in (hub, tiny):
        with pytest.raises(_Stop):
            worker._load(model)
    gen = {"generation_batch_size": 16}  # the CPU worker's generation budget reaches every backend
    assert seen == [("google/gemma-3-4b-it", {"revision": "0123abc", **gen}), ("tiny-random-llama", gen)]
