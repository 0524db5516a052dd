"""The ceiling the worker is measured against: a bare aiokafka loop doing a click's essential work.

    PYTHONPATH=. python bench/bare_loop.py --artifact DIR --clicks-topic T --out-topic O [--group G]

getmany → JSON → a dict of per-session state (GRU4Rec's hidden state, the last clicks NARM and DIEN
read) → the worker's own model call for its pipeline (`Scorer.score`, NEXTCLICK_SERVING_MODEL) → one
JSON suggestion per click (popularity for an unknown item), sent without awaiting each delivery. No
validation, no changelog, no exclusion, no metrics, no commits that wait for the producer: what Python
and Kafka cost at least.
Connection, batch and pipeline settings are the worker's (NEXTCLICK_*). Runs until killed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import Counter
from pathlib import Path

import numpy as np
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from stream_app.inference.served_pipeline import served_scorer
from stream_app.kafka_security import aiokafka_client_kwargs
from stream_app.settings import get_settings


async def serve(artifact: Path, clicks_topic: str, out_topic: str, group: str) -> None:
    settings = get_settings()
    scorer = served_scorer(artifact, settings)  # as the worker builds it: its threads, top-K index, provider
    zero = scorer.zero_hidden(1)[:, 0, :]
    popular = scorer.popular(settings.top_k)
    hidden: dict[str, np.ndarray] = {}  # GRU4Rec's state after the session's last click
    windows: dict[str, list[int]] = {}  # the session's last `scorer.window` known clicks
    consumer = AIOKafkaConsumer(
        clicks_topic,
        group_id=group,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=int(settings.consumer_fetch_max_wait * 1000),
        **aiokafka_client_kwargs(settings),
    )
    linger_ms = int(settings.producer_linger * 1000)
    producer = AIOKafkaProducer(acks="all", linger_ms=linger_ms, **aiokafka_client_kwargs(settings))
    await consumer.start()
    await producer.start()
    try:
        while True:
            batches = await consumer.getmany(timeout_ms=1000, max_records=settings.batch_size)
            clicks = [json.loads(record.value) for records in batches.values() for record in records]
            rounds: list[list[dict]] = []  # a session's second click of the batch waits for its first
            ordinal: Counter[str] = Counter()
            for click in clicks:
                position = ordinal[click["session_id"]]
                ordinal[click["session_id"]] += 1
                if position == len(rounds):
                    rounds.append([])
                rounds[position].append(click)
            for batch in rounds:
                known = [(c, index) for c in batch if (index := scorer.index_of(c["item_id"])) is not None]
                answers = {id(c): popular for c in batch}  # items the model never saw: popularity
                if known:
                    read = [
                        (windows.get(c["session_id"], []) + [index])[-scorer.window :] if scorer.window else []
                        for c, index in known
                    ]
                    result = scorer.score(
                        np.array([index for _, index in known], dtype=np.int64),
                        np.stack([hidden.get(c["session_id"], zero) for c, _ in known], axis=1)
                        if scorer.stateful else None,
                        read,
                    )
                    top_items, top_scores = result.top_items.tolist(), result.top_scores.tolist()
                    for row, (click, _) in enumerate(known):
                        if result.next_hidden is not None:
                            hidden[click["session_id"]] = result.next_hidden[:, row, :].copy()
                        if scorer.window:
                            windows[click["session_id"]] = read[row]
                        answers[id(click)] = (top_items[row][: settings.top_k], top_scores[row][: settings.top_k])
                for click in batch:
                    items, scores = answers[id(click)]
                    suggestion = {
                        "session_id": click["session_id"],
                        "click": {"item_id": click["item_id"], "timestamp": click["timestamp"]},
                        "items": [scorer.item_ids[i] for i in items],
                        "scores": scores,
                        "produced_at": time.time(),
                    }
                    await producer.send(
                        out_topic, json.dumps(suggestion).encode(), key=click["session_id"].encode()
                    )
    finally:
        await producer.stop()
        await consumer.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifact", type=Path, required=True)
    parser.add_argument("--clicks-topic", required=True)
    parser.add_argument("--out-topic", required=True)
    parser.add_argument("--group", default="bare-loop")
    args = parser.parse_args()
    asyncio.run(serve(args.artifact, args.clicks_topic, args.out_topic, args.group))


if __name__ == "__main__":
    main()
