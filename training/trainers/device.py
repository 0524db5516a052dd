"""Where training runs: the CPU or one CUDA GPU (`--device`, NEXTCLICK_TRAIN_DEVICE).

Every trainer and the evaluation take a `torch.device`; models start on the CPU (the same initial weights
whatever the device, from the same seed), then move. On the CPU nothing is copied and nothing changes:
`.to(cpu)` of a CPU tensor is the tensor itself. One GPU only: multi-GPU training is out of scope
(docs/training-on-a-gpu.md).
"""

from __future__ import annotations

import warnings
from contextlib import AbstractContextManager
from typing import Any

import torch

DEVICES = ("auto", "cpu", "cuda")
CPU = torch.device("cpu")


def training_device(name: str) -> torch.device:
    """`auto`: the GPU when torch sees one, else the CPU. `cuda` without one fails here, before any data is read."""
    if name not in DEVICES:
        raise SystemExit(f"--device must be one of {', '.join(DEVICES)}, got {name!r}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        raise SystemExit(f"--device cuda: torch {torch.__version__} ({build}) sees no CUDA GPU; train with "
                         "--device cpu (or auto), or install a CUDA torch on a machine with a GPU "
                         "(docs/training-on-a-gpu.md)")
    return torch.device(name)


def module_device(module: Any) -> torch.device:
    """Where a model's weights are; the CPU for anything else that scores (a function, an onnxruntime graph)."""
    if isinstance(module, torch.nn.Module):
        first = next(module.parameters(), None)
        if first is not None:
            return first.device
    return CPU


def cpu_bfloat16_matmuls() -> bool:
    """Whether oneDNN runs bfloat16 matrix products on this CPU (AVX512 or AMX on x86, BF16 on Arm). Elsewhere
    (an AVX2-only CPU) torch's bfloat16 products take a path many times slower than float32 ones. torch has
    no public probe for it: this is the one its own tests use (tests/training/test_device.py checks it exists)."""
    return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def bfloat16_matmuls(device: torch.device, wanted: bool) -> bool:
    """Whether `matmul_precision='bfloat16'` (`wanted`) runs in bfloat16 on `device`: a GPU without it (before
    Ampere) or a CPU without it (`cpu_bfloat16_matmuls`) trains in float32 instead, with a warning."""
    if not wanted:
        return False
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        warnings.warn("this GPU has no bfloat16: matmul_precision='bfloat16' trains in float32", stacklevel=2)
        return False
    if device.type == "cpu" and not cpu_bfloat16_matmuls():
        warnings.warn("this CPU has no bfloat16 matrix products (AVX512 or AMX): matmul_precision='bfloat16' "
                      "trains in float32, many times faster here", stacklevel=2)
        return False
    return True


def bfloat16_autocast(device: torch.device, enabled: bool) -> AbstractContextManager:
    """bfloat16 matrix products (float32 accumulation) on `device` when `enabled` (`bfloat16_matmuls`)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def rng_state(device: torch.device) -> tuple[torch.Tensor, ...]:
    """The random streams dropout draws from on `device` (the CPU's; a GPU's too), to carry across `fit` calls."""
    if device.type == "cuda":
        return torch.get_rng_state(), torch.cuda.get_rng_state(device)
    return (torch.get_rng_state(),)


def set_rng_state(device: torch.device, state: tuple[torch.Tensor, ...]) -> None:
    torch.set_rng_state(state[0])
    if device.type == "cuda":
        torch.cuda.set_rng_state(state[1], device)
