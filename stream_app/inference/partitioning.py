"""Which partition a session's clicks and state live on: Kafka's default key partitioner.

The worker writes each session's table entry to `partition_for_key(session_id)`
(`stream_app.worker.faust_adapter.KeyPartitionedTable`), so a click must arrive on that same partition to
meet its state.
Java clients, aiokafka and kafka-python partition keyed messages this way; librdkafka-based
clients (confluent-kafka) need `partitioner=murmur2_random`.
"""

from __future__ import annotations

from functools import lru_cache

from aiokafka.partitioner import murmur2


@lru_cache(maxsize=1 << 16)  # murmur2 is pure Python; a session's clicks ask for the same key again
def partition_for_key(key: bytes, partitions: int) -> int:
    return (murmur2(key) & 0x7FFFFFFF) % partitions
