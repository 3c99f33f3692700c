"""Greedy generation on token ids at GPU batch sizes, in shapes that depend on the prompt alone.

Prompts are sorted by length and left-padded to a `LengthLadder` width of their own length
(plus one, so every row has at least one pad and the attention mask is always materialised:
with no pad at all transformers would take sdpa's unmasked path for that batch only). Only
prompts of the same width share a batch, so a prompt's greedy tokens do not depend on which
other prompts share its batch (on the CPU exactly; on CUDA the device benchmark measures it).
Batches are cut at an `AdaptiveBatchSize` (the generation batch size) and split in halves on
out-of-memory (workers.backends.memory).
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from workers.backends.memory import AdaptiveBatchSize, run_in_batches
from workers.scoring.buckets import LengthLadder

GENERATION_LADDER = LengthLadder(steps=8, min_step=8)
DEFAULT_GPU_GENERATION_BATCH = 128
DEFAULT_CPU_GENERATION_BATCH = 8


def default_generation_batch(device: torch.device) -> int:
    return DEFAULT_GPU_GENERATION_BATCH if device.type == "cuda" else DEFAULT_CPU_GENERATION_BATCH


@dataclass
class Generated:
    """The new tokens of one prompt (cut at the first EOS, trailing pads dropped) and its batch."""

    new_ids: list[int]
    prompt_len: int
    width: int  # padded prompt width
    batch_size: int


def prompt_width(length: int, ladder: LengthLadder = GENERATION_LADDER) -> int:
    """The padded width of a prompt of `length` tokens: its own rung, always with at least one pad."""
    return ladder.width(length + 1)


def _strip(tokens: list[int], eos_id: int | None, pad_id: int) -> list[int]:
    if eos_id is not None and eos_id in tokens:
        tokens = tokens[: tokens.index(eos_id)]
    while tokens and tokens[-1] == pad_id:
        tokens.pop()
    return tokens


@torch.inference_mode()
def generate_greedy(
    model,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    *,
    pad_id: int,
    eos_id: int | None,
    budget: AdaptiveBatchSize,
    ladder: LengthLadder = GENERATION_LADDER,
) -> list[Generated]:
    """Greedy continuations of token-id prompts, one per prompt, same order."""
    device = next(model.parameters()).device
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    by_width: OrderedDict[int, list[int]] = OrderedDict()
    for i in order:
        by_width.setdefault(prompt_width(len(prompts[i]), ladder), []).append(i)
    results: list[Generated | None] = [None] * len(prompts)
    for width, group in by_width.items():

        def run(idxs: list[int], width=width) -> torch.Tensor:
            rows = [list(prompts[i]) for i in idxs]
            ids = torch.tensor([[pad_id] * (width - len(r)) + r for r in rows], device=device)  # [batch, width]
            mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                                 temperature=None, top_p=None, top_k=None, pad_token_id=pad_id)
            return out[:, width:].cpu()  # [batch, new]

        describe = lambda i: f"a prompt of {len(prompts[i])} tokens"  # noqa: E731
        for idxs, new in run_in_batches(group, run, budget, device, describe=describe):
            for b, i in enumerate(idxs):
                results[i] = Generated(_strip(new[b].tolist(), eos_id, pad_id), len(prompts[i]), width, len(idxs))
    return results  # type: ignore[return-value]
