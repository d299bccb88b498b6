"""Which torch device and dtype a worker runs on, and how much GPU memory it holds."""

from __future__ import annotations

import torch

from common.errors import ModelError


def resolve_device(name: str) -> torch.device:
    """`auto` → the first visible CUDA device (respects CUDA_VISIBLE_DEVICES), else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"model.device = {name!r} but no CUDA device is visible; use auto or cpu")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """`auto` → bfloat16 on CUDA (float16 where bf16 is unsupported), float32 on CPU."""
    if name == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return getattr(torch, name)


def gpu_memory(device: str) -> dict[str, int]:
    """Allocated, reserved and total memory of a CUDA device, in bytes; {} on the CPU."""
    if not device.startswith("cuda"):
        return {}
    if not torch.cuda.is_available():
        return {}
    index = torch.device(device).index
    index = torch.cuda.current_device() if index is None else index
    return {
        "gpu_memory_allocated_bytes": int(torch.cuda.memory_allocated(index)),
        "gpu_memory_reserved_bytes": int(torch.cuda.memory_reserved(index)),
        "gpu_memory_total_bytes": int(torch.cuda.get_device_properties(index).total_memory),
    }
