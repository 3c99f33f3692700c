"""The shared out-of-memory back-off (workers.backends.memory) with fake OOMs on the CPU."""
from __future__ import annotations

import weakref

import pytest
import torch

import workers.backends.memory as memory
from tracker.errors import DeviceError
from workers.backends.memory import AdaptiveBatchSize, is_out_of_memory, run_in_batches


def test_every_oom_type_torch_raises_is_recognised():
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory"))
    assert is_out_of_memory(RuntimeError("MPS backend out of memory (MPS allocated: 17.00 GB)"))
    assert is_out_of_memory(RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate`"))
    assert not is_out_of_memory(RuntimeError("The size of tensor a (4) must match the size of tensor b (5)"))
    assert not is_out_of_memory(ValueError("out of memory"))  # not an allocator error type


def test_a_failed_batch_is_freed_before_the_cache_is_emptied_then_split_in_halves(monkeypatch):
    alive_at_free: list[bool] = []
    refs: list[weakref.ref] = []
    monkeypatch.setattr(memory, "free_device_memory", lambda device: alive_at_free.append(
        any(r() is not None for r in refs)))
    sizes: list[int] = []

    def work(batch: list[int]) -> list[int]:
        activations = torch.ones(len(batch), 1024)  # the batch's tensors, referenced by this frame
        refs.append(weakref.ref(activations))
        sizes.append(len(batch))
        if len(batch) > 3:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return [2 * item for item in batch]

    budget = AdaptiveBatchSize(16, grow_after=100)  # no growing back in this test
    out = [(batch, result) for batch, result in run_in_batches(list(range(20)), work, budget, "cpu")]
    assert alive_at_free == [False, False, False]  # nothing of the failed batch survives to empty_cache
    assert sizes[:4] == [16, 8, 4, 2] and budget.ooms == 3 and budget.size == 2  # halves, not straight to one
    assert [x for batch, _ in out for x in batch] == list(range(20))
    assert [x for _, result in out for x in result] == [2 * x for x in range(20)]


def test_the_batch_grows_back_after_successes():
    budget = AdaptiveBatchSize(8, grow_after=2)
    budget.failed(8)
    assert budget.size == 4
    budget.succeeded(3)  # a short batch proves nothing about the size
    assert budget.size == 4 and budget.streak == 0
    budget.succeeded(4)
    budget.succeeded(4)
    assert budget.size == 8
    budget.succeeded(8)
    assert budget.size == 8  # never above the ceiling


def test_other_errors_pass_through_and_a_single_item_that_does_not_fit_is_a_device_error():
    def broken(batch):
        raise KeyError("not an OOM")

    with pytest.raises(KeyError):
        list(run_in_batches([1, 2], broken, AdaptiveBatchSize(2), "cpu"))

    def never_fits(batch):
        raise torch.OutOfMemoryError("CUDA out of memory")

    budget = AdaptiveBatchSize(4)
    with pytest.raises(DeviceError, match="alone"):
        list(run_in_batches([1, 2, 3, 4], never_fits, budget, "cpu", describe=lambda i: f"item {i}"))
    assert budget.ooms == 2  # 4 -> 2 -> 1, then the single item fails
