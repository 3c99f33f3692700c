"""`DecoderBackend`: text-level scoring and surrogate generation for decoder-only models.

`score(tasks)` tokenizes every segment separately (``add_special_tokens=False``), builds the
prefix with `tracker.conditions.build_prefix_ids`, and scores all tasks of one mode together,
whatever samples they come from, through `workers.scoring.decoder.score_rows`: rows of equal
bucketed shapes share forward passes, and a row's numbers do not depend on its neighbours
(see workers.scoring.buckets). Errors a sample can cause (`EmptyAnswerError`,
`InputTooLongError`) are raised with a ``job_id`` attribute naming the offending task, before
any model work starts. `generate(tasks)` runs greedy generation at its own batch size
(`generation_batch_size`, default 128 on a GPU), independent of the scoring batch size.
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
import transformers

from tracker.catalogue import CatalogueEntry, check_mode_allowed
from tracker.errors import ConfigError, TrackerError
from workers.backends.base import (
    GenerateResult,
    GenerateTask,
    ScoreResult,
    ScoreTask,
    ScoringBackend,
)
from workers.backends.memory import AdaptiveBatchSize
from workers.devices import device_product_name
from workers.registry import LoadedModel, load_pretrained
from workers.scoring import SCORER_VERSION
from workers.scoring.buckets import DEFAULT_BUCKETS, ShapeBuckets
from workers.scoring.decoder import (
    ScoringRow,
    check_fits,
    default_max_batch,
    layout_row,
    score_rows,
)
from workers.scoring.generation import default_generation_batch, generate_greedy
from workers.scoring.lm_view import view_of
from workers.scoring.selfcheck import self_check as run_self_check

DEFAULT_GPU_MAX_TOKENS = 65536  # Phase A tokens per pass on a GPU (bounds activations and the cache)

SELF_CHECK_DOC = (
    "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris. It was completed in 1889 "
    "as the entrance arch to the World's Fair and is 330 metres tall."
)
SELF_CHECK_QUERY = "When was the Eiffel Tower completed?"
SELF_CHECK_ANSWER = "It was completed in 1889."
SELF_CHECK_PREFIX = "Extract the key facts from the following text."


def build_prefix_ids(condition: dict, sample: dict, tokenizer, *, surrogate_text: str | None = None):
    """`tracker.conditions.build_prefix_ids`, imported when first needed (owned by the experiments code)."""
    from tracker.conditions import build_prefix_ids as build

    return build(condition, sample, tokenizer, surrogate_text=surrogate_text)


def resolve_bos_id(spec: CatalogueEntry, tokenizer) -> int:
    """The BOS id by the spec's policy (see workers.registry): the tokenizer's BOS or a named token."""
    if spec.bos in (None, "tokenizer"):
        bos = tokenizer.bos_token_id
    else:
        bos = tokenizer.convert_tokens_to_ids(spec.bos)
    if bos is None:
        raise ConfigError(
            f"model {spec.name}: the tokenizer has no BOS token",
            hint="register the model with an explicit bos token in workers/registry.py",
        )
    return int(bos)


class DecoderBackend(ScoringBackend):
    """Decoder-only scoring (two_phase, full, prefix_lm_causal, prefix_lm_bidir) and chat generation."""

    def __init__(
        self,
        spec: CatalogueEntry,
        device: str = "cpu",
        dtype: str | None = None,
        *,
        attn_implementation: str | None = None,
        max_batch: int | None = None,
        loaded: LoadedModel | None = None,
        revision: str | None = None,
        generation_batch_size: int | None = None,
        buckets: ShapeBuckets = DEFAULT_BUCKETS,
        max_tokens: int | None = None,
    ) -> None:
        self.spec = spec
        self.name = spec.name
        self.loaded = loaded or load_pretrained(spec, device, dtype, attn_implementation, revision=revision)
        self.model = self.loaded.model
        self.tokenizer = self.loaded.tokenizer
        self.view = view_of(self.model)
        self.bos_id = resolve_bos_id(spec, self.tokenizer)
        self.nl_ids = self._encode("\n")
        if not self.nl_ids:
            raise ConfigError(f"model {spec.name}: the tokenizer encodes '\\n' to nothing")
        device = self.view.device
        self.buckets = buckets
        self.budget = AdaptiveBatchSize(max_batch or default_max_batch(device))
        self.generation_budget = AdaptiveBatchSize(generation_batch_size or default_generation_batch(device))
        self.max_tokens = max_tokens or (DEFAULT_GPU_MAX_TOKENS if device.type == "cuda" else None)
        self.last_self_check: dict | None = None

    # -- tokenization -------------------------------------------------------------------------------
    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _prefix_ids(self, task: ScoreTask) -> list[int] | None:
        ids = build_prefix_ids(task.condition, task.sample, self.tokenizer, surrogate_text=task.surrogate_text)
        return None if ids is None else [int(i) for i in ids]

    def _rows(self, tasks: Sequence[ScoreTask]) -> list[ScoringRow]:
        """Tokenize every task (each distinct text once) and validate it before any model work."""
        encoded: dict[str, list[int]] = {}

        def enc(text: str) -> list[int]:
            if text not in encoded:
                encoded[text] = self._encode(text)
            return encoded[text]

        rows = []
        for task in tasks:
            try:
                check_mode_allowed(self.spec, task.mode)
                sample = task.sample
                row = ScoringRow.of(self._prefix_ids(task), enc(sample["doc"]), enc(sample["query"]),
                                    enc(sample["answer"]))
                check_fits(self.view, task.mode, layout_row(self.bos_id, tuple(self.nl_ids), row))
            except TrackerError as error:
                error.job_id = task.job_id  # type: ignore[attr-defined]
                raise
            rows.append(row)
        return rows

    # -- ScoringBackend -----------------------------------------------------------------------------
    def score(self, tasks: list[ScoreTask]) -> list[ScoreResult]:
        """One result per task, same order; tasks of any samples, grouped by mode and then by pass shape."""
        rows = self._rows(tasks)
        results: list[ScoreResult | None] = [None] * len(tasks)
        by_mode: OrderedDict[str, list[int]] = OrderedDict()
        for idx, task in enumerate(tasks):
            by_mode.setdefault(task.mode, []).append(idx)
        for mode, idxs in by_mode.items():
            scores = score_rows(self.view, mode, self.bos_id, self.nl_ids, [rows[i] for i in idxs],
                                budget=self.budget, buckets=self.buckets, max_tokens=self.max_tokens)
            chunk_jobs: dict[int, list[int]] = {}
            for i, score in zip(idxs, scores):
                chunk_jobs.setdefault(score.chunk, []).append(tasks[i].job_id)
            for i, score in zip(idxs, scores):
                results[i] = self._result(tasks[i], rows[i], mode, score, chunk_jobs[score.chunk])
        return results  # type: ignore[return-value]

    def _result(self, task: ScoreTask, row: ScoringRow, mode: str, score, batch_jobs: list[int]) -> ScoreResult:
        extras: dict[str, Any] = {
            "mode": mode, "nl_ids": list(self.nl_ids), "scorer_version": SCORER_VERSION,
            "phase_a_len": len(score.phase_a_ids), "phase_b_len": len(score.phase_b_ids),
            "padded": score.padded, "bucket": score.shape.as_dict(), "batch_jobs": batch_jobs,
        }
        return ScoreResult(
            job_id=task.job_id, nll_mean=score.nll_mean, token_nlls=score.token_nlls,
            answer_ids=list(row.answer_ids), prefix_ids=None if row.prefix_ids is None else list(row.prefix_ids),
            doc_ids=list(row.doc_ids), query_ids=list(row.query_ids), bos_id=self.bos_id,
            batch_size=score.batch_size, extras=extras,
        )

    def generate(self, tasks: list[GenerateTask]) -> list[GenerateResult]:
        """Greedy generation with the model's chat template, at the generation batch size (see module docstring)."""
        template = self.tokenizer.chat_template
        if not template:
            raise ConfigError(f"model {self.name} has no chat template, so it cannot generate surrogates")
        template_hash = hashlib.sha256(template.encode()).hexdigest()[:16]
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.bos_id
        results: list[GenerateResult | None] = [None] * len(tasks)
        by_length: OrderedDict[int, list[int]] = OrderedDict()
        for idx, task in enumerate(tasks):
            by_length.setdefault(task.max_new_tokens, []).append(idx)
        for max_new, idxs in by_length.items():
            prompts = [self._prompt_ids(tasks[i].prompt) for i in idxs]
            generated = generate_greedy(self.model, prompts, max_new, pad_id=pad_id,
                                        eos_id=self.tokenizer.eos_token_id, budget=self.generation_budget)
            for i, out in zip(idxs, generated):
                text = self.tokenizer.decode(out.new_ids, skip_special_tokens=True).strip()
                results[i] = GenerateResult(tasks[i].job_id, text, {
                    "max_new_tokens": max_new, "do_sample": False, "template": "model chat template",
                    "chat_template_sha256": template_hash, "prompt_tokens": out.prompt_len,
                    "generated_tokens": len(out.new_ids), "batch_size": out.batch_size, "prompt_width": out.width,
                    "model": self.name,
                })
        return results  # type: ignore[return-value]

    def _prompt_ids(self, prompt: str) -> list[int]:
        rendered = self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                                      add_generation_prompt=True, tokenize=False)
        return self._encode(rendered)  # templates already contain their BOS

    def describe(self) -> dict:
        device = self.loaded.device
        return {
            "model": self.name, "family": self.spec.family, "source": self.spec.source,
            "location": self.spec.location, "model_class": type(self.model).__name__,
            "revision": self.loaded.revision, "dtype": str(self.loaded.dtype).removeprefix("torch."),
            "attn_implementation": self.loaded.attn_implementation, "device": str(device),
            "device_name": device_product_name(device), "torch": torch.__version__,
            "transformers": transformers.__version__, "scorer_version": SCORER_VERSION,
            "bos_id": self.bos_id, "bos_token": self.tokenizer.convert_ids_to_tokens(self.bos_id),
            "nl_ids": list(self.nl_ids), "max_positions": self.view.max_positions,
        }

    def self_check(self) -> dict:
        result = run_self_check(
            self.view, self.bos_id, self.nl_ids, self._encode(SELF_CHECK_DOC), self._encode(SELF_CHECK_QUERY),
            self._encode(SELF_CHECK_ANSWER), self._encode(SELF_CHECK_PREFIX),
            buckets=self.buckets, max_batch=self.budget.ceiling,
        )
        result["model"] = self.name
        self.last_self_check = result
        return result
