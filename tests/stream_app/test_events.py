"""Click parsing, its JSON Schema, dead-letter headers and the worker's connection settings."""

from __future__ import annotations

import json

import jsonschema
import pytest

from stream_app.dead_letters import HEADER_PREFIX, dead_letter_headers
from stream_app.events import Click, InvalidClick, Reason, check_partition, click_schema, parse_click
from stream_app.kafka_security import aiokafka_client_kwargs, faust_credentials, ssl_context
from stream_app.partitioning import partition_for_key
from stream_app.settings import Settings

LIMIT = 256


def click_bytes(**fields: object) -> bytes:
    return json.dumps(
        {"session_id": "s1", "item_id": "214536502", "timestamp": 1396321357.5} | fields
    ).encode()


def refusal(value: bytes | None, key: bytes | None = b"s1") -> Reason:
    with pytest.raises(InvalidClick) as caught:
        parse_click(value, key=key, max_bytes=LIMIT)
    assert caught.value.message
    return caught.value.reason


def test_a_valid_click_is_parsed_with_its_extra_fields() -> None:
    click = parse_click(click_bytes(referrer="search"), key=b"s1", max_bytes=LIMIT)
    assert click == Click("s1", "214536502", 1396321357.5, {"referrer": "search"})


def test_integer_ids_are_read_as_decimal_strings() -> None:
    click = parse_click(click_bytes(session_id=7, item_id=214536502.0), key=b"7", max_bytes=LIMIT)
    assert (click.session_id, click.item_id) == ("7", "214536502")


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, Reason.EMPTY),
        (b"", Reason.EMPTY),
        (click_bytes(pad="x" * LIMIT), Reason.OVERSIZE),
        (b'{"session_id": "s1", "item_id": "\xff"}', Reason.BAD_ENCODING),
        (b'{"session_id": "s1",', Reason.BAD_JSON),
        (b"[[1, 2], {}]", Reason.NOT_OBJECT),
        (b'"s1"', Reason.NOT_OBJECT),
        (b'{"session_id": "s1", "timestamp": 1}', Reason.MISSING_FIELD),
        (click_bytes(item_id=None), Reason.WRONG_TYPE),
        (click_bytes(item_id=True), Reason.WRONG_TYPE),
        (click_bytes(timestamp="2014-04-01T00:00:00Z"), Reason.WRONG_TYPE),
        (click_bytes(item_id=""), Reason.BAD_VALUE),
        (click_bytes(timestamp=-1), Reason.BAD_TIMESTAMP),
        (click_bytes(timestamp=float("nan")), Reason.BAD_TIMESTAMP),
        (click_bytes(timestamp=float("inf")), Reason.BAD_TIMESTAMP),
        (b'{"session_id": "s1", "item_id": "1", "timestamp": 1e999}', Reason.BAD_TIMESTAMP),
    ],
)
def test_each_malformed_click_has_its_reason(value: bytes | None, reason: Reason) -> None:
    assert refusal(value) == reason


def test_the_most_basic_problem_is_reported_first() -> None:
    assert refusal(b'{"item_id": [], "timestamp": -5}') == Reason.MISSING_FIELD


@pytest.mark.parametrize("key", [None, b"s2", b'"s1"'])
def test_the_message_key_must_be_the_session_id(key: bytes | None) -> None:
    assert refusal(click_bytes(), key=key) == Reason.KEY_MISMATCH


def test_the_schema_is_valid_and_documents_the_required_fields() -> None:
    schema = click_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert set(schema["required"]) == {"session_id", "item_id", "timestamp"}


def test_a_click_must_be_on_its_sessions_partition() -> None:
    click = parse_click(click_bytes(), key=b"s1", max_bytes=LIMIT)
    home = partition_for_key(b"s1", 4)
    check_partition(click, home, 4)
    with pytest.raises(InvalidClick) as caught:
        check_partition(click, (home + 1) % 4, 4)
    assert caught.value.reason == Reason.WRONG_PARTITION


def test_partitioning_matches_kafkas_default_partitioner() -> None:
    # Values of the Java client's Utils.toPositive(Utils.murmur2(key)) % partitions.
    from aiokafka.partitioner import DefaultPartitioner

    for key in (b"s1", b"11255548", b"session-\xc3\xa9"):
        assert partition_for_key(key, 7) == DefaultPartitioner()(key, list(range(7)), list(range(7)))


def test_dead_letter_headers_carry_reason_and_source() -> None:
    headers = dead_letter_headers(
        InvalidClick(Reason.BAD_JSON, "Expecting value"), topic="clicks", partition=3, offset=42
    )
    fields = {name.removeprefix(HEADER_PREFIX): value.decode() for name, value in headers.items()}
    assert fields["reason"] == "bad_json"
    assert (fields["topic"], fields["partition"], fields["offset"]) == ("clicks", "3", "42")
    assert float(fields["failed_at"]) > 0


def test_settings_come_from_nextclick_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEXTCLICK_BOOTSTRAP_SERVERS", "kafka-0:9093,kafka-1:9093")
    monkeypatch.setenv("NEXTCLICK_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("NEXTCLICK_SASL_USERNAME", "nextclick")
    monkeypatch.setenv("NEXTCLICK_TOP_K", "10")
    settings = Settings()
    assert settings.top_k == 10 and settings.session_ttl == 1800.0
    kwargs = aiokafka_client_kwargs(settings)
    assert kwargs["bootstrap_servers"] == "kafka-0:9093,kafka-1:9093"
    assert kwargs["security_protocol"] == "SASL_PLAINTEXT" and kwargs["sasl_plain_username"] == "nextclick"
    assert faust_credentials(settings).protocol.value == "SASL_PLAINTEXT"


def test_plaintext_needs_no_tls_and_refuses_unknown_protocols(monkeypatch: pytest.MonkeyPatch) -> None:
    assert ssl_context(Settings()) is None and faust_credentials(Settings()) is None
    monkeypatch.setenv("NEXTCLICK_SECURITY_PROTOCOL", "TLS")
    with pytest.raises(ValueError):
        Settings()
