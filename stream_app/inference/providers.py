"""Where onnxruntime scores, CUDA or the CPU (NEXTCLICK_INFERENCE_PROVIDER), decided in this one place.

`auto` takes CUDA where this onnxruntime build has it (onnxruntime-gpu, the `gpu` extra), else the CPU; `cpu` never
touches a GPU. `cuda` never scores on the CPU: a deployment sized for a GPU's clicks/s would fall behind on a CPU's
with nothing but its lag to say why, so it refuses instead. onnxruntime itself falls back to the CPU quietly when
CUDA's or cuDNN's libraries do not load, so what counts is the provider a session got, not the one asked for
(docs/serving.md, Serving on a GPU).
"""

from __future__ import annotations

import logging
from pathlib import Path

import onnxruntime as ort

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"

logger = logging.getLogger(__name__)


class ProviderUnavailable(RuntimeError):
    """NEXTCLICK_INFERENCE_PROVIDER=cuda where onnxruntime cannot score on CUDA."""


def requested_providers(setting: str) -> list[str]:
    """The providers a session is asked for, best first (NEXTCLICK_INFERENCE_PROVIDER: `auto`, `cpu` or `cuda`);
    with CUDA the CPU comes second, for any node CUDA has no kernel for."""
    if setting == "cpu":
        return [CPU]
    available = ort.get_available_providers()
    if CUDA in available:
        return [CUDA, CPU]
    if setting == "cuda":
        raise ProviderUnavailable(
            f"NEXTCLICK_INFERENCE_PROVIDER=cuda, but this onnxruntime has no CUDA provider (it has "
            f"{', '.join(available)}): install onnxruntime-gpu in place of onnxruntime (docs/serving.md, Serving on "
            "a GPU), or set NEXTCLICK_INFERENCE_PROVIDER=auto to score on the CPU"
        )
    return [CPU]


def inference_session(graph: Path, options: ort.SessionOptions, setting: str) -> ort.InferenceSession:
    """The graph's session on the provider `setting` chooses. A session that onnxruntime put on the CPU although CUDA
    was asked for is refused under `cuda` and logged under `auto`; under `cuda`, onnxruntime's own fallback to the
    CPU after a failed run is turned off, so such a run fails instead."""
    providers = requested_providers(setting)
    session = ort.InferenceSession(str(graph), sess_options=options, providers=providers)
    if providers[0] == CUDA and session.get_providers()[0] != CUDA:
        if setting == "cuda":
            raise ProviderUnavailable(
                f"NEXTCLICK_INFERENCE_PROVIDER=cuda, but onnxruntime could not start CUDA for {graph.name} (its "
                "warning above says why: usually CUDA's or cuDNN's libraries not found, or not the versions this "
                "onnxruntime-gpu was built for)"
            )
        logger.warning("%s: onnxruntime has CUDA but could not start it (its warning above says why); "
                       "scoring on the CPU", graph.name)
    if setting == "cuda":
        session.disable_fallback()
    return session
