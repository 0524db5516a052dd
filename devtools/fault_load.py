"""A steady load of messages through a fault, and an account of every one by its offset on the clicks topic.

For the fault suite (`bench/faults.py`) and the broker-restart test. Messages are sent at a fixed rate while
faults (a killed worker, a frozen or restarted broker, a bad version promoted) happen at set times; every
suggestion and dead letter is read back and matched to the message it answers by (partition, offset): the
`click` a suggestion cites, the `nextclick.dlq.partition` / `offset` headers of a dead letter. So a message is
lost when neither came back and duplicated when more than one did, whatever its bytes (fuzzed ones too).
A fault's recovery is the time from its end (the worker restarted, the broker back) to the first suggestion
the worker produced after it (its `produced_at`: how fast this side reads them back does not count).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import ConsumerRecord

from devtools.click_replay import LoggedClick, click_message, kafka_producer
from stream_app.kafka_security import aiokafka_client_kwargs
from stream_app.settings import Settings
from stream_app.worker.dead_letters import HEADER_PREFIX

Message = tuple[bytes | None, bytes | None]  # key, value
Offset = tuple[int, int]  # partition, offset on the clicks topic


@dataclass(frozen=True)
class Fault:
    name: str
    at: float  # seconds after the first message
    action: Callable[[], object]  # blocking; returns when the fault is over


@dataclass
class Account:
    """What became of each message sent, by its offset."""

    sent: set[Offset] = field(default_factory=set)  # acknowledged by the broker
    failed: int = 0  # messages the broker never acknowledged
    answers: dict[Offset, list[float]] = field(default_factory=lambda: defaultdict(list))  # suggestions' produced_at
    dead: dict[Offset, list[str]] = field(default_factory=lambda: defaultdict(list))  # dead letters' reasons
    versions: Counter[str] = field(default_factory=Counter)  # suggestions per artifact version
    fault_ends: dict[str, float] = field(default_factory=dict)  # name -> when it was over (Unix s)
    last_record: float = field(default_factory=time.monotonic)

    @property
    def answered(self) -> int:
        return sum(1 for key in self.sent if key in self.answers)

    @property
    def dead_lettered(self) -> int:
        return sum(1 for key in self.sent if key in self.dead and key not in self.answers)

    def lost(self) -> list[Offset]:
        return [key for key in self.sent if key not in self.answers and key not in self.dead]

    @property
    def duplicated(self) -> int:
        """Messages answered (or dead-lettered) more than once."""
        return sum(1 for key in self.sent if len(self.answers.get(key, ())) + len(self.dead.get(key, ())) > 1)

    @property
    def unacknowledged(self) -> int:
        """Messages answered that the broker never acknowledged: a produce retried after its ack was lost."""
        return len((self.answers.keys() | self.dead.keys()) - self.sent)

    def recovery(self, fault: str) -> float | None:
        """Seconds from the fault's end to the first suggestion produced after it (None: none came)."""
        end = self.fault_ends[fault]
        after = [produced for answers in self.answers.values() for produced in answers if produced > end]
        return min(after) - end if after else None

    def read(self, record: ConsumerRecord, suggestions_topic: str) -> None:
        self.last_record = time.monotonic()
        if record.topic == suggestions_topic:
            suggestion = json.loads(record.value)
            click = suggestion["click"]
            self.answers[(click["partition"], click["offset"])].append(suggestion["produced_at"])
            self.versions[suggestion["artifact_version"]] += 1
        else:
            headers = {name.removeprefix(HEADER_PREFIX): value.decode() for name, value in record.headers}
            self.dead[(int(headers["partition"]), int(headers["offset"]))].append(headers["reason"])


def click_messages(clicks: Iterable[LoggedClick]) -> list[Message]:
    """Real clicks as messages, stamped now (their timestamp only has to be a valid one)."""
    now = time.time()
    return [click_message(click, now) for click in clicks]


async def send_at_rate(producer: AIOKafkaProducer, topic: str, messages: Sequence[Message], rate: float,
                       account: Account) -> None:
    """Send `messages` keyed as given (the default partitioner), `rate` per second; return once each is
    acknowledged or failed. A send that waits on a frozen or absent broker delays the next ones."""
    started = time.monotonic()
    pending = []
    for index, (key, value) in enumerate(messages):
        if (delay := started + index / rate - time.monotonic()) > 0:
            await asyncio.sleep(delay)
        try:
            pending.append(await producer.send(topic, value, key=key))
        except Exception:  # refused before it left (a full buffer timing out)
            account.failed += 1
    for delivery in pending:
        try:
            metadata = await delivery
        except Exception:
            account.failed += 1
        else:
            account.sent.add((metadata.partition, metadata.offset))


async def read_back(consumer: AIOKafkaConsumer, account: Account, suggestions_topic: str) -> None:
    """Feed every suggestion and dead letter to `account` until cancelled."""
    while True:
        batches = await consumer.getmany(timeout_ms=100)
        for records in batches.values():
            for record in records:
                account.read(record, suggestions_topic)


async def run_load(settings: Settings, messages: Sequence[Message], rate: float, faults: Sequence[Fault] = (),
                   quiet: float = 20.0) -> Account:
    """Send `messages` to the clicks topic at `rate` while `faults` happen, then read back until every
    acknowledged message is answered or dead-lettered, or nothing came for `quiet` seconds; then one second
    more, for repeats."""
    account = Account()
    producer = kafka_producer(settings)
    consumer = AIOKafkaConsumer(
        settings.recommendations_topic, settings.dead_letter_topic, auto_offset_reset="earliest",
        fetch_max_wait_ms=int(settings.consumer_fetch_max_wait * 1000), **aiokafka_client_kwargs(settings),
    )
    await producer.start()
    await consumer.start()
    reading = asyncio.create_task(read_back(consumer, account, settings.recommendations_topic))
    try:
        started = time.monotonic()
        sending = asyncio.create_task(send_at_rate(producer, settings.clicks_topic, messages, rate, account))
        for fault in sorted(faults, key=lambda fault: fault.at):
            await asyncio.sleep(max(0.0, started + fault.at - time.monotonic()))
            await asyncio.to_thread(fault.action)
            account.fault_ends[fault.name] = time.time()
        await sending
        while account.lost() and time.monotonic() - account.last_record < quiet:
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)
    finally:
        reading.cancel()
        await asyncio.gather(reading, return_exceptions=True)
        await producer.stop()
        await consumer.stop()
    return account
