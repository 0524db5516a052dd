"""Parse and validate click messages, so that one bad producer costs a dead letter, not the worker.

A click is the UTF-8 JSON object documented by `click.schema.json`. Every way it can be wrong
maps to one short reason code (`Reason`), used as the dead-letter header and the metric label; catalogue
records (`stream_app.inference.catalogue_records`) are refused with the same codes.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cache
from importlib import resources
from typing import Any

from stream_app.inference.partitioning import partition_for_key

REQUIRED_FIELDS = ("session_id", "item_id", "timestamp")
RULES_FIELD = "rules"  # optional: what this click's suggestion may hold (`ClickRules`)
_MESSAGE_CHARS = 200


class Reason(StrEnum):
    """Why a click message (or a catalogue record) was refused."""

    EMPTY = "empty"  # no value at all (tombstone or zero bytes)
    OVERSIZE = "oversize"  # more bytes than `max_payload_bytes`
    BAD_ENCODING = "bad_encoding"  # not UTF-8
    BAD_JSON = "bad_json"  # not parseable JSON
    NOT_OBJECT = "not_object"  # JSON, but not an object
    MISSING_FIELD = "missing_field"  # a required field is absent
    WRONG_TYPE = "wrong_type"  # a field has the wrong JSON type
    BAD_VALUE = "bad_value"  # right type, refused value: an empty, too long or not UTF-8-safe id; malformed rules
    BAD_TIMESTAMP = "bad_timestamp"  # negative, NaN or infinite
    KEY_MISMATCH = "key_mismatch"  # the Kafka key is not the session id
    WRONG_PARTITION = "wrong_partition"  # not on the session's partition (producer's partitioner)
    PROCESSING_ERROR = "processing_error"  # valid, but the worker failed on it (see errors_total)


class InvalidMessage(ValueError):
    """A message that cannot be used, with its machine-readable reason (the dead letter's)."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


class InvalidClick(InvalidMessage):
    """A click message that cannot be served."""


@dataclass(frozen=True, slots=True)
class ClickRules:
    """A click's own rules (its optional `rules` field): its suggestion holds only items of `categories` (when
    given; the catalogue's `category`) and none of `exclude_items` (external ids)."""

    categories: frozenset[str] | None = None
    exclude_items: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Click:
    session_id: str
    item_id: str
    timestamp: float
    extra: dict[str, Any] = field(default_factory=dict)
    rules: ClickRules | None = None  # the click's own `rules` field, when it has one


@cache
def click_schema() -> dict[str, Any]:
    return json.loads(resources.files("stream_app").joinpath("click.schema.json").read_text())


MAX_ID_CHARS: int = click_schema()["properties"]["session_id"]["maxLength"]


def _is_id(value: Any) -> bool:
    # JSON Schema's "integer" counts 3.0 too; a JSON boolean is neither a string nor an integer.
    if isinstance(value, float):
        return value.is_integer()
    return isinstance(value, str | int) and not isinstance(value, bool)


def _as_id(value: str | float) -> str:
    # JSON Schema counts 3.0 as an integer; read it as "3" like 3.
    return value if isinstance(value, str) else str(int(value))


def _check_id(name: str, value: str) -> None:
    """The schema's 1..256 characters, for an integer id's decimal string too, and text UTF-8 can carry
    (a lone surrogate, legal in a JSON escape, would be echoed into suggestions strict parsers refuse)."""
    if not 1 <= len(value) <= MAX_ID_CHARS:
        raise InvalidClick(Reason.BAD_VALUE, f"{name}: {len(value)} characters, expected 1 to {MAX_ID_CHARS}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidClick(Reason.BAD_VALUE, f"{name}: {exc}"[:_MESSAGE_CHARS]) from None


def _checked_fields(document: dict[str, Any]) -> tuple[str, str, float, ClickRules | None]:
    """`click.schema.json` checked by hand (jsonschema's validator costs more than the rest of a
    click's path; tests/stream_app/inference/test_events.py holds the two to the same verdicts), the most basic
    problem first (`Reason`'s order)."""
    missing = [name for name in REQUIRED_FIELDS if name not in document]
    if missing:
        raise InvalidClick(Reason.MISSING_FIELD, f"click: {missing[0]!r} is a required property")
    session_id, item_id, timestamp = (document[name] for name in REQUIRED_FIELDS)
    for name, value in (("session_id", session_id), ("item_id", item_id)):
        if not _is_id(value):
            raise InvalidClick(Reason.WRONG_TYPE, f"{name}: {value!r:.60} is not a string or an integer")
    if not isinstance(timestamp, int | float) or isinstance(timestamp, bool):
        raise InvalidClick(Reason.WRONG_TYPE, f"timestamp: {timestamp!r:.60} is not a number")
    session_id, item_id = _as_id(session_id), _as_id(item_id)
    _check_id("session_id", session_id)
    _check_id("item_id", item_id)
    rules = _parse_rules(document[RULES_FIELD]) if RULES_FIELD in document else None
    try:
        seconds = float(timestamp)
    except OverflowError:
        seconds = math.inf
    if not (math.isfinite(seconds) and seconds >= 0):
        raise InvalidClick(Reason.BAD_TIMESTAMP, f"timestamp must be finite and not negative, got {timestamp!r:.60}")
    return session_id, item_id, seconds, rules


def _parse_rules(rules: Any) -> ClickRules:
    """`rules` as `click.schema.json` describes it; anything else is a `bad_value`, whatever its JSON type."""
    schema = click_schema()["properties"][RULES_FIELD]
    if not isinstance(rules, dict) or not rules.keys() <= schema["properties"].keys():
        raise InvalidClick(Reason.BAD_VALUE, f"rules: {rules!r:.60} is not an object of "
                           f"{', '.join(schema['properties'])}")
    checked = {}
    for name, value in rules.items():
        limits = schema["properties"][name]
        if not isinstance(value, list) or not limits["minItems"] <= len(value) <= limits["maxItems"]:
            raise InvalidClick(Reason.BAD_VALUE, f"rules.{name}: expected a list of {limits['minItems']} to "
                               f"{limits['maxItems']} entries, got {value!r:.60}")
        strings_only = limits["items"]["type"] == "string"
        for entry in value:
            if not (isinstance(entry, str) if strings_only else _is_id(entry)):
                raise InvalidClick(Reason.BAD_VALUE, f"rules.{name}: {entry!r:.60} is not a "
                                   f"{'string' if strings_only else 'string or an integer'}")
        checked[name] = frozenset(_as_id(entry) for entry in value)
        for entry in checked[name]:
            _check_id(f"rules.{name}", entry)
    return ClickRules(**checked)


def json_object(value: bytes | None, max_bytes: int, refused: type[InvalidMessage]) -> dict[str, Any]:
    """The JSON object a message's value holds; raises `refused` (an `InvalidMessage`) when it holds none."""
    if not value:
        raise refused(Reason.EMPTY, "message has no value")
    if len(value) > max_bytes:
        raise refused(Reason.OVERSIZE, f"{len(value)} bytes > limit {max_bytes}")
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise refused(Reason.BAD_ENCODING, str(exc)[:_MESSAGE_CHARS]) from None
    try:
        document = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise refused(Reason.BAD_JSON, str(exc)[:_MESSAGE_CHARS]) from None
    except ValueError as exc:  # an integer of more digits than Python converts (sys.int_info)
        raise refused(Reason.BAD_VALUE, str(exc)[:_MESSAGE_CHARS]) from None
    if not isinstance(document, dict):
        raise refused(Reason.NOT_OBJECT, f"expected a JSON object, got {type(document).__name__}")
    return document


def parse_click(value: bytes | None, *, key: bytes | None, max_bytes: int) -> Click:
    """Validate one message of the clicks topic; raise `InvalidClick` when it is unusable."""
    document = json_object(value, max_bytes, InvalidClick)
    session_id, item_id, timestamp, rules = _checked_fields(document)
    if key is None or key != session_id.encode("utf-8"):
        raise InvalidClick(
            Reason.KEY_MISMATCH, f"message key {key!r:.60} is not the session id {session_id!r:.60}"
        )
    extra = {name: item for name, item in document.items() if name not in REQUIRED_FIELDS and name != RULES_FIELD}
    return Click(session_id, item_id, timestamp, extra, rules)


def check_partition(click: Click, partition: int, partitions: int) -> None:
    """Refuse a click that is not on its session's partition, where its state is kept."""
    expected = partition_for_key(click.session_id.encode("utf-8"), partitions)
    if partition != expected:
        raise InvalidClick(
            Reason.WRONG_PARTITION,
            f"session {click.session_id!r:.60} belongs on partition {expected}, read from {partition}"
            " (use Kafka's default murmur2 partitioner)",
        )
