"""Encoder-decoder scoring invariants on tiny random T5, BART, T5Gemma and T5Gemma 2 (CPU, fp32)."""
from __future__ import annotations

import pytest
import torch
import transformers as tf
from transformers.modeling_outputs import BaseModelOutput

from tracker.errors import ConfigError, DatasetError, EmptyAnswerError
from workers.scoring.encdec import (
    ENCDEC_MODES,
    build_layout,
    decoder_start_id,
    parse_mode,
    random_query_ids,
    score_layouts,
)

VOCAB = 64
_GEMMA_TEXT = dict(
    vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, head_dim=8, sliding_window=8, query_pre_attn_scalar=8,
    layer_types=["sliding_attention", "full_attention"], pad_token_id=0, eos_token_id=1, bos_token_id=2,
)


def build_tiny(family: str, *, layers: int = 2, seed: int = 0):
    """A tiny random encoder-decoder of ``family`` in eval mode, with its encoder wrapping."""
    torch.manual_seed(seed)
    if family == "t5":
        config = tf.T5Config(
            vocab_size=VOCAB, d_model=16, d_kv=4, d_ff=32, num_layers=layers, num_decoder_layers=2, num_heads=4,
            relative_attention_num_buckets=8, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
        )
        model, lead, trail = tf.T5ForConditionalGeneration(config), [], [1]
    elif family == "bart":
        config = tf.BartConfig(
            vocab_size=VOCAB, d_model=16, encoder_layers=layers, decoder_layers=2, encoder_attention_heads=4,
            decoder_attention_heads=4, encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=64, init_std=0.3,
        )
        model, lead, trail = tf.BartForConditionalGeneration(config), [0], [2]
    elif family == "t5gemma":
        encoder = tf.T5GemmaModuleConfig(**{**_GEMMA_TEXT, "num_hidden_layers": layers,
                                            "layer_types": _GEMMA_TEXT["layer_types"][:layers]})
        config = tf.T5GemmaConfig(encoder=encoder, decoder=tf.T5GemmaModuleConfig(**_GEMMA_TEXT))
        model, lead, trail = tf.T5GemmaForConditionalGeneration(config), [2], []
    elif family == "t5gemma2":
        encoder_text = {**_GEMMA_TEXT, "num_hidden_layers": layers, "layer_types": _GEMMA_TEXT["layer_types"][:layers]}
        vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                      image_size=8, patch_size=4)
        config = tf.T5Gemma2Config(
            encoder=dict(text_config=encoder_text, vision_config=vision, mm_tokens_per_image=1,
                         boi_token_index=60, eoi_token_index=61, image_token_index=62),
            decoder=_GEMMA_TEXT, image_token_index=62,
        )
        model, lead, trail = tf.T5Gemma2ForConditionalGeneration(config), [2], []
    else:
        raise ValueError(family)
    return model.eval(), lead, trail


FAMILIES = ("t5", "bart", "t5gemma", "t5gemma2")
DOC = [10, 11, 12, 13, 14, 15, 16]
QUERY = [20, 21, 22]
ANSWER = [30, 31, 32, 33]
PREFIX = [40, 41, 42]


@pytest.fixture(scope="module", params=FAMILIES)
def tiny(request):
    model, lead, trail = build_tiny(request.param)
    return request.param, model, lead, trail


def _layout(tiny, mode: str, prefix=PREFIX, query=QUERY, answer=ANSWER, random_ids=None):
    _, model, lead, trail = tiny
    return build_layout(
        prefix_ids=prefix, doc_ids=DOC, query_ids=query, answer_ids=answer,
        start_id=decoder_start_id(model.config), mode=parse_mode(mode),
        random_ids=random_ids, encoder_lead=lead, encoder_trail=trail,
    )


def _score(tiny, layouts, probe=False):
    return score_layouts(tiny[1], layouts, pad_id=tiny[1].config.pad_token_id, probe=probe)


@torch.no_grad()
def _decoder_nlls(model, encoder_hidden: torch.Tensor, layout) -> list[float]:
    """Independent reference: full-mask decoder pass over given encoder states, NLL by loop."""
    dec = torch.tensor([layout.decoder_ids])
    out = model(
        encoder_outputs=BaseModelOutput(last_hidden_state=encoder_hidden),
        attention_mask=torch.ones(encoder_hidden.shape[:2], dtype=torch.long),
        decoder_input_ids=dec,
    )
    log_probs = torch.log_softmax(out.logits[0].double(), dim=-1)  # [dec_len, vocab]
    a0, a1 = layout.answer_span
    return [-log_probs[t - 1, layout.decoder_ids[t]].item() for t in range(a0, a1)]


