"""The dead-letter record format: the refused message unchanged, the why and where in headers.

Keeping the original key and value byte for byte (no base64 envelope) lets an operator replay a
fixed message with any Kafka tool, and mirrors Kafka Connect's dead-letter queues. Headers (UTF-8):

    nextclick.dlq.reason     reason code (`stream_app.events.Reason`), e.g. ``bad_json``
    nextclick.dlq.message    human-readable detail, at most 200 characters
    nextclick.dlq.topic      source topic
    nextclick.dlq.partition  source partition (decimal)
    nextclick.dlq.offset     source offset (decimal)
    nextclick.dlq.failed_at  Unix seconds when the worker refused it
"""

from __future__ import annotations

import time

from stream_app.events import InvalidClick

HEADER_PREFIX = "nextclick.dlq."


def dead_letter_headers(error: InvalidClick, *, topic: str, partition: int, offset: int) -> dict[str, bytes]:
    fields = {
        "reason": str(error.reason),
        "message": error.message,
        "topic": topic,
        "partition": str(partition),
        "offset": str(offset),
        "failed_at": f"{time.time():.3f}",
    }
    return {HEADER_PREFIX + name: value.encode("utf-8") for name, value in fields.items()}
