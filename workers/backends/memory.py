"""Out-of-memory handling shared by every backend: classify, free, split, grow back.

`run_in_batches` runs a function over consecutive batches of items at an `AdaptiveBatchSize`.
When a batch runs out of device memory, the failed batch's tensors are released first (the
exception and its traceback, which hold the frames that hold them, are dropped before
``empty_cache``), the batch size becomes half the failed batch and the same items are retried;
after `grow_after` successful full batches the size doubles again, up to the configured
ceiling. A single item that does not fit raises `DeviceError`.

Batch invariance makes this safe for scores: a row's numbers do not depend on how many rows
share its pass (see workers.scoring.buckets).
"""
from __future__ import annotations

import gc
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch

from tracker.errors import DeviceError

T = TypeVar("T")
R = TypeVar("R")

_OOM_TYPES: tuple[type[BaseException], ...] = tuple(
    {t for t in (getattr(torch, "OutOfMemoryError", None), getattr(torch.cuda, "OutOfMemoryError", None)) if t}
)
# Allocator failures that torch raises as plain RuntimeError: MPS ("MPS backend out of memory"),
# cuBLAS/cuDNN workspace allocations, older CUDA builds.
_OOM_MESSAGES = ("out of memory", "cublas_status_alloc_failed", "cudnn_status_alloc_failed")


def is_out_of_memory(error: BaseException) -> bool:
    """Whether `error` is a device allocation failure (CUDA, MPS, cuBLAS/cuDNN workspaces)."""
    if _OOM_TYPES and isinstance(error, _OOM_TYPES):
        return True
    return isinstance(error, RuntimeError) and any(m in str(error).lower() for m in _OOM_MESSAGES)


def free_device_memory(device: torch.device | str | None) -> None:
    """Collect unreachable tensors, then hand the allocator's cached blocks back to the device."""
    gc.collect()
    kind = torch.device(device).type if device is not None else "cpu"
    if kind == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()
    elif kind == "mps" and hasattr(torch, "mps") and hasattr(torch.mps, "empty_cache"):
        torch.mps.empty_cache()


@dataclass
class AdaptiveBatchSize:
    """The batch size in use: halved to half the failed batch on OOM, doubled after `grow_after` full successes."""

    ceiling: int
    size: int = 0
    grow_after: int = 4
    ooms: int = 0
    streak: int = 0

    def __post_init__(self) -> None:
        if self.ceiling < 1:
            raise ValueError(f"batch size ceiling must be >= 1, got {self.ceiling}")
        self.size = self.size or self.ceiling

    def set_ceiling(self, ceiling: int) -> None:
        """A new configured maximum (e.g. `--batch-size`); starts there again."""
        self.ceiling = self.size = max(1, int(ceiling))
        self.streak = 0

    def failed(self, batch_len: int) -> None:
        self.ooms += 1
        self.streak = 0
        self.size = max(1, batch_len // 2)

    def succeeded(self, batch_len: int) -> None:
        if batch_len < self.size or self.size >= self.ceiling:
            return
        self.streak += 1
        if self.streak >= self.grow_after:
            self.size, self.streak = min(self.ceiling, self.size * 2), 0


def run_in_batches(
    items: Sequence[T],
    fn: Callable[[list[T]], R],
    budget: AdaptiveBatchSize,
    device: torch.device | str | None,
    *,
    describe: Callable[[T], str] = lambda item: "one item",
    cap: int | None = None,
) -> Iterator[tuple[list[T], R]]:
    """Yield (batch, fn(batch)) over consecutive batches of `items`, splitting a batch that runs out of memory.

    `cap` bounds a batch below the budget for this call only (e.g. a token budget for long rows).
    """
    start = 0
    while start < len(items):
        size = min(budget.size, cap) if cap else budget.size
        batch = list(items[start : start + max(1, size)])
        failed = False
        try:
            result = fn(batch)
        except Exception as error:  # noqa: BLE001 - only allocation failures are handled, the rest re-raised
            if not is_out_of_memory(error):
                raise
            if len(batch) == 1:
                raise DeviceError(
                    f"out of memory on {device} with {describe(batch[0])} alone",
                    hint="use a smaller model, a shorter doc budget, --dtype bfloat16 or a device with more memory",
                ) from error
            failed = True  # leaving the except block drops the error, its traceback and the batch's tensors
        if failed:
            free_device_memory(device)
            budget.failed(len(batch))
            continue
        budget.succeeded(len(batch))
        yield batch, result
        start += len(batch)
