"""The dead-letter record format: the refused message (a click, or a catalogue record) unchanged, the why and where
in headers.

Keeping the original key and value byte for byte (no base64 envelope) lets an operator replay a
fixed message with any Kafka tool, and mirrors Kafka Connect's dead-letter queues. Headers (UTF-8):

    nextclick.dlq.reason     reason code (`stream_app.inference.events.Reason`), e.g. ``bad_json``
    nextclick.dlq.message    human-readable detail, at most 200 characters
    nextclick.dlq.topic      source topic
    nextclick.dlq.partition  source partition (decimal)
    nextclick.dlq.offset     source offset (decimal)
    nextclick.dlq.failed_at  Unix seconds when the worker refused it

A key or value longer than `KEPT_BYTES` (256 KiB) is cut to its first `KEPT_BYTES` bytes, so that
the broker takes the dead letter whatever was refused: a message of 1 MB or more, readable from a
topic whose limit is higher, would exceed the producer's and Kafka's default 1 MB record limit and be
lost. The original's size and sha256 then travel in

    nextclick.dlq.key_bytes, nextclick.dlq.key_sha256        (a cut key)
    nextclick.dlq.value_bytes, nextclick.dlq.value_sha256    (a cut value)
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

from stream_app.inference.events import InvalidMessage

HEADER_PREFIX = "nextclick.dlq."
KEPT_BYTES = 256 * 1024  # of a key and of a value: a dead letter stays far below 1 MB


@dataclass(frozen=True, slots=True)
class DeadLetter:
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]


def dead_letter_headers(error: InvalidMessage, *, topic: str, partition: int, offset: int) -> dict[str, bytes]:
    fields = {
        "reason": str(error.reason),
        "message": error.message,
        "topic": topic,
        "partition": str(partition),
        "offset": str(offset),
        "failed_at": f"{time.time():.3f}",
    }
    return {HEADER_PREFIX + name: value.encode("utf-8") for name, value in fields.items()}


def dead_letter(
    key: bytes | None, value: bytes | None, error: InvalidMessage, *, topic: str, partition: int, offset: int,
    max_bytes: int = KEPT_BYTES,
) -> DeadLetter:
    """The record that carries a refused message to the dead-letter topic (module docstring)."""
    headers = dead_letter_headers(error, topic=topic, partition=partition, offset=offset)
    kept = []
    for name, data in (("key", key), ("value", value)):
        if data is not None and len(data) > max_bytes:
            headers[f"{HEADER_PREFIX}{name}_bytes"] = str(len(data)).encode()
            headers[f"{HEADER_PREFIX}{name}_sha256"] = hashlib.sha256(data).hexdigest().encode()
            data = data[:max_bytes]
        kept.append(data)
    return DeadLetter(kept[0], kept[1], headers)
