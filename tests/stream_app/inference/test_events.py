"""Click parsing, its JSON Schema, dead-letter headers and the worker's connection settings."""

from __future__ import annotations

import json

import jsonschema
import pytest

from stream_app.inference.events import (
    Click,
    ClickRules,
    InvalidClick,
    Reason,
    check_partition,
    click_schema,
    parse_click,
)
from stream_app.inference.partitioning import partition_for_key
from stream_app.kafka_security import aiokafka_client_kwargs, faust_credentials, ssl_context
from stream_app.settings import Settings
from stream_app.worker.dead_letters import HEADER_PREFIX, dead_letter_headers

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


def test_a_clicks_rules_are_parsed_and_a_click_without_them_has_none() -> None:
    click = parse_click(click_bytes(rules={"categories": ["1096"], "exclude_items": [214829887, "x"]}), key=b"s1",
                        max_bytes=LIMIT)
    assert click.rules == ClickRules(frozenset({"1096"}), frozenset({"214829887", "x"})) and click.extra == {}
    assert parse_click(click_bytes(), key=b"s1", max_bytes=LIMIT).rules is None


@pytest.mark.parametrize(
    "rules",
    [[], "1096", {"category": ["1096"]}, {"categories": []}, {"categories": "1096"}, {"categories": [1096]},
     {"categories": [""]}, {"exclude_items": [True]}, {"exclude_items": [[1]]}, {"exclude_items": ["x" * 257]},
     {"exclude_items": ["1"] * 1001}, {"exclude_items": ["a\ud800"]}],  # json.dumps writes a lone surrogate escape
)
def test_malformed_rules_are_bad_values(rules: object) -> None:
    with pytest.raises(InvalidClick) as caught:
        parse_click(click_bytes(rules=rules), key=b"s1", max_bytes=1 << 20)
    assert caught.value.reason == Reason.BAD_VALUE


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


def _schema_reason(document: dict) -> Reason | None:
    """What `click.schema.json` itself refuses a document for (None: valid), the most basic problem first."""
    errors = list(jsonschema.Draft202012Validator(click_schema()).iter_errors(document))
    reasons = [
        Reason.BAD_VALUE if list(e.absolute_path)[:1] == ["rules"]  # malformed rules are bad values, whatever JSON type
        else Reason.MISSING_FIELD if e.validator == "required"
        else Reason.WRONG_TYPE if e.validator == "type"
        else Reason.BAD_TIMESTAMP if list(e.absolute_path)[:1] == ["timestamp"]
        else Reason.BAD_VALUE
        for e in errors
    ]
    return min(reasons, key=list(Reason).index) if reasons else None


@pytest.mark.parametrize(
    "fields",
    [
        {}, {"session_id": None}, {"item_id": 3.0}, {"item_id": 3.5}, {"item_id": False}, {"item_id": ""},
        {"item_id": "x" * 256}, {"item_id": "x" * 257}, {"session_id": ["s1"]}, {"timestamp": 0},
        {"timestamp": -0.5}, {"timestamp": True}, {"timestamp": "1"}, {"timestamp": 10**400},
        {"item_id": {}, "timestamp": -1}, {"session_id": "", "timestamp": -1}, {"item_id": "é" * 256},
        {"rules": {}}, {"rules": {"categories": ["a"], "exclude_items": []}}, {"rules": {"categories": ["a"] * 101}},
        {"rules": None}, {"rules": {"exclude_items": [1.0, "2"]}}, {"rules": {"exclude_items": [1.5]}},
        {"rules": {"categories": [""]}, "timestamp": -1}, {"rules": {"other": 1}}, {"item_id": [], "rules": []},
    ],
)
def test_the_hand_check_gives_the_schemas_verdict(fields: dict) -> None:
    document = {"session_id": "s1", "item_id": "214536502", "timestamp": 1396321357.5} | fields
    expected = _schema_reason(document)
    if expected is None and isinstance(document["timestamp"], int) and document["timestamp"] > 1e308:
        expected = Reason.BAD_TIMESTAMP  # valid JSON Schema, but no finite time
    value = json.dumps(document).encode()
    if expected is None:
        parse_click(value, key=str(document["session_id"]).encode(), max_bytes=1 << 20)
    else:
        with pytest.raises(InvalidClick) as caught:
            parse_click(value, key=b"s1", max_bytes=1 << 20)
        assert caught.value.reason == expected


@pytest.mark.parametrize(
    "value",
    [
        b'{"session_id": "s1", "item_id": 1' + b"0" * 4400 + b', "timestamp": 1}',  # more digits than Python reads
        click_bytes(item_id=10**300),  # an integer's decimal string is held to the 256 characters too
        click_bytes(session_id=10**400),  # more than a float can hold
        click_bytes(item_id=1e300),
        b'{"session_id": "s1", "item_id": "a\\ud800", "timestamp": 1}',  # a lone surrogate UTF-8 cannot carry
        b'{"session_id": "\\udc00", "item_id": "1", "timestamp": 1}',
    ],
)
def test_ids_no_suggestion_could_echo_are_bad_values(value: bytes) -> None:
    with pytest.raises(InvalidClick) as caught:
        parse_click(value, key=b"s1", max_bytes=1 << 20)
    assert caught.value.reason == Reason.BAD_VALUE


def test_a_refused_message_too_big_for_the_broker_is_dead_lettered_as_a_prefix_with_its_size_and_hash() -> None:
    import hashlib

    from stream_app.worker.dead_letters import dead_letter

    key, value = b"k" * 3000, b"v" * (2 << 20)
    letter = dead_letter(key, value, InvalidClick(Reason.OVERSIZE, "big"), topic="clicks", partition=0, offset=1,
                         max_bytes=1024)
    assert (letter.key, letter.value) == (key[:1024], value[:1024])
    fields = {name.removeprefix(HEADER_PREFIX): v.decode() for name, v in letter.headers.items()}
    assert (fields["key_bytes"], fields["value_bytes"]) == ("3000", str(2 << 20))
    assert fields["value_sha256"] == hashlib.sha256(value).hexdigest()
    small = dead_letter(b"s1", b"{}", InvalidClick(Reason.BAD_JSON, "x"), topic="c", partition=0, offset=2,
                        max_bytes=1024)
    assert (small.key, small.value) == (b"s1", b"{}") and "value_bytes" not in str(small.headers)


def test_only_plausible_click_times_are_observed_as_latency() -> None:
    from stream_app.worker.metrics import latency_observable

    now = 1_800_000_000.0
    assert latency_observable(now, now - 0.2) and latency_observable(now, now + 1)
    assert not any(latency_observable(now, stamp) for stamp in (0.0, 1e308, now - 86_400, now + 3_600))
