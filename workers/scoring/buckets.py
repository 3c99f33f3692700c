"""Forward-pass shapes that depend on the row alone: the basis of batch invariance.

In bf16 a row's numbers change with the shape of the pass it runs in (kernels tile by the
padded sequence length: padding a row changes its NLL by up to ~0.1 nats on the CPU),
while rows of the same shape batched together give exactly the numbers of the row alone.
So the scorer never pads a row to its neighbours: every row is padded to a width that is
a function of its own length only (a `LengthLadder` rung), runs with the same explicit
attention mask whether alone or batched, and shares passes only with rows of the same
widths, from any sample. `EXACT` pads nothing (same-length groups only, no masks).

Ladder: between 2^k and 2^(k+1) the rungs are ``steps`` equal steps of 2^k / steps
tokens (never finer than ``min_step``), so padding wastes at most 1/steps of a row.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LengthLadder:
    """Widths a sequence is padded to: `steps` rungs per octave, rung spacing at least `min_step`."""

    steps: int = 8
    min_step: int = 4

    def width(self, length: int) -> int:
        if length <= 0:
            raise ValueError(f"cannot bucket an empty sequence (length {length})")
        step = max(self.min_step, (1 << (length.bit_length() - 1)) // self.steps)
        return -(-length // step) * step


@dataclass(frozen=True)
class ShapeBuckets:
    """Ladders for Phase A / the re-rotated cache and for Phase B; None pads nothing (exact lengths)."""

    phase_a: LengthLadder | None
    phase_b: LengthLadder | None

    @property
    def explicit_masks(self) -> bool:
        """Padded policies always pass a materialised mask, so a row that happens to need no padding runs the
        same kernel as its padded neighbours (sdpa's `is_causal` path would give other bf16 numbers)."""
        return self.phase_a is not None or self.phase_b is not None

    def phase_a_width(self, length: int) -> int:
        return length if self.phase_a is None else self.phase_a.width(length)

    def phase_b_width(self, length: int) -> int:
        return length if self.phase_b is None else self.phase_b.width(length)

    def describe(self) -> dict:
        def ladder(l: LengthLadder | None):
            return None if l is None else {"steps": l.steps, "min_step": l.min_step}

        return {"phase_a": ladder(self.phase_a), "phase_b": ladder(self.phase_b)}


EXACT = ShapeBuckets(None, None)
# Phase A (docs of hundreds of tokens): 1/8 octave, <= 12.5% padding. Phase B (query + answer, tens of tokens,
# a small share of the FLOPs): coarse, so cross-sample rows meet in few buckets.
DEFAULT_BUCKETS = ShapeBuckets(LengthLadder(steps=8, min_step=4), LengthLadder(steps=2, min_step=8))
