"""Registry, get_backend and DecoderBackend on tiny random models (CPU fp32)."""
from __future__ import annotations

import json

import pytest
import torch

from tracker.catalogue import CATALOGUE as REGISTRY
from tracker.catalogue import resolve_model
from tracker.catalogue.modes import DECODER_MODES
from tracker.conditions import build_prefix_ids
from tracker.errors import ConfigError, DeviceError, EmptyAnswerError, UnknownModelError
from workers.backends import GenerateTask, ScoreTask, backend_class, get_backend
from workers.backends.decoder import DecoderBackend
from workers.backends.encdec import EncDecBackend
from workers.backends.fake import FakeBackend
from workers.devices import torch_device as resolve_device
from workers.devices import torch_dtype as resolve_dtype
from workers.scoring import SCORER_VERSION
from workers.scoring.decoder import ScoringRow, score_rows
from workers.tiny import build_tiny

SAMPLE = {
    "id": 7, "dataset": "tinyqa", "source_key": "k7", "meta": {"unrelated_query": "Who wrote Hamlet?"},
    "doc": "The Eiffel Tower is in Paris. It was completed in 1889 and is 330 metres tall.",
    "query": "When was the tower completed?", "answer": "In 1889.",
}
OTHER = {**SAMPLE, "id": 8, "source_key": "k8", "doc": "Mount Everest is 8849 metres high.",
         "query": "How high is Everest?", "answer": "8849 metres."}
CONDITIONS = [
    {"name": "bare", "kind": "bare", "params": {}},
    {"name": "bare_nl", "kind": "bare_nl", "params": {}},
    {"name": "oracle", "kind": "oracle", "params": {}},
    {"name": "scrambled", "kind": "scrambled_oracle", "params": {"seed": 3}},
    {"name": "extractor", "kind": "fixed_text", "params": {"text": "Extract the key facts.", "matched": True}},
    {"name": "free_text", "kind": "fixed_text", "params": {"text": "Read this carefully, please."}},
]


@pytest.fixture(scope="module")
def tiny_backend() -> DecoderBackend:
    return get_backend("tiny-random-gemma3")


def test_registry_knows_the_seed_models_and_their_families():
    for name in ["google/gemma-3-12b-it", "google/gemma-3-4b-it", "smollm2-135m", "tiny-random-llama",
                 "tiny-random-gemma3", "tiny-random-gemma3-mm"]:
        assert REGISTRY[name].family == "decoder" and backend_class(REGISTRY[name]) is DecoderBackend
        assert REGISTRY[name].modes == DECODER_MODES
    for name in ["google/t5gemma-2-4b-4b", "google/flan-t5-base", "google/flan-t5-large", "google/flan-t5-xl",
                 "facebook/bart-large", "t5-small", "t5-base", "t5-large", "t5-3b", "tiny-random-t5",
                 "tiny-random-bart", "tiny-random-t5gemma"]:
        assert REGISTRY[name].family == "encdec" and backend_class(REGISTRY[name]) is EncDecBackend
        assert "encdec_q" in REGISTRY[name].modes and "two_phase" not in REGISTRY[name].modes
    assert backend_class(REGISTRY["test-fake"]) is FakeBackend


def test_unknown_model_lists_the_known_names():
    with pytest.raises(UnknownModelError) as info:
        get_backend("gpt-17")
    message = str(info.value)
    assert "gpt-17" in message and "smollm2-135m" in message and "tiny-random-llama" in message


def test_get_backend_builds_the_fake_backend_lazily():
    backend = get_backend("test-fake")
    assert type(backend).__module__ == "workers.backends.fake"
    assert backend_class(REGISTRY["test-fake"]) is type(backend)


