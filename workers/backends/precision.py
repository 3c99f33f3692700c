"""Casting a loaded model to a dtype without undoing the modules its class keeps in fp32.

transformers' `from_pretrained(dtype=...)` keeps a class's ``_keep_in_fp32_modules`` in fp32
when the dtype is fp16 and its ``_keep_in_fp32_modules_strict`` for fp16 and bf16 (T5 keeps
its feed-forward output ``wo`` in fp32: in fp16 its activations overflow). A plain
``model.to(dtype)`` casts those too; `cast_keeping_fp32_modules` applies the same rule after
the cast.
"""
from __future__ import annotations

import torch
from torch import nn


def fp32_module_names(model: nn.Module, dtype: torch.dtype) -> list[str]:
    """Names of the submodules transformers keeps in fp32 for `dtype` (matched on any dotted name component)."""
    keep: set[str] = set()
    if dtype == torch.float16:
        keep |= set(getattr(model, "_keep_in_fp32_modules", None) or ())
    if dtype in (torch.float16, torch.bfloat16):
        keep |= set(getattr(model, "_keep_in_fp32_modules_strict", None) or ())
    if not keep:
        return []
    return [name for name, _ in model.named_modules() if name and keep & set(name.split("."))]


def restore_fp32_modules(model: nn.Module, dtype: torch.dtype) -> list[str]:
    """Put the modules transformers keeps in fp32 for `dtype` back in fp32; returns their names."""
    names = fp32_module_names(model, dtype)
    modules = dict(model.named_modules())
    for name in names:
        modules[name].to(torch.float32)
    return names


def cast_keeping_fp32_modules(model: nn.Module, dtype: torch.dtype, device: torch.device | str | None = None):
    """``model.to(device, dtype)`` that leaves the class's fp32 modules in fp32 (weights cast once, from fp32)."""
    names = fp32_module_names(model, dtype)
    kept = {name: module for name, module in model.named_modules() if name in set(names)}
    originals = {name: {k: p.detach().clone() for k, p in module.state_dict().items()} for name, module in kept.items()}
    model.to(device=device, dtype=dtype)
    for name, module in kept.items():
        module.to(torch.float32)
        module.load_state_dict({k: v.float() for k, v in originals[name].items()})
    return model
