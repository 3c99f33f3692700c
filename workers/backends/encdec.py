"""The encoder-decoder scoring backend (T5, Flan-T5, BART, T5Gemma 2): text in, answer NLLs out.

Scoring semantics live in :mod:`workers.scoring.encdec` (layout, masks, NLL) and
:mod:`workers.scoring.probing` (attention shares); this module tokenizes, builds prefixes,
groups all conditions of one sample into one forward pass, adapts the batch size to memory
(workers.backends.memory: split on any OOM type, grow back after successes), keeps the
modules the model class keeps in fp32 (T5's ``wo``) in fp32 whatever the dtype, and runs the
start-up self-check.

Encoder wrapping: the special tokens the model's own tokenizer puts around ONE sequence
(found by comparing ``tokenizer(text)`` with ``tokenizer(text, add_special_tokens=False)``)
wrap ``prefix + doc`` under every condition, e.g. T5 ``prefix doc </s>``, BART
``<s> prefix doc </s>``, T5Gemma 2 ``<bos> prefix doc``. The prefix itself never carries
special tokens. Random ids for ``encdec_rq`` are drawn from the tokenizer's non-special ids.
"""
from __future__ import annotations

import contextlib
import math
import statistics
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import transformers

from tracker.catalogue import CatalogueEntry, check_mode_allowed
from tracker.conditions import build_prefix_ids, special_ids
from tracker.errors import InputTooLongError, SelfCheckFailed, TrackerError
from workers.backends.base import (
    GenerateResult,
    GenerateTask,
    ScoreResult,
    ScoreTask,
    ScoringBackend,
)
from workers.backends.memory import AdaptiveBatchSize, run_in_batches
from workers.backends.precision import restore_fp32_modules
from workers.devices import device_product_name
from workers.registry import LoadedModel, load_pretrained
from workers.scoring import ENCDEC_SCORER_VERSION
from workers.scoring.encdec import (
    EncDecLayout,
    RowScore,
    build_layout,
    decoder_start_id,
    encode_unique,
    has_merged_attention,
    parse_mode,
    random_query_ids,
    score_layouts,
)

DEFAULT_MAX_BATCH_ROWS = 32
_WRAP_PROBE_TEXT = "hello world"

# Self-check tolerances (nats): per answer token and on the mean, by dtype.
TOKEN_TOLERANCE = {torch.float32: 1e-4, torch.float16: 0.1, torch.bfloat16: 0.25}
MEAN_TOLERANCE = {torch.float32: 1e-4, torch.float16: 0.03, torch.bfloat16: 0.06}
# Extra tolerance per nat of loss for the labels-loss probe (half-precision losses round in half).
LOSS_RELATIVE_TOLERANCE = {torch.float32: 0.0, torch.float16: 1e-2, torch.bfloat16: 1e-2}
# Smallest relative change of the doc's encoder states that proves the encoder saw the prefix.
MIN_PREFIX_EFFECT = 1e-3

SELF_CHECK_TEXT = {
    "doc": "The Eiffel Tower is a wrought-iron lattice tower in Paris, France. It was completed in 1889.",
    "query": "When was the Eiffel Tower completed?",
    "answer": "It was completed in 1889.",
    "prefix": "Eiffel Tower completion year",
}


def encoder_wrapping(tokenizer) -> tuple[list[int], list[int]]:
    """(lead, trail): the special ids the tokenizer adds before and after one sequence."""
    plain = list(tokenizer(_WRAP_PROBE_TEXT, add_special_tokens=False)["input_ids"])
    full = list(tokenizer(_WRAP_PROBE_TEXT)["input_ids"])
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return full[:start], full[start + len(plain) :]
    raise TrackerError(
        "cannot tell which special tokens this tokenizer adds around a sequence",
        hint="use a tokenizer whose special tokens only wrap the text (T5, BART, Gemma tokenizers do)",
    )


def max_encoder_positions(config) -> int | None:
    """The encoder's hard length limit (learned or table positions), None when unbounded (T5)."""
    if config.model_type == "t5gemma2":
        return config.encoder.text_config.max_position_embeddings
    if config.model_type == "t5gemma":
        return config.encoder.max_position_embeddings
    return getattr(config, "max_position_embeddings", None)