def test_local_folder_is_resolved_by_its_config(tmp_path):
    model, tokenizer = build_tiny("tiny-random-llama")
    model.save_pretrained(tmp_path / "llama")
    tokenizer.save_pretrained(tmp_path / "llama")
    spec = resolve_model(str(tmp_path / "llama"))
    assert (spec.family, spec.source, backend_class(spec)) == ("decoder", "local", DecoderBackend)
    (tmp_path / "t5").mkdir()
    (tmp_path / "t5" / "config.json").write_text(json.dumps({"model_type": "t5", "is_encoder_decoder": True}))
    with pytest.raises(UnknownModelError, match="no weight files"):
        resolve_model(str(tmp_path / "t5"))
    (tmp_path / "t5" / "model.safetensors").write_bytes(b"")
    assert backend_class(resolve_model(str(tmp_path / "t5"))) is EncDecBackend
    (tmp_path / "empty").mkdir()
    with pytest.raises(UnknownModelError, match="config.json"):
        resolve_model(str(tmp_path / "empty"))

    local = get_backend(str(tmp_path / "llama"))
    tiny = get_backend("tiny-random-llama")
    rows = [ScoringRow.of([5, 6], [20, 21, 22, 23], [30, 31], [40, 41])]
    got = score_rows(local.view, "two_phase", 1, 14, rows)[0].token_nlls
    want = score_rows(tiny.view, "two_phase", 1, 14, rows)[0].token_nlls
    assert got == pytest.approx(want, abs=1e-6)
    assert local.describe()["revision"].startswith("local-")


def test_hub_model_without_network_says_to_pass_a_local_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(ConfigError, match="local") as info:
        get_backend("google/gemma-3-4b-it")
    assert "folder path" in str(info.value)


def test_dtype_and_device_defaults():
    assert resolve_dtype("cpu", None) == torch.float32
    assert resolve_dtype("cuda:0", None) == torch.bfloat16
    assert resolve_dtype("cpu", "bf16") == torch.bfloat16 and resolve_dtype("cpu", "float16") == torch.float16
    with pytest.raises(ConfigError):
        resolve_dtype("cpu", "int3")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="--device cpu"):
            resolve_device("cuda:0")


def tasks_for(samples, conditions, modes) -> list[ScoreTask]:
    combos = [(s, c, m) for m in modes for s in samples for c in conditions]
    return [ScoreTask(100 + i, m, s, c) for i, (s, c, m) in enumerate(combos)]


def test_score_matches_the_token_level_scorer_and_records_ids(tiny_backend):
    tok = tiny_backend.tokenizer
    modes = ["two_phase", "prefix_lm_bidir"]
    tasks = tasks_for([SAMPLE, OTHER], CONDITIONS, modes)
    tasks = tasks[::2] + tasks[1::2]  # interleave samples, conditions and modes
    results = tiny_backend.score(tasks)
    assert [r.job_id for r in results] == [t.job_id for t in tasks]
    enc = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    for task, result in zip(tasks, results):
        prefix = build_prefix_ids(task.condition, task.sample, tok)
        assert result.prefix_ids == prefix
        assert (result.doc_ids, result.query_ids, result.answer_ids) == (
            enc(task.sample["doc"]), enc(task.sample["query"]), enc(task.sample["answer"]))
        assert result.bos_id == tok.bos_token_id == 1
        row = ScoringRow.of(prefix, result.doc_ids, result.query_ids, result.answer_ids)
        alone = score_rows(tiny_backend.view, task.mode, 1, [14], [row], max_batch=1)[0]
        assert result.token_nlls == pytest.approx(alone.token_nlls, abs=1e-4)
        assert result.nll_mean == pytest.approx(sum(result.token_nlls) / len(result.token_nlls))
        assert len(result.token_nlls) == len(result.answer_ids)
        assert result.extras["mode"] == task.mode and result.extras["scorer_version"] == SCORER_VERSION
        assert task.job_id in result.extras["batch_jobs"]
        assert len(result.extras["batch_jobs"]) == result.batch_size
        bucket = result.extras["bucket"]
        assert bucket["phase_a"] >= result.extras["phase_a_len"] and bucket["phase_b"] >= result.extras["phase_b_len"]
    # token-matched conditions of one sample share a pass; rows of both samples meet in passes
    matched = {r.job_id: r for r in results if r.prefix_ids is not None and len(r.prefix_ids) == len(r.query_ids)}
    assert next(iter(matched.values())).batch_size >= 3


