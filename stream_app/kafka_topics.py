"""Creating a topic that is missing, for the commands and tasks that write to a topic no faust app declares."""

from __future__ import annotations

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from stream_app.kafka_security import aiokafka_client_kwargs
from stream_app.settings import Settings


async def ensure_topic(
    settings: Settings, name: str, partitions: int = 1, config: dict[str, str] | None = None
) -> None:
    """Create topic `name` with `partitions` partitions and `config` unless it exists (an existing one is left
    as it is)."""
    admin = AIOKafkaAdminClient(**aiokafka_client_kwargs(settings))
    await admin.start()
    try:
        if name not in await admin.list_topics():
            await admin.create_topics(
                [NewTopic(name, partitions, settings.topic_replication_factor, topic_configs=config or {})]
            )
    finally:
        await admin.close()