def _set_attention(model, implementation: str) -> None:
    """`set_attn_implementation`, also on sub-module configs it does not reach (T5's stacks before transformers 5.24
    keep their own config copies, so the switch alone left them on sdpa)."""
    model.set_attn_implementation(implementation)
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and getattr(config, "_attn_implementation", implementation) != implementation:
            config._attn_implementation = implementation


@contextlib.contextmanager
def attention_implementation(model, implementation: str) -> Iterator[None]:
    """Temporarily switch the model's attention kernel (eager for probing: sdpa returns no weights)."""
    before = model.config._attn_implementation
    if before == implementation:
        yield
        return
    _set_attention(model, implementation)
    try:
        yield
    finally:
        _set_attention(model, before)


@dataclass(frozen=True)
class _Prepared:
    """A task tokenized and laid out, with the ids to record on its score."""

    task: ScoreTask
    layout: EncDecLayout
    prefix_ids: list[int] | None
    doc_ids: list[int]
    query_ids: list[int]
    random_ids: list[int] | None


class EncDecBackend(ScoringBackend):
    """Scores ``encdec_*`` modes on an encoder-decoder model (see the module docstring)."""

    def __init__(self, spec: CatalogueEntry, device: str = "cpu", dtype: str | None = None, *,
                 max_batch_rows: int = DEFAULT_MAX_BATCH_ROWS, loaded: LoadedModel | None = None,
                 revision: str | None = None, generation_batch_size: int | None = None) -> None:
        """``generation_batch_size`` is accepted for the worker's sake: encoder-decoder models
        generate no surrogates here (their specs use decoder generators)."""
        self.spec = spec
        self.name = spec.name
        self.loaded = loaded if loaded is not None else load_pretrained(
            spec, device, dtype, attn_implementation="sdpa", revision=revision)
        self.model = self.loaded.model.eval()
        self.fp32_modules = restore_fp32_modules(self.model, self.loaded.dtype)
        self.tokenizer = self.loaded.tokenizer
        config = self.model.config
        if not getattr(config, "is_encoder_decoder", False):
            raise TrackerError(
                f"model {spec.name} ({config.model_type}) is not an encoder-decoder model",
                hint="score decoder-only models with the decoder modes (two_phase, full, prefix_lm_*)",
            )
        self.start_id = decoder_start_id(config)
        self.pad_id = self._pad_id()
        self.lead, self.trail = encoder_wrapping(self.tokenizer)
        self.max_positions = max_encoder_positions(config)
        self.merged_attention = has_merged_attention(config)
        self.budget = AdaptiveBatchSize(max_batch_rows)
        decoder_vocab = config.get_text_config(decoder=True).vocab_size
        self.random_vocab_size = min(len(self.tokenizer), decoder_vocab)

    def _pad_id(self) -> int:
        pad = self.model.config.pad_token_id
        if pad is None:
            pad = self.tokenizer.pad_token_id
        if pad is None:
            raise TrackerError(f"model {self.spec.name} defines no pad token", hint="set pad_token_id in its config")
        return int(pad)

    # --- scoring -------------------------------------------------------------------------

    def score(self, tasks: list[ScoreTask]) -> list[ScoreResult]:
        """One result per task, in order; all tasks of one sample (and probe flag) share a forward pass."""
        encode_cache: dict[str, list[int]] = {}
        prepared = []
        for task in tasks:
            check_mode_allowed(self.spec, task.mode)  # an error fails the call; the worker retries jobs alone
            prepared.append(self._prepare(task, encode_cache))
        groups: OrderedDict[tuple[Any, bool], list[int]] = OrderedDict()
        for index, item in enumerate(prepared):
            key = (item.task.sample.get("id", item.task.sample.get("source_key")), parse_mode(item.task.mode).probe)
            groups.setdefault(key, []).append(index)
        results: list[ScoreResult | None] = [None] * len(tasks)
        for (_, probe), indices in groups.items():
            for batch, scores in self._score_adaptively(prepared, indices, probe):
                layouts = [prepared[i].layout for i in batch]
                composition = {
                    "batch_jobs": [prepared[i].task.job_id for i in batch],
                    "padded": len({len(l.encoder_ids) for l in layouts}) > 1
                    or len({len(l.decoder_ids) for l in layouts}) > 1,
                }
                for index, score in zip(batch, scores):
                    results[index] = self._result(prepared[index], score, composition)
        return results  # type: ignore[return-value]  # every index was filled

    def _encode(self, text: str, cache: dict[str, list[int]]) -> list[int]:
        if text not in cache:
            cache[text] = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        return cache[text]

    def _prepare(self, task: ScoreTask, cache: dict[str, list[int]]) -> _Prepared:
        mode = parse_mode(task.mode)
        sample = task.sample
        doc_ids = self._encode(sample["doc"], cache)
        query_ids = self._encode(sample["query"], cache)
        answer_ids = self._encode(sample["answer"], cache)
        prefix_ids = build_prefix_ids(task.condition, sample, self.tokenizer, surrogate_text=task.surrogate_text)
        random_ids = None
        if mode.decoder_query == "random":
            random_ids = random_query_ids(
                sample["source_key"], len(query_ids), self.random_vocab_size, special_ids(self.tokenizer)
            )
        layout = build_layout(
            prefix_ids=prefix_ids, doc_ids=doc_ids, query_ids=query_ids, answer_ids=answer_ids,
            start_id=self.start_id, mode=mode, random_ids=random_ids,
            encoder_lead=self.lead, encoder_trail=self.trail,
        )
        self._check_length(layout, task)
        prefix = None if prefix_ids is None else list(prefix_ids)
        return _Prepared(task, layout, prefix, doc_ids, query_ids, random_ids)

    def _check_length(self, layout: EncDecLayout, task: ScoreTask) -> None:
        if self.max_positions is None:
            return
        longest = max(len(layout.encoder_ids), len(layout.decoder_ids))
        if longest > self.max_positions:
            raise InputTooLongError(
                f"job {task.job_id}: {longest} tokens exceed {self.spec.name}'s {self.max_positions} positions",
                hint="give the dataset a smaller doc budget in its preparation recipe (the same for every condition)",
            )

    def _score_adaptively(self, items: Sequence[_Prepared], indices: Sequence[int], probe: bool):
        """Yield (task indices, row scores) over `indices`; a batch that runs out of memory is split."""
        def run(batch: list[int]) -> list[RowScore]:
            return self._forward([items[i].layout for i in batch], probe)

        describe = lambda i: f"one row of {self.spec.name} ({len(items[i].layout.encoder_ids)} encoder tokens)"  # noqa: E731
        yield from run_in_batches(list(indices), run, self.budget, self.loaded.device, describe=describe)

    def _forward(self, layouts: list[EncDecLayout], probe: bool) -> list[RowScore]:
        if not probe:
            return score_layouts(self.model, layouts, pad_id=self.pad_id)
        with attention_implementation(self.model, "eager"):
            return score_layouts(self.model, layouts, pad_id=self.pad_id, probe=True)

    def _result(self, item: _Prepared, score: RowScore, composition: dict[str, Any]) -> ScoreResult:
        layout = item.layout
        if not all(math.isfinite(nll) for nll in score.token_nlls):
            raise TrackerError(
                f"job {item.task.job_id}: {self.spec.name} produced a non-finite NLL in {self.loaded.dtype}",
                hint="score this model in bfloat16 or float32 (--dtype); T5 overflows in float16",
            )
        extras: dict[str, Any] = {
            "mode": item.task.mode,
            "scorer_version": ENCDEC_SCORER_VERSION,
            **composition,
            "encoder_lead": list(self.lead),
            "encoder_trail": list(self.trail),
            "prefix_hidden": layout.hide_prefix,
            "decoder_ids": list(layout.decoder_ids),
        }
        if item.random_ids is not None:
            extras["random_query_ids"] = list(item.random_ids)
        if score.attention is not None:
            extras["attention"] = score.attention
            extras["attn_implementation"] = "eager"
        return ScoreResult(
            job_id=item.task.job_id,
            nll_mean=statistics.fmean(score.token_nlls),
            token_nlls=score.token_nlls,
            answer_ids=list(layout.answer_ids),
            prefix_ids=item.prefix_ids,
            doc_ids=item.doc_ids,
            query_ids=item.query_ids,
            bos_id=self.start_id,
            batch_size=len(composition["batch_jobs"]),
            extras=extras,
        )

    # --- the rest of the interface ------------------------------------------------------

    def generate(self, tasks: list[GenerateTask]) -> list[GenerateResult]:
        raise TrackerError(
            f"{self.spec.name} is an encoder-decoder model; encoder-decoder models are not used to generate surrogates",
            hint="set the condition's `generator` to a decoder-only model (e.g. google/gemma-3-12b-it or smollm2-135m)",
        )

    def describe(self) -> dict:
        device = self.loaded.device
        return {
            "backend": "encdec",
            "model": self.spec.name,
            "location": self.spec.location,
            "source": self.spec.source,
            "model_type": self.model.config.model_type,
            "revision": self.loaded.revision,
            "dtype": str(self.loaded.dtype).removeprefix("torch."),
            "attn_implementation": self.model.config._attn_implementation,
            "device": str(device),
            "device_name": device_product_name(device),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "scorer_version": ENCDEC_SCORER_VERSION,
            "decoder_start_id": self.start_id,
            "encoder_lead": list(self.lead),
            "encoder_trail": list(self.trail),
            "attention_softmax": "merged" if self.merged_attention else "separate",
        }

    def self_check(self) -> dict:
        """Run the encoder-decoder invariant probes; raise SelfCheckFailed if any fails."""
        return run_self_check(self)


