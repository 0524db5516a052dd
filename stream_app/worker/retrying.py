"""A reader of a whole topic that must outlive broker errors: started over after each, for as long as the worker
runs (the catalogue and clicks readers; what they apply is idempotent, so reading again is harmless)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from stream_app.worker.metrics import WorkerMetrics

logger = logging.getLogger(__name__)

RETRY_SECONDS = 2.0


async def read_forever(read: Callable[[], Awaitable[None]], metrics: WorkerMetrics, stage: str, what: str) -> None:
    """Run `read` again after every error (counted under `stage`, logged as failing to read `what`)."""
    while True:
        try:
            await read()
        except asyncio.CancelledError:
            raise
        except Exception:
            metrics.errors.labels(stage=stage).inc()
            logger.exception("reading %s failed; again", what)
            await asyncio.sleep(RETRY_SECONDS)
