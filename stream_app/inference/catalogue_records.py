"""Parse and validate catalogue records, so that one bad record costs a dead letter, not the worker's catalogue.

A record is keyed by the item id and holds the JSON object `catalogue.schema.json` documents; a null value (a
tombstone) removes the item. It is refused with the clicks' reason codes (`stream_app.inference.events.Reason`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from stream_app.inference.events import MAX_ID_CHARS, InvalidMessage, Reason, json_object


class InvalidItemRecord(InvalidMessage):
    """A catalogue record the worker cannot apply."""


@dataclass(frozen=True, slots=True)
class ItemRecord:
    """What the worker keeps of one item's record: whether it may be shown, and what rules select it by."""

    available: bool
    blocked: bool = False
    category: str | None = None
    new: bool = False


@cache
def catalogue_schema() -> dict[str, Any]:
    return json.loads(resources.files("stream_app").joinpath("catalogue.schema.json").read_text())


def _item_id(key: bytes | None) -> str:
    """The record's key as an item id: UTF-8, of the clicks' id length (`click.schema.json`)."""
    if key is None:
        raise InvalidItemRecord(Reason.BAD_VALUE, "the record has no key: it must be the item id")
    try:
        item_id = key.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidItemRecord(Reason.BAD_ENCODING, f"key: {exc}"[:200]) from None
    if not 1 <= len(item_id) <= MAX_ID_CHARS:
        raise InvalidItemRecord(Reason.BAD_VALUE, f"key: {len(item_id)} characters, expected 1 to {MAX_ID_CHARS}")
    return item_id


def parse_item_record(key: bytes | None, value: bytes | None, *, max_bytes: int) -> tuple[str, ItemRecord | None]:
    """The item id and its record (None: a tombstone, the item is removed); raises `InvalidItemRecord`.

    `catalogue.schema.json` checked by hand, as clicks are (`stream_app.inference.events`), the most basic problem
    first; tests/stream_app/inference/test_catalogue_records.py holds the two to the same verdicts."""
    item_id = _item_id(key)
    if value is None:
        return item_id, None
    document = json_object(value, max_bytes, InvalidItemRecord)
    if "available" not in document:
        raise InvalidItemRecord(Reason.MISSING_FIELD, "record: 'available' is a required property")
    fields = catalogue_schema()["properties"]
    for name in fields.keys() & document.keys():
        expected = bool if fields[name]["type"] == "boolean" else str
        if not isinstance(document[name], expected):
            wrong = f"{name}: {document[name]!r:.60} is not a {fields[name]['type']}"
            raise InvalidItemRecord(Reason.WRONG_TYPE, wrong)
    category = document.get("category")
    limits = fields["category"]
    if category is not None and not limits["minLength"] <= len(category) <= limits["maxLength"]:
        raise InvalidItemRecord(Reason.BAD_VALUE, f"category: {len(category)} characters, expected "
                                f"{limits['minLength']} to {limits['maxLength']}")
    return item_id, ItemRecord(document["available"], document.get("blocked", False), category,
                               document.get("new", False))