@torch.no_grad()
def _encode(model, ids: list[int]) -> torch.Tensor:
    ids_t = torch.tensor([ids])
    return model.get_encoder()(input_ids=ids_t, attention_mask=torch.ones_like(ids_t)).last_hidden_state


def test_every_mode_parses_and_unknown_mode_is_a_config_error():
    assert len(ENCDEC_MODES) == 8
    assert parse_mode("encdec_rq_probe").decoder_query == "random"
    assert parse_mode("encdec_rq_probe").probe is True
    assert parse_mode("encdec_q_visible").hide_prefix is False
    assert parse_mode("encdec_nq").hide_prefix is True
    with pytest.raises(ConfigError, match="encdec_q_probe"):
        parse_mode("encdec_query")


def test_decoder_start_token_per_family():
    t5, _, _ = build_tiny("t5")
    bart, _, _ = build_tiny("bart")
    gemma2, _, _ = build_tiny("t5gemma2")
    gemma1, _, _ = build_tiny("t5gemma")
    assert decoder_start_id(t5.config) == 0
    assert decoder_start_id(bart.config) == bart.config.decoder_start_token_id == 2
    assert decoder_start_id(gemma2.config) == gemma2.config.decoder.bos_token_id == 2
    assert decoder_start_id(gemma1.config) == gemma1.config.decoder.bos_token_id == 2


def test_layout_puts_tokens_where_the_mode_says():
    mode_q, mode_nq, mode_rq = (parse_mode(m) for m in ("encdec_q", "encdec_nq", "encdec_rq"))
    common = dict(prefix_ids=PREFIX, doc_ids=DOC, query_ids=QUERY, answer_ids=ANSWER, start_id=7,
                  encoder_lead=[2], encoder_trail=[1])
    q = build_layout(mode=mode_q, **common)
    assert q.encoder_ids == (2, *PREFIX, *DOC, 1) and q.prefix_span == (1, 4)
    assert q.decoder_ids == (7, *QUERY, *ANSWER) and q.answer_ids == tuple(ANSWER)
    assert list(q.predicting_positions) == [3, 4, 5, 6]
    nq = build_layout(mode=mode_nq, **common)
    assert nq.decoder_ids == (7, *ANSWER) and nq.middle_span == (1, 1)
    rq = build_layout(mode=mode_rq, random_ids=[50, 51, 52], **common)
    assert rq.decoder_ids == (7, 50, 51, 52, *ANSWER)
    with pytest.raises(ValueError, match="query's length"):
        build_layout(mode=mode_rq, random_ids=[50], **common)
    bare = build_layout(mode=mode_q, **{**common, "prefix_ids": None})
    assert bare.encoder_ids == (2, *DOC, 1) and bare.prefix_span == (1, 1)
    with pytest.raises(EmptyAnswerError):
        build_layout(mode=mode_q, **{**common, "answer_ids": []})
    with pytest.raises(DatasetError, match="document"):
        build_layout(mode=mode_q, **{**common, "doc_ids": []})


def test_random_query_ids_are_deterministic_non_special_and_query_length():
    specials = {0, 1, 2, 3}
    first = random_query_ids("msmarco:123", 12, 40, specials)
    assert first == random_query_ids("msmarco:123", 12, 40, specials)
    assert len(first) == 12 and not specials & set(first) and all(0 <= i < 40 for i in first)
    assert first != random_query_ids("msmarco:124", 12, 40, specials)
    assert random_query_ids("msmarco:123", 0, 40, specials) == []


def test_hidden_prefix_equals_slicing_prefix_rows_off_the_encoder_output(tiny):
    """The masked prefix gets no cross-attention weight: NLL equals a decoder run on encoder
    states (computed WITH the prefix) whose prefix rows were removed."""
    _, model, lead, trail = tiny
    layout = _layout(tiny, "encdec_q")
    full = _encode(model, list(layout.encoder_ids))   # [1, enc_len, hidden]
    p0, p1 = layout.prefix_span
    sliced = torch.cat([full[:, :p0], full[:, p1:]], dim=1)
    expected = _decoder_nlls(model, sliced, layout)
    got = _score(tiny, [layout])[0].token_nlls
    assert got == pytest.approx(expected, abs=1e-5)


