"""The embedded broker starts, answers the Kafka protocol, and stops without leftovers."""

from __future__ import annotations

import socket

import pytest

from devtools.embedded_broker import TANSU_WORKER_TUNING, EmbeddedBroker
from stream_app.settings import Settings

pytestmark = pytest.mark.broker


def test_the_broker_serves_until_stopped(kafka_client: type) -> None:
    with EmbeddedBroker() as broker:
        client = kafka_client(Settings(bootstrap_servers=broker.bootstrap_servers))
        client.produce("ping", [(b"k", b"v")])
        assert [(r.key, r.value) for r in client.consume("ping", 1)] == [(b"k", b"v")]
    with pytest.raises(OSError):
        socket.create_connection((broker.host, broker.port), timeout=1).close()
    broker.stop()  # idempotent


def test_worker_env_points_at_the_broker_with_the_tansu_tuning(monkeypatch: pytest.MonkeyPatch) -> None:
    broker = EmbeddedBroker(port=19092, advertised_port=29092)
    for name, value in broker.worker_env().items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert settings.bootstrap_servers == "127.0.0.1:29092"
    assert {name: getattr(settings, name) for name in TANSU_WORKER_TUNING} == TANSU_WORKER_TUNING
