"""Parse and validate click messages, so that one bad producer costs a dead letter, not the worker.

A click is the UTF-8 JSON object documented by `click.schema.json`. Every way it can be wrong
maps to one short reason code (`Reason`), used as the dead-letter header and the metric label.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cache
from importlib import resources
from typing import Any

from jsonschema import Draft202012Validator, ValidationError

from stream_app.partitioning import partition_for_key

REQUIRED_FIELDS = ("session_id", "item_id", "timestamp")
_MESSAGE_CHARS = 200


class Reason(StrEnum):
    """Why a click message was refused."""

    EMPTY = "empty"  # no value at all (tombstone or zero bytes)
    OVERSIZE = "oversize"  # more bytes than `max_payload_bytes`
    BAD_ENCODING = "bad_encoding"  # not UTF-8
    BAD_JSON = "bad_json"  # not parseable JSON
    NOT_OBJECT = "not_object"  # JSON, but not an object
    MISSING_FIELD = "missing_field"  # a required field is absent
    WRONG_TYPE = "wrong_type"  # a field has the wrong JSON type
    BAD_VALUE = "bad_value"  # right type, refused value (empty or too long id)
    BAD_TIMESTAMP = "bad_timestamp"  # negative, NaN or infinite
    KEY_MISMATCH = "key_mismatch"  # the Kafka key is not the session id
    WRONG_PARTITION = "wrong_partition"  # not on the session's partition (producer's partitioner)
    PROCESSING_ERROR = "processing_error"  # valid, but the worker failed on it (see errors_total)


_SEVERITY = list(Reason)  # when several things are wrong, report the one listed first


class InvalidClick(ValueError):
    """A click message that cannot be served, with its machine-readable reason."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


@dataclass(frozen=True, slots=True)
class Click:
    session_id: str
    item_id: str
    timestamp: float
    extra: dict[str, Any] = field(default_factory=dict)


@cache
def click_schema() -> dict[str, Any]:
    return json.loads(resources.files("stream_app").joinpath("click.schema.json").read_text())


@cache
def _validator() -> Draft202012Validator:
    return Draft202012Validator(click_schema())


def _reason_for(error: ValidationError) -> Reason:
    if error.validator == "required":
        return Reason.MISSING_FIELD
    if error.validator == "type":
        return Reason.WRONG_TYPE
    if list(error.absolute_path)[:1] == ["timestamp"]:
        return Reason.BAD_TIMESTAMP
    return Reason.BAD_VALUE


def _as_id(value: str | int | float) -> str:
    # JSON Schema counts 3.0 as an integer; read it as "3" like 3.
    return value if isinstance(value, str) else str(int(value))


def parse_click(value: bytes | None, *, key: bytes | None, max_bytes: int) -> Click:
    """Validate one message of the clicks topic; raise `InvalidClick` when it is unusable."""
    if not value:
        raise InvalidClick(Reason.EMPTY, "message has no value")
    if len(value) > max_bytes:
        raise InvalidClick(Reason.OVERSIZE, f"{len(value)} bytes > limit {max_bytes}")
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidClick(Reason.BAD_ENCODING, str(exc)[:_MESSAGE_CHARS]) from None
    try:
        document = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise InvalidClick(Reason.BAD_JSON, str(exc)[:_MESSAGE_CHARS]) from None
    if not isinstance(document, dict):
        raise InvalidClick(Reason.NOT_OBJECT, f"expected a JSON object, got {type(document).__name__}")

    errors = list(_validator().iter_errors(document))
    if errors:
        first = min(errors, key=lambda error: _SEVERITY.index(_reason_for(error)))
        where = ".".join(map(str, first.absolute_path)) or "click"
        raise InvalidClick(_reason_for(first), f"{where}: {first.message}"[:_MESSAGE_CHARS])

    try:
        timestamp = float(document["timestamp"])
    except OverflowError:
        timestamp = math.inf
    if not math.isfinite(timestamp):
        raise InvalidClick(Reason.BAD_TIMESTAMP, f"timestamp must be finite, got {timestamp}")

    session_id = _as_id(document["session_id"])
    if key is None or key != session_id.encode("utf-8"):
        raise InvalidClick(
            Reason.KEY_MISMATCH, f"message key {key!r:.60} is not the session id {session_id!r:.60}"
        )
    extra = {name: item for name, item in document.items() if name not in REQUIRED_FIELDS}
    return Click(session_id, _as_id(document["item_id"]), timestamp, extra)


def check_partition(click: Click, partition: int, partitions: int) -> None:
    """Refuse a click that is not on its session's partition, where its state is kept."""
    expected = partition_for_key(click.session_id.encode("utf-8"), partitions)
    if partition != expected:
        raise InvalidClick(
            Reason.WRONG_PARTITION,
            f"session {click.session_id!r:.60} belongs on partition {expected}, read from {partition}"
            " (use Kafka's default murmur2 partitioner)",
        )