# --- start-up self-check -----------------------------------------------------------------

def _self_check_layouts(backend: EncDecBackend) -> dict[str, EncDecLayout]:
    ids = {key: list(backend.tokenizer(text, add_special_tokens=False)["input_ids"])
           for key, text in SELF_CHECK_TEXT.items()}
    common = dict(doc_ids=ids["doc"], query_ids=ids["query"], answer_ids=ids["answer"],
                  start_id=backend.start_id, encoder_lead=backend.lead, encoder_trail=backend.trail)
    return {
        "bare": build_layout(prefix_ids=None, mode=parse_mode("encdec_q"), **common),
        "hidden": build_layout(prefix_ids=ids["prefix"], mode=parse_mode("encdec_q"), **common),
        "visible": build_layout(prefix_ids=ids["prefix"], mode=parse_mode("encdec_q_visible"), **common),
        "no_query": build_layout(prefix_ids=ids["prefix"], mode=parse_mode("encdec_nq"), **common),
    }


@torch.no_grad()
def _labels_loss(model, layout: EncDecLayout, encoder_hidden: torch.Tensor) -> float:
    """The model's own loss with labels on the answer only (-100 elsewhere), full cross mask."""
    from transformers.modeling_outputs import BaseModelOutput

    decoder = torch.tensor([layout.decoder_ids], device=model.device)
    labels = torch.full_like(decoder, -100)
    for token in range(*layout.answer_span):  # the logit one position before scores each answer token
        labels[0, token - 1] = decoder[0, token]
    mask = torch.ones(encoder_hidden.shape[:2], dtype=torch.long, device=model.device)
    out = model(encoder_outputs=BaseModelOutput(last_hidden_state=encoder_hidden), attention_mask=mask,
                decoder_input_ids=decoder, labels=labels, use_cache=False)
    return float(out.loss)