def test_visible_prefix_equals_full_encoder_output(tiny):
    _, model, _, _ = tiny
    layout = _layout(tiny, "encdec_q_visible")
    expected = _decoder_nlls(model, _encode(model, list(layout.encoder_ids)), layout)
    got = _score(tiny, [layout])[0].token_nlls
    assert got == pytest.approx(expected, abs=1e-5)
    hidden = _score(tiny, [_layout(tiny, "encdec_q")])[0].token_nlls
    assert max(abs(a - b) for a, b in zip(got, hidden)) > 1e-4


@pytest.mark.parametrize("mode", ["encdec_q", "encdec_nq"])
def test_answer_nll_equals_the_models_own_labels_loss(tiny, mode):
    """Per answer token and on average, our NLL equals the model's loss with -100 elsewhere."""
    _, model, _, _ = tiny
    layout = _layout(tiny, mode)
    score = _score(tiny, [layout])[0]
    full = _encode(model, list(layout.encoder_ids))
    cross = torch.ones(full.shape[:2], dtype=torch.long)
    cross[0, layout.prefix_span[0]: layout.prefix_span[1]] = 0
    dec = torch.tensor([layout.decoder_ids])

    def loss(label_positions):
        labels = torch.full_like(dec, -100)
        for t in label_positions:  # logit at t scores decoder token t + 1
            labels[0, t] = dec[0, t + 1]
        with torch.no_grad():
            return model(encoder_outputs=BaseModelOutput(last_hidden_state=full), attention_mask=cross,
                         decoder_input_ids=dec, labels=labels).loss.item()

    positions = list(layout.predicting_positions)
    assert sum(score.token_nlls) / len(positions) == pytest.approx(loss(positions), abs=1e-5)
    for j, t in enumerate(positions):
        assert score.token_nlls[j] == pytest.approx(loss([t]), abs=1e-5)


def test_zeroed_mask_with_input_ids_would_reproduce_bare_and_ours_does_not():
    """The pitfall: hiding the prefix via input_ids' mask hides it from the encoder too."""
    tiny = ("t5", *build_tiny("t5", layers=2))
    model = tiny[1]
    prefixed, bare = _layout(tiny, "encdec_q"), _layout(tiny, "encdec_q", prefix=None)
    bare_nlls = _score(tiny, [bare])[0].token_nlls
    ours = _score(tiny, [prefixed])[0].token_nlls

    enc = torch.tensor([prefixed.encoder_ids])
    zeroed = torch.ones_like(enc)
    zeroed[0, prefixed.prefix_span[0]: prefixed.prefix_span[1]] = 0
    with torch.no_grad():
        logits = model(input_ids=enc, attention_mask=zeroed, decoder_input_ids=torch.tensor([prefixed.decoder_ids])).logits
    log_probs = torch.log_softmax(logits[0].float(), -1)
    pitfall = [-log_probs[t, prefixed.decoder_ids[t + 1]].item() for t in prefixed.predicting_positions]

    assert pitfall == pytest.approx(bare_nlls, abs=1e-5)
    assert max(abs(a - b) for a, b in zip(ours, bare_nlls)) > 1e-3


def test_prefixed_differs_from_bare_on_every_family(tiny):
    prefixed = _score(tiny, [_layout(tiny, "encdec_q")])[0].token_nlls
    bare = _score(tiny, [_layout(tiny, "encdec_q", prefix=None)])[0].token_nlls
    assert max(abs(a - b) for a, b in zip(prefixed, bare)) > 1e-4


def test_empty_prefix_scores_exactly_like_bare(tiny):
    empty = _score(tiny, [_layout(tiny, "encdec_q", prefix=[])])[0].token_nlls
    bare = _score(tiny, [_layout(tiny, "encdec_q", prefix=None)])[0].token_nlls
    assert empty == pytest.approx(bare, abs=1e-6)


def test_random_query_layout_has_the_querys_length_and_is_reproducible(tiny):
    _, model, _, _ = tiny
    ids = random_query_ids("squad:9", len(QUERY), VOCAB, {0, 1, 2})
    rq = _layout(tiny, "encdec_rq", random_ids=ids)
    q = _layout(tiny, "encdec_q")
    assert len(rq.decoder_ids) == len(q.decoder_ids) and rq.answer_span == q.answer_span
    first = _score(tiny, [rq])[0].token_nlls
    again = _score(tiny, [_layout(tiny, "encdec_rq", random_ids=random_query_ids("squad:9", 3, VOCAB, {0, 1, 2}))])
    assert again[0].token_nlls == first


