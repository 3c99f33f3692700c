"""Devices and dtypes by name: what ``--device`` / ``--gpu`` / ``--dtype`` mean, without torch.

The worker turns these names into torch objects (``workers.devices``); enqueue needs only
the names, because a model's dtype is part of its identity.
"""
from __future__ import annotations

from tracker.errors import ConfigError

DTYPE_ALIASES = {
    "float32": "float32", "fp32": "float32", "float": "float32",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
    "float16": "float16", "fp16": "float16", "half": "float16",
}


def is_gpu(device: str) -> bool:
    return str(device).startswith("cuda")


def dtype_name(device: str, dtype: str | None) -> str:
    """bf16 by default on a GPU, fp32 on the CPU; ``dtype`` ('bf16', 'float32', ...) overrides."""
    if dtype is None or dtype == "":
        return "bfloat16" if is_gpu(device) else "float32"
    key = str(dtype).lower().removeprefix("torch.")
    if key not in DTYPE_ALIASES:
        raise ConfigError(f"unknown dtype {dtype!r}; use one of float32, bfloat16, float16")
    return DTYPE_ALIASES[key]


def device_string(gpu: int | None, device: str | None) -> str:
    """``--gpu N`` / ``--device D`` as one device string (``cpu`` or ``cuda:N``), syntax only.

    Whether this machine has that GPU is the worker's question (``workers.devices``).
    """
    if gpu is not None and device is not None:
        raise ConfigError("Give either --gpu or --device, not both.", hint="e.g. `tracker worker --gpu 0`")
    name = f"cuda:{gpu}" if gpu is not None else (device or "cpu")
    if name == "cpu":
        return name
    if name == "cuda":
        return "cuda:0"
    head, _, index = name.partition(":")
    if head != "cuda" or not index.isdigit():
        raise ConfigError(f"Unknown device {name!r}.", hint="use --device cpu, --device cuda:N or --gpu N")
    return f"cuda:{int(index)}"


def gpu_index(device: str) -> int:
    return int(device.partition(":")[2] or 0)
