"""`python -m stream_app.catalogue`: the catalogue topic from the command line (what workers may suggest).

    python -m stream_app.catalogue set ITEM --available false      # sold out; other fields kept as they were
    python -m stream_app.catalogue set ITEM --blocked true --category 1096
    python -m stream_app.catalogue load FILE.csv                   # bulk: one record per row
    python -m stream_app.catalogue show ITEM                       # the item's latest record (JSON), or null
    python -m stream_app.catalogue remove ITEM                     # a tombstone: the item is shown again

The topic is NEXTCLICK_CATALOGUE_TOPIC on NEXTCLICK_BOOTSTRAP_SERVERS (created, compacted, when missing); every
running worker applies a record within about a second (docs/serving.md, Catalogue and rules). `set` reads the
item's current record first (the records of its partition: seconds for a million items) and changes only the
fields given; an item without a record needs --available. `load` reads a CSV file with a header: `item_id` and
`available` required, `blocked`, `category` and `new` optional, any other column an extra attribute (text); true
and false as true/false, yes/no or 1/0; an empty cell leaves the field out. Every row is checked before anything
is sent. Any refusal or bad input is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import sys
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from stream_app.cli_help import HelpFormatter, OneLineErrors, settings_or_none
from stream_app.inference.catalogue_records import InvalidItemRecord, parse_item_record
from stream_app.inference.partitioning import partition_for_key
from stream_app.kafka_security import aiokafka_client_kwargs
from stream_app.partition_ends import partition_ends
from stream_app.settings import Settings
from stream_app.worker.catalogue_reader import ensure_catalogue_topic

FIELDS = ("available", "blocked", "category", "new")
BOOLEANS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


def boolean(text: str) -> bool:
    try:
        return BOOLEANS[text.strip().lower()]
    except KeyError:
        raise ValueError(f"{text!r} is not true or false") from None


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrors(prog="python -m stream_app.catalogue", description=__doc__, formatter_class=HelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, help="what to do with the catalogue topic")
    put = commands.add_parser("set", help="write an item's record: the given fields, the others as they were")
    put.add_argument("item", help="the item id (as in the artifact's item_ids.json)")
    put.add_argument("--available", type=boolean, metavar="true|false", help="false: never suggested")
    put.add_argument("--blocked", type=boolean, metavar="true|false", help="true: never suggested at all")
    put.add_argument("--category", help="the category clicks' rules select by")
    put.add_argument("--new", type=boolean, metavar="true|false", help="launched after the model's training")
    load = commands.add_parser("load", help="write one record per row of a CSV file (header: item_id, available, ...)")
    load.add_argument("file", type=Path, help="UTF-8 CSV with a header row")
    show = commands.add_parser("show", help="print an item's latest record (null: none)")
    show.add_argument("item", help="the item id")
    remove = commands.add_parser("remove", help="remove an item's record (a tombstone)")
    remove.add_argument("item", help="the item id")
    return parser


def checked(item_id: str, record: dict[str, Any] | None, settings: Settings) -> tuple[bytes, bytes | None]:
    """The Kafka key and value of a record, refused here exactly as a worker would refuse it."""
    key, value = item_id.encode("utf-8", "surrogatepass"), None if record is None else json.dumps(record).encode()
    parse_item_record(key, value, max_bytes=settings.catalogue_max_record_bytes)
    return key, value


def csv_records(path: Path, settings: Settings) -> list[tuple[bytes, bytes | None]]:
    """Every row of `path` as a checked record; raises ValueError naming the first bad line."""
    with path.open(newline="", encoding="utf-8") as rows:
        reader = csv.DictReader(rows)
        missing = {"item_id", "available"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: the header lacks {', '.join(sorted(missing))}")
        records = []
        for row in reader:
            try:
                record: dict[str, Any] = {}
                for name, cell in row.items():
                    if name == "item_id" or cell in (None, ""):
                        continue
                    record[name] = boolean(cell) if name in ("available", "blocked", "new") else cell
                records.append(checked(row["item_id"], record, settings))
            except (ValueError, InvalidItemRecord) as error:
                raise ValueError(f"{path}:{reader.line_num}: {error}") from None
    return records


async def latest_record(settings: Settings, item_id: str) -> tuple[dict[str, Any] | None, int, int] | None:
    """The item's latest record on its partition, with partition and offset (None: it has none, or a tombstone)."""
    await ensure_catalogue_topic(settings)
    consumer = AIOKafkaConsumer(group_id=None, enable_auto_commit=False, **aiokafka_client_kwargs(settings))
    await consumer.start()
    try:
        await consumer.topics()  # the cluster's metadata, with the topic's partitions
        partitions = consumer.partitions_for_topic(settings.catalogue_topic) or {0}
        key = item_id.encode()
        tp = TopicPartition(settings.catalogue_topic, partition_for_key(key, len(partitions)))
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        end = (await partition_ends(consumer, [tp], settings))[tp]
        found = None
        while await consumer.position(tp) < end:
            for record in (await consumer.getmany(tp, timeout_ms=1000)).get(tp, []):
                if record.key == key:
                    found = None if record.value is None else (json.loads(record.value), tp.partition, record.offset)
        return found
    finally:
        await consumer.stop()


async def produce(settings: Settings, records: list[tuple[bytes, bytes | None]]) -> None:
    await ensure_catalogue_topic(settings)
    producer = AIOKafkaProducer(acks="all", linger_ms=20, **aiokafka_client_kwargs(settings))
    await producer.start()
    try:
        pending = [await producer.send(settings.catalogue_topic, value, key=key) for key, value in records]
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


async def run(args: argparse.Namespace, settings: Settings) -> str:
    """Do what `args` say; returns what to print."""
    if args.command == "show":
        found = await latest_record(settings, args.item)
        record, partition, offset = found if found else (None, None, None)
        return json.dumps({"item_id": args.item, "record": record, "partition": partition, "offset": offset})
    if args.command == "remove":
        records = [checked(args.item, None, settings)]
    elif args.command == "load":
        records = csv_records(args.file, settings)
    else:
        given = {name: getattr(args, name) for name in FIELDS if getattr(args, name) is not None}
        if not given:
            raise ValueError("set needs at least one of --available, --blocked, --category, --new")
        found = await latest_record(settings, args.item)
        if found is None and "available" not in given:
            raise ValueError(f"item {args.item!r} has no record yet: give --available")
        records = [checked(args.item, (found[0] if found else {}) | given, settings)]
    await produce(settings, records)
    return f"{len(records)} record{'s' * (len(records) != 1)} written to {settings.catalogue_topic}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = settings_or_none()
    if settings is None:
        return 2
    try:
        print(asyncio.run(run(args, settings)))
    except (ValueError, InvalidItemRecord, OSError, KafkaError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