def test_batched_equals_unbatched(tiny):
    """Mixed prefix lengths (bare, empty, 1, 3, 6 tokens) x modes in one right-padded batch."""
    rand = random_query_ids("k", len(QUERY), VOCAB, {0, 1, 2})
    layouts = [
        _layout(tiny, "encdec_q", prefix=None),
        _layout(tiny, "encdec_nq", prefix=[]),
        _layout(tiny, "encdec_q", prefix=[44]),
        _layout(tiny, "encdec_rq", random_ids=rand),
        _layout(tiny, "encdec_q_visible", prefix=[45, 46, 47, 48, 49, 50]),
        _layout(tiny, "encdec_nq", answer=[30]),
    ]
    batched = _score(tiny, layouts)
    for layout, row in zip(layouts, batched):
        alone = _score(tiny, [layout])[0].token_nlls
        assert len(row.token_nlls) == len(layout.answer_ids)
        assert row.token_nlls == pytest.approx(alone, abs=1e-4)


def test_modes_sharing_an_encoder_input_run_the_encoder_once():
    tiny = ("t5", *build_tiny("t5"))
    model = tiny[1]
    seen: list[tuple[int, ...]] = []
    handle = model.get_encoder().register_forward_hook(
        lambda module, args, kwargs, out: seen.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True
    )
    try:
        _score(tiny, [_layout(tiny, m) for m in ("encdec_q", "encdec_nq", "encdec_q_visible")])
    finally:
        handle.remove()
    assert seen == [(1, len(PREFIX) + len(DOC) + 1)]


def test_training_mode_is_refused():
    model, lead, trail = build_tiny("t5")
    model.train()
    with pytest.raises(ValueError, match="eval"):
        _score(("t5", model, lead, trail), [_layout(("t5", model, lead, trail), "encdec_q")])


# --- the backend (text in, ScoreResult out) on the registry's tiny models ----------------

import workers.scoring.encdec as encdec_scoring  # noqa: E402
from tracker.catalogue import resolve_model  # noqa: E402
from tracker.conditions import build_prefix_ids, special_ids  # noqa: E402
from tracker.errors import InputTooLongError, SelfCheckFailed, TrackerError  # noqa: E402
from workers.backends.base import GenerateTask, ScoreTask  # noqa: E402
from workers.backends.encdec import EncDecBackend, encoder_wrapping  # noqa: E402
from workers.scoring import ENCDEC_SCORER_VERSION  # noqa: E402

SAMPLE = {"id": 7, "dataset": "toy", "source_key": "toy:7", "doc": "The cat sat on the red mat all day.",
          "query": "Where did the cat sit?", "answer": "on the red mat", "meta": {}}
CONDITIONS = [
    {"name": "bare", "kind": "bare", "params": {}},
    {"name": "bare_nl", "kind": "bare_nl", "params": {}},
    {"name": "oracle", "kind": "oracle", "params": {}},
    {"name": "surr_doc", "kind": "doc_keywords", "params": {"k": 3, "matched": False}},
]
BACKEND_MODELS = ("tiny-random-t5", "tiny-random-bart", "tiny-random-t5gemma")


@pytest.fixture(scope="module", params=BACKEND_MODELS)
def backend(request):
    return EncDecBackend(resolve_model(request.param), "cpu")


def _tasks(modes=("encdec_q", "encdec_nq", "encdec_rq", "encdec_q_visible")):
    return [ScoreTask(job_id=100 * i + j, mode=mode, sample=SAMPLE, condition=cond)
            for i, cond in enumerate(CONDITIONS) for j, mode in enumerate(modes)]