def test_one_call_batches_rows_of_many_samples(tiny_backend):
    """Bare rows of samples whose docs fall in one length bucket share passes, with the numbers of each alone."""
    words = ["tall", "old", "grey", "wide", "iron", "late", "huge", "fine", "dark", "new"]
    samples = [{**SAMPLE, "id": 20 + i, "source_key": f"s{i}", "doc": f"The tower in Paris is {w} and famous.",
                "query": f"What is the tower {i}?", "answer": f"It is {w}."} for i, w in enumerate(words)]
    tasks = [ScoreTask(200 + i, "two_phase", sample, CONDITIONS[0]) for i, sample in enumerate(samples)]
    results = tiny_backend.score(tasks)
    passes = {tuple(r.extras["batch_jobs"]) for r in results}
    assert len(passes) < len(tasks) / 2 and max(r.batch_size for r in results) >= 3
    for task, result in zip(tasks, results):
        assert result.token_nlls == tiny_backend.score([task])[0].token_nlls  # alone: same numbers


def test_problems_name_the_job(tiny_backend):
    empty = {**SAMPLE, "answer": ""}
    with pytest.raises(EmptyAnswerError) as info:
        tiny_backend.score([ScoreTask(1, "two_phase", SAMPLE, CONDITIONS[0]), ScoreTask(2, "two_phase", empty, CONDITIONS[0])])
    assert info.value.job_id == 2
    with pytest.raises(ConfigError, match="encdec_q") as info:
        tiny_backend.score([ScoreTask(3, "encdec_q", SAMPLE, CONDITIONS[0])])
    assert info.value.job_id == 3


@torch.inference_mode()
def manual_greedy(model, ids: list[int], steps: int, eos: int) -> list[int]:
    out: list[int] = []
    for _ in range(steps):
        next_id = int(model(input_ids=torch.tensor([ids + out])).logits[0, -1].argmax())
        if next_id == eos:
            break
        out.append(next_id)
    return out


def test_generate_is_greedy_with_the_chat_template():
    backend = get_backend("tiny-random-llama")
    tok = backend.tokenizer
    prompts = ["Summarize: the tower is tall.", "Ask a question about Paris, the capital of France."]
    results = backend.generate([GenerateTask(i, SAMPLE, "summarize", p, 12) for i, p in enumerate(prompts)])
    for prompt, result in zip(prompts, results):
        rendered = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                           tokenize=False)
        ids = tok(rendered, add_special_tokens=False)["input_ids"]
        expected = manual_greedy(backend.model, ids, 12, tok.eos_token_id)
        assert result.text == tok.decode(expected, skip_special_tokens=True).strip()
        assert result.settings["do_sample"] is False and result.settings["max_new_tokens"] == 12
        assert result.settings["generated_tokens"] == len(expected)
        assert result.settings["template"] == "model chat template" and len(result.settings["chat_template_sha256"]) == 16


@pytest.mark.parametrize("name", ["tiny-random-llama", "tiny-random-gemma3-mm"])
def test_describe_and_self_check(name):
    backend = get_backend(name, "cpu", None)
    info = backend.describe()
    assert info["model"] == name and info["dtype"] == "float32" and info["device"] == "cpu"
    assert info["scorer_version"] == SCORER_VERSION and info["torch"] == torch.__version__
    for key in ["revision", "attn_implementation", "device_name", "transformers", "bos_id", "nl_ids"]:
        assert info[key] not in (None, "")
    check = backend.self_check()
    assert check["passed"] is True and backend.last_self_check is check
    assert check["causality"]["max_leak"] == 0.0


def test_a_multimodal_checkpoint_keeps_no_vision_tower_and_scores_the_same():
    """Only text is scored: the image encoder is freed, and the scores equal the text-only model's."""
    from workers.tiny import build_tiny

    backend = get_backend("tiny-random-gemma3-mm", "cpu", None)
    assert backend.model.model.vision_tower is None and backend.model.model.multi_modal_projector is None
    full, _ = build_tiny("tiny-random-gemma3-mm")  # the same seeded weights, vision tower kept
    assert full.model.vision_tower is not None
    rows = [ScoringRow.of([5, 6], [20, 21, 22, 23], [30, 31], [40, 41])]
    from workers.scoring.lm_view import view_of

    got = score_rows(backend.view, "two_phase", 1, 14, rows)[0].token_nlls
    want = score_rows(view_of(full.eval()), "two_phase", 1, 14, rows)[0].token_nlls
    assert got == want
