"""What the embedded broker (Tansu, memory storage) costs as its partitions grow, with no worker at all.

    PYTHONPATH=. python bench/embedded_broker_cost.py [--rate 1000] [--seconds 30] [--partitions 4]
        [--fetch-max-wait 0.01] [--linger-ms 0] [--no-consumer]

One aiokafka producer sends records of a click's size at a steady `--rate` (one batch per record unless
`--linger-ms` lets it wait for more) to a fresh topic; one consumer reads them with `--fetch-max-wait`. Prints, per
window, the broker's CPU (ms per second of wall time) beside how many records each partition holds, then the
produce acknowledgement times and what the consumer saw: records per fetched batch and each record's age when
it was handed over. A broker whose cost per fetch grew with the length of the partition it reads shows CPU
rising with the records held at a steady rate; fewer, fuller batches (`--linger-ms`) show whether it grows
with the batches held rather than the records; `--no-consumer` shows the produces alone. Why it matters: the
worker benches share the machine's cores with this broker (docs/stream_performance.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bench.stream_throughput import KAFKA_LIKE_FETCH_WAIT, cpu_seconds
from devtools.click_replay import percentiles
from devtools.embedded_broker import EmbeddedBroker
from devtools.machine import machine_line
from devtools.stopping import unwind_on_sigterm

RECORD_PADDING = 120  # bytes beside the timestamp: about a click event's JSON


async def run(args: argparse.Namespace, broker: EmbeddedBroker) -> None:
    servers, topic = broker.bootstrap_servers, f"cost-{uuid.uuid4().hex[:6]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=servers)
    await admin.start()
    await admin.create_topics([NewTopic(topic, args.partitions, 1)])
    await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=servers, linger_ms=args.linger_ms)
    consumer = None if args.no_consumer else AIOKafkaConsumer(
        topic, bootstrap_servers=servers, auto_offset_reset="earliest",
        fetch_max_wait_ms=int(args.fetch_max_wait * 1000),
    )
    await producer.start()
    if consumer is not None:
        await consumer.start()
    acks: list[float] = []
    batch_sizes: list[int] = []
    ages: list[float] = []
    sent = 0
    stop = asyncio.Event()

    async def consume(consumer: AIOKafkaConsumer) -> None:
        while not stop.is_set():
            fetched = await consumer.getmany(timeout_ms=100)
            now = time.time()
            records = [record for batch in fetched.values() for record in batch]
            ages.extend(now - json.loads(record.value)["t"] for record in records)
            if records:
                batch_sizes.append(len(records))

    async def watch() -> None:
        last_cpu, last_at = cpu_seconds(broker.pid), time.monotonic()
        while not stop.is_set():
            await asyncio.sleep(args.window)
            cpu, at = cpu_seconds(broker.pid), time.monotonic()
            print(f"  {at - started:5.1f} s: {sent / args.partitions:8,.0f} records per partition,"
                  f" broker CPU {1000 * (cpu - last_cpu) / (at - last_at):4.0f} ms/s", flush=True)
            last_cpu, last_at = cpu, at

    tasks = [asyncio.create_task(watch())] + ([] if consumer is None else [asyncio.create_task(consume(consumer))])
    started = time.monotonic()
    pending = []
    for n in range(int(args.rate * args.seconds)):
        if (delay := started + n / args.rate - time.monotonic()) > 0:
            await asyncio.sleep(delay)
        at = time.time()
        value = json.dumps({"t": at, "pad": "x" * RECORD_PADDING}).encode()
        delivery = await producer.send(topic, value, key=str(n % 2_000).encode())
        delivery.add_done_callback(lambda _, at=at: acks.append(time.time() - at))
        pending.append(delivery)
        sent = n + 1
    await asyncio.gather(*pending)
    await asyncio.sleep(1.0)  # the consumer's last fetches
    stop.set()
    await asyncio.gather(*tasks)
    await producer.stop()
    if consumer is not None:
        await consumer.stop()
    a50, a99 = (1000 * q for q in percentiles(acks, 50, 99))
    print(f"produce acknowledged: p50 {a50:.1f} ms, p99 {a99:.1f} ms")
    if consumer is not None:
        b50, b99 = percentiles(batch_sizes, 50, 99)
        g50, g99 = (1000 * q for q in percentiles(ages, 50, 99))
        print(f"consumed: {len(ages):,} records; per fetched batch p50 {b50:.0f}, p99 {b99:.0f},"
              f" max {max(batch_sizes)}; age when handed over p50 {g50:.1f} ms, p99 {g99:.1f} ms,"
              f" max {1000 * max(ages):.1f} ms")


def main() -> None:
    unwind_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=1_000.0, help="records per second")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--fetch-max-wait", type=float, default=KAFKA_LIKE_FETCH_WAIT)
    parser.add_argument("--window", type=float, default=5.0, help="seconds per printed CPU figure")
    parser.add_argument("--linger-ms", type=int, default=0, help="the producer's wait to fill a batch")
    parser.add_argument("--no-consumer", action="store_true", help="the produces alone")
    args = parser.parse_args()
    print(machine_line())
    print(f"{args.rate:,.0f} records/s for {args.seconds:.0f} s to {args.partitions} partitions, one producer;"
          + (" no consumer" if args.no_consumer else f" one consumer, fetch wait {args.fetch_max_wait} s"))
    with EmbeddedBroker() as broker:
        asyncio.run(run(args, broker))


if __name__ == "__main__":
    main()