def test_backend_scores_match_the_core_on_independently_built_layouts(backend):
    tok = backend.tokenizer
    tasks = _tasks()
    results = backend.score(tasks)
    assert [r.job_id for r in results] == [t.job_id for t in tasks]
    enc = lambda text: list(tok(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    for task, result in zip(tasks, results):
        prefix = build_prefix_ids(task.condition, SAMPLE, tok)
        rand = random_query_ids("toy:7", len(enc(SAMPLE["query"])), len(tok), special_ids(tok))
        layout = build_layout(prefix_ids=prefix, doc_ids=enc(SAMPLE["doc"]), query_ids=enc(SAMPLE["query"]),
                              answer_ids=enc(SAMPLE["answer"]), start_id=decoder_start_id(backend.model.config),
                              mode=parse_mode(task.mode), random_ids=rand)
        alone = score_layouts(backend.model, [layout], pad_id=backend.pad_id)[0].token_nlls
        assert result.token_nlls == pytest.approx(alone, abs=1e-4)
        assert result.nll_mean == pytest.approx(sum(alone) / len(alone), abs=1e-4)
        assert result.answer_ids == enc(SAMPLE["answer"]) and result.doc_ids == enc(SAMPLE["doc"])
        assert result.prefix_ids == prefix and result.bos_id == backend.start_id
        assert result.batch_size == len(tasks)
        assert ("random_query_ids" in result.extras) == (task.mode == "encdec_rq")


def test_backend_batched_equals_one_task_at_a_time(backend):
    tasks = _tasks()
    batched = backend.score(tasks)
    for task, result in zip(tasks, batched):
        alone = backend.score([task])[0]
        assert alone.batch_size == 1
        assert result.token_nlls == pytest.approx(alone.token_nlls, abs=1e-4)


def test_backend_random_query_is_deterministic_and_query_length(backend):
    task = _tasks(("encdec_rq",))[2]
    first, second = backend.score([task])[0], backend.score([task])[0]
    ids = first.extras["random_query_ids"]
    assert ids == second.extras["random_query_ids"] and first.token_nlls == second.token_nlls
    assert len(ids) == len(first.query_ids)
    assert not set(ids) & special_ids(backend.tokenizer)
    assert first.extras["decoder_ids"] == [backend.start_id, *ids, *first.answer_ids]


def test_backend_probe_tasks_carry_attention_and_restore_sdpa(backend):
    results = backend.score(_tasks(("encdec_q", "encdec_q_probe")))
    for result in results:
        assert ("attention" in result.extras) == (result.job_id % 100 == 1)
    probe, plain = results[5], results[4]  # bare_nl condition: probe vs plain
    assert probe.token_nlls == pytest.approx(plain.token_nlls, abs=1e-5)
    assert backend.model.config._attn_implementation == "sdpa"


def test_backend_describe_and_generate(backend):
    info = backend.describe()
    assert info["scorer_version"] == ENCDEC_SCORER_VERSION
    assert info["dtype"] == "float32" and info["device"] == "cpu" and info["attn_implementation"] == "sdpa"
    assert info["attention_softmax"] == ("merged" if info["model_type"] == "t5gemma2" else "separate")
    with pytest.raises(TrackerError, match="not used to generate"):
        backend.generate([GenerateTask(1, SAMPLE, "extract", "Extract: x", 8)])


def test_backend_refuses_too_long_inputs_with_a_hint():
    bart = EncDecBackend(resolve_model("tiny-random-bart"), "cpu")
    long_sample = {**SAMPLE, "doc": "word " * 300}  # 1500 byte tokens > 1024 positions
    with pytest.raises(InputTooLongError, match="positions"):
        bart.score([ScoreTask(1, "encdec_q", long_sample, CONDITIONS[0])])


def test_encoder_wrapping_reads_the_tokenizers_special_tokens():
    class Wrapping:
        def __call__(self, text, add_special_tokens=True):
            ids = [ord(c) for c in text]
            return {"input_ids": [5, *ids, 6, 7] if add_special_tokens else ids}

    assert encoder_wrapping(Wrapping()) == ([5], [6, 7])


def test_self_check_passes_on_a_good_model(backend):
    result = backend.self_check()
    assert result["passed"] is True
    assert set(result["probes"]) == {"labels_loss", "sliced_encoder", "prefix_cross_weight",
                                     "prefix_reaches_encoder", "batched"}
    assert result["probes"]["prefix_cross_weight"]["hidden_max"] == 0.0


def _visible_prefix_mask(layouts, encoder_mask):
    return encoder_mask.clone()


def _pitfall_encoder(model, layouts, pad_id):
    """The bug the brief warns about: the cross-attention mask handed to the encoder too."""
    ids, mask = encdec_scoring.pad_right([l.encoder_ids for l in layouts], pad_id, model.device)
    mask = encdec_scoring.cross_attention_mask(layouts, mask)
    return model.get_encoder()(input_ids=ids, attention_mask=mask).last_hidden_state, mask


def _look_ahead_nlls(logits, layouts):
    out = []
    for row, layout in enumerate(layouts):
        log_probs = torch.log_softmax(logits[row].float(), -1)
        out.append([-float(log_probs[t, layout.decoder_ids[t]]) for t in range(*layout.answer_span)])
    return out


@pytest.mark.parametrize("breakage, name, failed_probe", [
    ("cross_attention_mask", _visible_prefix_mask, "prefix_cross_weight"),
    ("encode_unique", _pitfall_encoder, "sliced_encoder"),
    ("answer_token_nlls", _look_ahead_nlls, "labels_loss"),
])
def test_self_check_refuses_a_broken_scorer(monkeypatch, breakage, name, failed_probe):
    backend = EncDecBackend(resolve_model("tiny-random-t5"), "cpu")
    monkeypatch.setattr(encdec_scoring, breakage, name)
    with pytest.raises(SelfCheckFailed, match=failed_probe):
        backend.self_check()


def test_non_finite_nlls_are_refused_not_stored(monkeypatch):
    import workers.backends.encdec as backend_module

    backend = EncDecBackend(resolve_model("tiny-random-t5"), "cpu")
    monkeypatch.setattr(backend_module, "score_layouts",
                        lambda model, layouts, **kw: [encdec_scoring.RowScore([float("nan")] * 3) for _ in layouts])
    with pytest.raises(TrackerError, match="non-finite"):
        backend.score(_tasks(("encdec_q",))[:1])
    assert backend_module._max_abs_diff([float("nan"), 0.0], [1.0, 0.0]) == float("inf")


def test_registry_builds_this_backend_and_decoder_modes_are_refused_per_job():
    from workers.backends import get_backend

    backend = get_backend("tiny-random-bart", "cpu")
    assert isinstance(backend, EncDecBackend)
    with pytest.raises(ConfigError, match="two_phase"):
        backend.score([ScoreTask(41, "two_phase", SAMPLE, CONDITIONS[0])])


def test_batch_composition_is_recorded(backend):
    results = backend.score(_tasks(("encdec_q", "encdec_nq")))
    jobs = [r.job_id for r in results]
    assert all(r.extras["batch_jobs"] == jobs and r.extras["padded"] is True for r in results)
    alone = backend.score(_tasks(("encdec_q",))[:1])[0]
    assert alone.extras["batch_jobs"] == [0] and alone.extras["padded"] is False
    assert alone.extras["mode"] == "encdec_q" and alone.extras["prefix_hidden"] is True


def test_out_of_memory_of_any_kind_splits_the_batch(monkeypatch):
    """The shared back-off: an MPS-style RuntimeError OOM splits the batch, and the numbers do not change."""
    backend = EncDecBackend(resolve_model("tiny-random-t5"), "cpu", max_batch_rows=8)
    tasks = _tasks(("encdec_q", "encdec_nq"))
    expected = backend.score(tasks)
    real, sizes = backend._forward, []

    def flaky(layouts, probe):
        sizes.append(len(layouts))
        if len(layouts) > 2:
            raise RuntimeError("MPS backend out of memory (MPS allocated: 17.00 GB, other allocations: 1.00 GB)")
        return real(layouts, probe)

    monkeypatch.setattr(backend, "_forward", flaky)
    results = backend.score(tasks)
    assert sizes == [8, 4, 2, 2, 2, 2] and backend.budget.ooms == 2
    assert backend.budget.size == 4  # grown back after four full batches of 2
    for got, want in zip(results, expected):
        assert got.token_nlls == pytest.approx(want.token_nlls, abs=1e-5)


@pytest.mark.parametrize(("dtype", "kept"), [("float16", True), ("bfloat16", False), ("float32", False)])
def test_t5_keeps_its_own_fp32_modules(dtype, kept):
    """transformers keeps T5's `wo` in fp32 for fp16 (its activations overflow in fp16); the backend does too."""
    backend = EncDecBackend(resolve_model("tiny-random-t5"), "cpu", dtype)
    wo = [m for name, m in backend.model.named_modules() if name.endswith(".wo")]
    assert wo and all(m.weight.dtype == (torch.float32 if kept or dtype == "float32" else getattr(torch, dtype))
                      for m in wo)
    assert bool(backend.fp32_modules) is kept
    others = {p.dtype for name, p in backend.model.named_parameters() if ".wo." not in name}
    assert others == {getattr(torch, dtype)}


def test_cast_keeping_fp32_modules_casts_the_rest_once_from_fp32():
    from workers.backends.precision import cast_keeping_fp32_modules
    from workers.tiny import build_tiny

    model, _ = build_tiny("tiny-random-t5")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cast_keeping_fp32_modules(model, torch.float16)
    for name, param in model.named_parameters():
        if ".wo." in name:
            assert param.dtype == torch.float32 and torch.equal(param, before[name])  # not rounded through fp16
        else:
            assert param.dtype == torch.float16
