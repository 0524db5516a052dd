"""The worker's TLS settings work end to end: clients and a faust worker through a TLS proxy.

Tansu has no TLS of its own, so a second broker advertises the port of a TLS-terminating proxy
(`tests/tls_proxy.py`) and every client connection, bootstrap and metadata-driven alike, is TLS.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError
from tls_proxy import TlsProxy, make_self_signed_cert

from devtools.embedded_broker import EmbeddedBroker, free_port
from stream_app.kafka_security import aiokafka_client_kwargs
from stream_app.settings import Settings

pytestmark = pytest.mark.broker


@pytest.fixture(scope="module")
def tls_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """(bootstrap servers speaking TLS only, the CA file that verifies them)."""
    tmp = tmp_path_factory.mktemp("tls")
    cert, key = make_self_signed_cert(tmp)
    proxy_port = free_port()
    with EmbeddedBroker(advertised_port=proxy_port) as broker, TlsProxy(proxy_port, broker.port, cert, key):
        yield broker.bootstrap_servers, cert


def tls_settings(bootstrap_servers: str, cafile: Path | None, **fields: Any) -> Settings:
    return Settings(bootstrap_servers=bootstrap_servers, security_protocol="SSL", ssl_cafile=cafile, **fields)


def test_a_client_built_from_the_settings_produces_and_consumes_over_tls(
    tls_endpoint: tuple[str, Path], kafka_client: type[Any]
) -> None:
    bootstrap, cafile = tls_endpoint
    client = kafka_client(tls_settings(bootstrap, cafile))
    messages = [(f"s{i}".encode(), f"value {i}".encode()) for i in range(5)]
    client.produce("tls-roundtrip", messages)
    received = client.consume("tls-roundtrip", len(messages))
    assert sorted((r.key, r.value) for r in received) == sorted(messages)


def test_a_client_without_the_ca_is_refused(tls_endpoint: tuple[str, Path]) -> None:
    bootstrap, _ = tls_endpoint

    async def connect() -> None:
        producer = AIOKafkaProducer(
            **aiokafka_client_kwargs(tls_settings(bootstrap, None)), request_timeout_ms=5000
        )
        try:
            await producer.start()
        finally:
            await producer.stop()

    with pytest.raises(KafkaConnectionError):
        asyncio.run(connect())


def test_a_worker_configured_for_tls_serves_through_the_proxy(
    tls_endpoint: tuple[str, Path],
    launch_worker: Callable[..., Any],
    worker_fields: Callable[..., dict[str, Any]],
    tmp_path: Path,
) -> None:
    bootstrap, cafile = tls_endpoint
    fields = worker_fields(bootstrap, tmp_path, security_protocol="SSL", ssl_cafile=cafile)
    with launch_worker(fields, tmp_path / "worker.log") as worker:
        worker.produce(worker.settings.clicks_topic, [(b"s1", b"not json")])
        [record] = worker.consume(worker.settings.dead_letter_topic, 1)
        assert record.value == b"not json"
        assert dict(record.headers)["nextclick.dlq.reason"] == b"bad_json"
        assert json.loads(worker.get("/readyz")[1])["checks"]["partitions_assigned"]