def _max_abs_diff(a: Sequence[float], b: Sequence[float]) -> float:
    """Largest absolute difference; inf if any value is not finite (NaN must not slip through max)."""
    diffs = [abs(x - y) for x, y in zip(a, b, strict=True)]
    return max(diffs) if all(math.isfinite(d) for d in diffs) else math.inf


@torch.no_grad()
def run_self_check(backend: EncDecBackend) -> dict:
    """Probes on a fixed short input, on this checkpoint, dtype and device.

    1. ``labels_loss``: bare answer NLL (mean) equals the model's own labels-based loss with
       -100 on every non-answer position.
    2. ``sliced_encoder``: with the prefix hidden, per-token NLLs equal a decoder run on the
       encoder output with the prefix rows removed (the prefix is invisible to the decoder).
    3. ``prefix_cross_weight``: in eager attention the hidden prefix gets exactly zero
       cross-attention weight, and a visible one gets some (so the probe can see weight).
    4. ``prefix_reaches_encoder``: the doc's encoder states change with the prefix (the
       prefix was not hidden from the encoder too, which would silently reproduce bare).
    5. ``batched``: one batch of four rows equals each row scored alone.
    """
    model, dtype = backend.model, backend.loaded.dtype
    token_tol, mean_tol = TOKEN_TOLERANCE.get(dtype, 0.25), MEAN_TOLERANCE.get(dtype, 0.06)
    layouts = _self_check_layouts(backend)
    pad = backend.pad_id
    alone = {name: score_layouts(model, [layout], pad_id=pad)[0].token_nlls for name, layout in layouts.items()}
    probes: dict[str, dict] = {}

    bare = layouts["bare"]
    bare_hidden, _ = encode_unique(model, [bare], pad)
    loss = _labels_loss(model, bare, bare_hidden)
    diff = _max_abs_diff([statistics.fmean(alone["bare"])], [loss])
    probes["labels_loss"] = {"diff": diff, "tolerance": mean_tol + LOSS_RELATIVE_TOLERANCE.get(dtype, 1e-2) * abs(loss), "labels_loss": loss}

    hidden = layouts["hidden"]
    full_hidden, _ = encode_unique(model, [hidden], pad)  # [1, enc_len, dim]
    p0, p1 = hidden.prefix_span
    sliced = torch.cat([full_hidden[:, :p0], full_hidden[:, p1:]], dim=1)
    reference = _nlls_on_encoder_states(model, hidden, sliced)
    probes["sliced_encoder"] = {"diff": _max_abs_diff(alone["hidden"], reference), "tolerance": token_tol}

    with attention_implementation(model, "eager"):
        hid_probe, vis_probe = score_layouts(model, [hidden, layouts["visible"]], pad_id=pad, probe=True)
    hidden_share = max(r["share"] for r in hid_probe.attention if r["target"] == "prefix")
    visible_share = min(r["share"] for r in vis_probe.attention if r["target"] == "prefix" and r["layer"] == -1)
    probes["prefix_cross_weight"] = {"hidden_max": hidden_share, "visible_min": visible_share,
                                     "passed": hidden_share <= 1e-6 and visible_share > 0.0}

    lead, doc_len = len(backend.lead), len(bare.encoder_ids) - len(backend.lead) - len(backend.trail)
    bare_doc = bare_hidden[0, lead : lead + doc_len].float()  # [doc_len, dim]
    prefixed_doc = full_hidden[0, p1 : p1 + doc_len].float()  # [doc_len, dim]
    effect = float((prefixed_doc - bare_doc).norm() / bare_doc.norm().clamp_min(1e-12))
    probes["prefix_reaches_encoder"] = {"relative_change": effect, "minimum": MIN_PREFIX_EFFECT}

    names = list(layouts)
    batched = score_layouts(model, [layouts[n] for n in names], pad_id=pad)
    probes["batched"] = {"diff": max(_max_abs_diff(r.token_nlls, alone[n]) for n, r in zip(names, batched)),
                         "tolerance": token_tol}

    for name, probe in probes.items():
        if "passed" not in probe:
            probe["passed"] = (probe["relative_change"] >= probe["minimum"] if "minimum" in probe
                               else probe["diff"] <= probe["tolerance"])
    failures = [name for name, probe in probes.items() if not probe["passed"]]
    result = {"passed": not failures, "scorer_version": ENCDEC_SCORER_VERSION,
              "dtype": str(dtype).removeprefix("torch."), "device": str(backend.loaded.device), "probes": probes}
    if failures:
        raise SelfCheckFailed(
            f"{backend.spec.name} failed the encoder-decoder self-check ({', '.join(failures)}): "
            + "; ".join(f"{n}={probes[n]}" for n in failures),
            hint="this model family or dtype is not scored correctly here; report it with this message",
        )
    return result


def _nlls_on_encoder_states(model, layout: EncDecLayout, encoder_hidden: torch.Tensor) -> list[float]:
    """Answer NLLs of a decoder run on given encoder states with a full cross mask."""
    from transformers.modeling_outputs import BaseModelOutput

    mask = torch.ones(encoder_hidden.shape[:2], dtype=torch.long, device=model.device)
    out = model(encoder_outputs=BaseModelOutput(last_hidden_state=encoder_hidden), attention_mask=mask,
                decoder_input_ids=torch.tensor([layout.decoder_ids], device=model.device), use_cache=False)
    log_probs = torch.log_softmax(out.logits[0].float(), dim=-1)  # [dec_len, vocab]
    return [-float(log_probs[t - 1, layout.decoder_ids[t]]) for t in range(*layout.answer_span)]
