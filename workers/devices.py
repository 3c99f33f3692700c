"""Device and dtype names (``tracker.catalogue.dtypes``) made into torch objects on this machine.

torch is imported by the functions that need it, so a CPU-only command (``tracker status``)
that imports the worker package for its defaults does not pay for it.
"""
from __future__ import annotations

import platform
from pathlib import Path
from typing import TYPE_CHECKING

from tracker import settings
from tracker.catalogue.dtypes import device_string, dtype_name, gpu_index, is_gpu
from tracker.errors import DeviceError

if TYPE_CHECKING:
    import torch


def available_device(gpu: int | None = None, device: str | None = None) -> str:
    """``--gpu N`` / ``--device D`` as a device string this machine has (DeviceError otherwise)."""
    name = device_string(gpu, device)
    if not is_gpu(name):
        return name
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = gpu_index(name)
    if index >= count:
        raise DeviceError(
            f"This machine has no GPU {index} (torch sees {count} GPU{'s' if count != 1 else ''}).",
            hint="use --device cpu" if count == 0 else f"pick --gpu between 0 and {count - 1}",
        )
    return name


def pin_gpu(gpu: int) -> tuple[str, str]:
    """``--gpu N``: this process sees GPU N only, as ``cuda:0``; returns (``cuda:0``, physical id)."""
    physical = settings.pin_gpu(gpu)
    try:
        return available_device(0, None), physical
    except DeviceError as err:
        raise DeviceError(f"This machine has no GPU {gpu} (with CUDA_VISIBLE_DEVICES={physical} torch sees none).",
                          hint="use --device cpu, or a GPU index that nvidia-smi lists") from err


def torch_device(device: str | torch.device | None) -> torch.device:
    """The torch device for a device string, refusing GPUs this machine lacks."""
    import torch

    if isinstance(device, torch.device):
        return device
    return torch.device(available_device(device=device or "cpu"))


def torch_dtype(device: str | torch.device, dtype: str | torch.dtype | None) -> torch.dtype:
    """bf16 by default on a GPU, fp32 on the CPU; ``dtype`` ('bf16', 'float32', ...) overrides."""
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    return getattr(torch, dtype_name(str(device), dtype))


def device_product_name(device: str | torch.device) -> str:
    """What the hardware is called: the GPU's product name, or the CPU model (``/proc/cpuinfo``)."""
    device = str(device)
    if is_gpu(device):
        import torch

        return torch.cuda.get_device_name(gpu_index(device))
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"
