"""Catalogue records: the hand check gives `catalogue.schema.json`'s verdicts, with the clicks' reason codes."""

from __future__ import annotations

import json

import jsonschema
import pytest

from stream_app.inference.catalogue_records import InvalidItemRecord, ItemRecord, catalogue_schema, parse_item_record
from stream_app.inference.events import Reason

LIMIT = 512


def parsed(value: bytes | None, key: bytes | None = b"214829878") -> tuple[str, ItemRecord | None]:
    return parse_item_record(key, value, max_bytes=LIMIT)


def refusal(value: bytes | None, key: bytes | None = b"214829878") -> Reason:
    with pytest.raises(InvalidItemRecord) as caught:
        parsed(value, key)
    assert caught.value.message
    return caught.value.reason


def test_a_record_keeps_its_four_fields_and_allows_extra_attributes() -> None:
    value = json.dumps({"available": False, "blocked": True, "category": "1096", "new": True, "price": 9.5}).encode()
    assert parsed(value) == ("214829878", ItemRecord(False, True, "1096", True))
    assert parsed(b'{"available": true}') == ("214829878", ItemRecord(True))


def test_a_tombstone_removes_the_item() -> None:
    assert parsed(None) == ("214829878", None)


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        (b"1", b"", Reason.EMPTY),  # zero bytes are not a tombstone: only a null value is
        (b"1", json.dumps({"available": True, "note": "x" * LIMIT}).encode(), Reason.OVERSIZE),
        (b"1", b'{"available": "\xff"}', Reason.BAD_ENCODING),
        (b"\xff", b'{"available": true}', Reason.BAD_ENCODING),
        (b"1", b'{"available": tru', Reason.BAD_JSON),
        (b"1", b"[true]", Reason.NOT_OBJECT),
        (b"1", b'{"category": "1096"}', Reason.MISSING_FIELD),
        (b"1", b'{"available": "false"}', Reason.WRONG_TYPE),
        (b"1", b'{"available": 0}', Reason.WRONG_TYPE),
        (b"1", b'{"available": true, "category": 1096}', Reason.WRONG_TYPE),
        (b"1", b'{"available": true, "blocked": null}', Reason.WRONG_TYPE),
        (b"1", b'{"available": true, "category": ""}', Reason.BAD_VALUE),
        (None, b'{"available": true}', Reason.BAD_VALUE),
        (b"", b'{"available": true}', Reason.BAD_VALUE),
        (b"k" * 257, b'{"available": true}', Reason.BAD_VALUE),
    ],
)
def test_each_malformed_record_has_its_reason(key: bytes | None, value: bytes | None, reason: Reason) -> None:
    assert refusal(value, key) == reason


def test_the_schema_is_valid_and_requires_availability() -> None:
    jsonschema.Draft202012Validator.check_schema(catalogue_schema())
    assert catalogue_schema()["required"] == ["available"]


def _schema_reason(document: dict) -> Reason | None:
    errors = list(jsonschema.Draft202012Validator(catalogue_schema()).iter_errors(document))
    reasons = [Reason.MISSING_FIELD if e.validator == "required" else Reason.WRONG_TYPE if e.validator == "type"
               else Reason.BAD_VALUE for e in errors]
    return min(reasons, key=list(Reason).index) if reasons else None


@pytest.mark.parametrize(
    "document",
    [
        {"available": True}, {"available": False, "blocked": False}, {}, {"blocked": True}, {"available": None},
        {"available": 1}, {"available": True, "category": "c" * 256}, {"available": True, "category": "c" * 257},
        {"available": True, "category": ""}, {"available": True, "category": ["a"]}, {"available": True, "new": "yes"},
        {"available": "true", "category": ""}, {"category": 5}, {"available": True, "extra": {"nested": [1]}},
    ],
)
def test_the_hand_check_gives_the_schemas_verdict(document: dict) -> None:
    expected = _schema_reason(document)
    value = json.dumps(document).encode()
    if expected is None:
        parse_item_record(b"1", value, max_bytes=1 << 20)
    else:
        with pytest.raises(InvalidItemRecord) as caught:
            parse_item_record(b"1", value, max_bytes=1 << 20)
        assert caught.value.reason == expected
