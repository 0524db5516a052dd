"""The embedded broker starts, answers the Kafka protocol, and stops without leftovers; on durable storage a
restart keeps topics, records and committed offsets."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from devtools.embedded_broker import TANSU_WORKER_TUNING, EmbeddedBroker
from devtools.s3_store import S3Store
from stream_app.kafka_security import aiokafka_client_kwargs
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


def commit(settings: Settings, group: str, topic: str, offset: int) -> None:
    async def run() -> None:
        consumer = AIOKafkaConsumer(group_id=group, enable_auto_commit=False, **aiokafka_client_kwargs(settings))
        await consumer.start()
        consumer.assign([TopicPartition(topic, 0)])  # commits as a consumer outside any group generation
        try:
            await consumer.commit({TopicPartition(topic, 0): offset})
        finally:
            await consumer.stop()

    asyncio.run(run())


@pytest.mark.durable
def test_a_durable_broker_keeps_topics_records_and_offsets_across_a_kill(kafka_client: type, tmp_path: Path) -> None:
    with S3Store(tmp_path / "s3") as storage, EmbeddedBroker(storage=storage) as broker:
        client = kafka_client(Settings(bootstrap_servers=broker.bootstrap_servers))
        sent = [(f"k{n}".encode(), f"v{n}".encode()) for n in range(20)]
        client.produce("kept", sent, partition=0)
        commit(client.settings, "readers", "kept", 7)
        port = broker.port
        broker.restart(down=1.0)
        assert broker.port == port
        assert [(r.key, r.value) for r in client.consume("kept", len(sent))] == sent
        assert client.committed("readers", "kept", 0) == 7
