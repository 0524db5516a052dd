"""The fault suite: a worker under a steady stream of real clicks through each fault, and what each cost.

    PYTHONPATH=. python bench/faults.py [--rate 200] [--seconds 40] [--fuzz 20000] [--fuzz-rate 1000]

Each row runs a worker of its own (its own topics; `python -m stream_app worker`, as in production) on the
embedded broker, serving the demo's GRU4Rec (NEXTCLICK_SERVING_ARTIFACT_DIR if set), fed the demo's real
test-day sessions at `--rate` clicks/s for `--seconds`:

- worker SIGKILL x2: killed at 1/4 and at 5/8 of the load, a replacement started at once with the same settings
  (it takes over from the committed offsets and the session table's changelog);
- broker freeze: SIGSTOP for `--freeze` seconds from 1/4 of the load, then SIGCONT;
- broker kill + restart: the broker on durable storage (a local S3 server, `devtools/s3_store.py`) SIGKILLed at
  1/4 of the load and started again `--down` seconds later;
- corrupt artifact: the worker follows a local store; at 1/4 of the load a version whose graph rotted after
  the push is promoted and announced: the worker must refuse it and keep serving the old one;
- fuzz: `--fuzz` events, most of them real clicks mutated (bytes cut or flipped, fields dropped, wrong types,
  odd values, keys that do not match, payloads too big), sent at `--fuzz-rate`: each must be answered or
  dead-lettered.

Every message is accounted for by its offset on the clicks topic (`devtools/fault_load.py`): sent (acknowledged
by the broker), answered (a suggestion came back), dead-lettered, lost (neither), duplicated (more than one
answer: at-least-once repeats what a killed worker had not committed). Recovery: from the fault's end (the
replacement started, the broker thawed or back) to the first suggestion the worker produced after it.
Bars: 0 lost in every row; recovery <= 10 s after the broker returns.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import signal
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stream_throughput import demo_day_sessions, interleaved, take

from devtools.artifact_versions import corrupt, renamed
from devtools.click_replay import LoggedClick, WorkerProcess, unique_worker_settings
from devtools.demo import QUICK_EPOCHS, demo_artifact
from devtools.embedded_broker import DURABLE_WORKER_TUNING, EmbeddedBroker
from devtools.fault_load import Account, Fault, Message, click_messages, run_load
from devtools.machine import machine_line
from devtools.s3_store import S3Store
from devtools.stopping import unwind_on_sigterm
from stream_app.inference.artifact_format import verify_artifact
from stream_app.release.publish import promote_and_announce
from stream_app.release.store import ArtifactStore
from stream_app.settings import get_settings

SESSIONS_AT_ONCE = 100  # test sessions clicking side by side, each pass with new ids
ROWS = ["worker_kills", "broker_freeze", "broker_restart", "corrupt_artifact", "fuzz"]
RECOVERY_BAR = 10.0  # seconds after the broker returns
WORKER_START_TIMEOUT = 120.0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=200.0, help="clicks/s in the rows with a fault")
    parser.add_argument("--seconds", type=float, default=40.0, help="length of the load in those rows")
    parser.add_argument("--freeze", type=float, default=20.0, help="seconds the broker is frozen")
    parser.add_argument("--down", type=float, default=5.0, help="seconds between the broker's kill and restart")
    parser.add_argument("--fuzz", type=int, default=20_000, help="fuzzed events")
    parser.add_argument("--fuzz-rate", type=float, default=1000.0, help="fuzzed events/s")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fuzzing")
    parser.add_argument("--rows", nargs="+", choices=ROWS, default=ROWS, help="run only these rows")
    return parser.parse_args()


@dataclass
class Row:
    fault: str
    account: Account
    recoveries: list[float | None]  # one per fault of the row; empty where nothing stops serving
    notes: str
    broker_returns: bool = False  # recovery is measured after the broker returns: the bar applies

    def cells(self) -> list[str]:
        recovery = ", ".join("none" if r is None else f"{r:.2f}" for r in self.recoveries) or "-"
        a = self.account
        return [self.fault, f"{len(a.sent):,}", f"{a.answered:,}", f"{a.dead_lettered:,}", f"{len(a.lost()):,}",
                f"{a.duplicated:,}", recovery, self.notes]


# --- fuzzing --------------------------------------------------------------------------------------------


def as_json(document: Any) -> bytes:
    return json.dumps(document).encode()  # allows NaN and Infinity, as a careless producer would


def mutations(rng: random.Random) -> list[Callable[[dict[str, Any]], Message]]:
    """Ways to spoil a click (a dict of its fields), each giving key and value bytes; keyed by its session id
    unless the mutation is about the key."""

    def keyed(document: dict[str, Any], value: bytes | None) -> Message:
        return document["session_id"].encode(), value

    def valid(document: dict[str, Any]) -> Message:
        return keyed(document, as_json(document))

    def field(document: dict[str, Any]) -> str:
        return rng.choice(["session_id", "item_id", "timestamp"])

    def with_field(document: dict[str, Any], value: Any) -> Message:
        return keyed(document, as_json(document | {field(document): value}))

    def cut(document: dict[str, Any]) -> Message:
        value = as_json(document)
        return keyed(document, value[: rng.randrange(len(value))])

    def flip(document: dict[str, Any]) -> Message:
        value = bytearray(as_json(document))
        for _ in range(rng.randint(1, 4)):
            value[rng.randrange(len(value))] = rng.randrange(256)
        return keyed(document, bytes(value))

    def drop(document: dict[str, Any]) -> Message:
        name = field(document)
        return keyed(document, as_json({k: v for k, v in document.items() if k != name}))

    odd_values: list[Any] = [
        None, True, [], {}, [1, 2], {"a": 1}, "", " ", "\u202e\u200b", "😀", "a\u0000b", 1.5, -1, 0, 10**300,
        float("nan"), float("inf"), -float("inf"), 1e308, "2014-04-07T10:00:00Z", "x" * 10_000,
    ]
    top_level: list[bytes] = [b"[]", b"null", b"true", b"42", b'"click"', b"{}", b"{", b"", b" \n"]
    return [
        cut,
        flip,
        drop,
        lambda d: with_field(d, rng.choice(odd_values)),
        lambda d: keyed(d, rng.choice(top_level)),
        lambda d: keyed(d, None),  # a tombstone
        lambda d: keyed(d, as_json(d | {"pad": "x" * rng.randint(16_400, 40_000)})),  # over the payload limit
        lambda d: keyed(d, as_json(d).replace(b'"item_id": "', '"item_id": "é'.encode("latin-1"))),  # not UTF-8
        lambda d: keyed(d, b"\xef\xbb\xbf" + as_json(d)),  # a byte order mark
        lambda d: keyed(d, as_json(d) + b" trailing"),
        lambda d: keyed(d, as_json(d)[:-1] + b', "extra": ' + b"[" * 3000 + b"]" * 3000 + b"}"),  # nested deep
        lambda d: keyed(d, as_json(d)[:-1] + b', "session_id": "other"}'),  # a repeated field
        lambda d: keyed(d, as_json(d).replace(b'"item_id": "', b'"item_id": "\\ud800')),  # a lone surrogate
        lambda d: (f"other-{rng.randrange(10**6)}".encode(), as_json(d)),  # the key of another session
        lambda d: (None, as_json(d)),  # no key
        lambda d: (bytes(rng.randrange(256) for _ in range(rng.randint(1, 64))), as_json(d)),  # a key of noise
        lambda d: valid(d | {"item_id": int(d["item_id"])}),  # an integer item id: read as a string
        lambda d: valid(d | {"item_id": "unknown-item"}),  # an item the model does not know
    ]


def fuzzed(clicks: list[LoggedClick], seed: int) -> list[Message]:
    """One message per click: a third of them the real click, the rest spoiled by a random mutation."""
    rng = random.Random(seed)
    spoil = mutations(rng)
    now = time.time()
    messages = []
    for click in clicks:
        document = {"session_id": click.session_id, "item_id": click.item_id, "timestamp": now}
        real = (click.session_id.encode(), as_json(document))
        messages.append(real if rng.random() < 1 / 3 else rng.choice(spoil)(document))
    return messages


# --- rows -----------------------------------------------------------------------------------------------


class Bench:
    """What every row shares: the artifact, the real clicks, a memory broker, a folder, the worker's environment."""

    def __init__(self, args: argparse.Namespace, artifact: Path, broker: EmbeddedBroker, tmp: Path) -> None:
        self.args, self.artifact, self.broker, self.tmp = args, artifact, broker, tmp
        self.clicks: Iterator[LoggedClick] = interleaved(demo_day_sessions(get_settings()), SESSIONS_AT_ONCE)
        self.env = {name: value for name, value in os.environ.items() if not name.startswith("NEXTCLICK_")}

    @contextmanager
    def worker(self, name: str, broker: EmbeddedBroker | None = None, **overrides: Any) -> Iterator[WorkerProcess]:
        """A worker with its own topics and folder, ready (its model loaded); stopped on exit."""
        folder = self.tmp / name
        folder.mkdir()
        fields = unique_worker_settings((broker or self.broker).bootstrap_servers, folder,
                                        **{"serving_artifact_dir": self.artifact} | overrides)
        with WorkerProcess(fields, folder / "worker.log", base_env=self.env) as worker:
            worker.wait_ready(timeout=WORKER_START_TIMEOUT)
            yield worker

    def load(self, worker: WorkerProcess, faults: list[Fault], messages: list[Message], rate: float) -> Account:
        account = asyncio.run(run_load(worker.settings, messages, rate, faults))
        worker.check_alive()
        return account

    def clicks_for(self, tag: str) -> list[Message]:
        """The next `--rate` x `--seconds` real clicks, their sessions renamed with `tag`."""
        return click_messages(take(self.clicks, int(self.args.rate * self.args.seconds), tag))

    def at(self, share: float) -> float:
        return self.args.seconds * share

    def worker_kills(self) -> Row:
        with self.worker("kills") as worker:

            def kill_and_replace() -> None:
                worker.kill()
                worker.start()

            faults = [Fault(f"kill {n}", self.at(share), kill_and_replace) for n, share in ((1, 1 / 4), (2, 5 / 8))]
            account = self.load(worker, faults, self.clicks_for("~kills"), self.args.rate)
        return Row("worker SIGKILL x2 (a replacement started at once)", account,
                   [account.recovery(f.name) for f in faults], "recovery: from the kill, the replacement's start "
                   "included")

    def broker_freeze(self) -> Row:
        def freeze() -> None:
            os.kill(self.broker.pid, signal.SIGSTOP)
            time.sleep(self.args.freeze)
            os.kill(self.broker.pid, signal.SIGCONT)

        with self.worker("freeze") as worker:
            account = self.load(worker, [Fault("freeze", self.at(1 / 4), freeze)], self.clicks_for("~freeze"),
                                self.args.rate)
        return Row(f"broker frozen {self.args.freeze:g} s (SIGSTOP, SIGCONT)", account, [account.recovery("freeze")],
                   "recovery: from the SIGCONT", broker_returns=True)

    def broker_restart(self) -> Row:
        folder = self.tmp / "durable-broker"
        with S3Store(folder / "s3", log_file=folder / "s3.log") as storage, \
                EmbeddedBroker(storage=storage, log_file=folder / "broker.log") as broker:
            restart = Fault("restart", self.at(1 / 4), lambda: broker.restart(down=self.args.down))
            with self.worker("restart", broker, **DURABLE_WORKER_TUNING) as worker:
                account = self.load(worker, [restart], self.clicks_for("~restart"), self.args.rate)
        return Row(f"broker SIGKILL, restarted {self.args.down:g} s later (S3 storage)", account,
                   [account.recovery("restart")], "recovery: from the restart", broker_returns=True)

    def corrupt_artifact(self) -> Row:
        folder = self.tmp / "artifact-store"
        store = ArtifactStore(folder / "store", folder / "cache", keep_versions=5)
        good = store.push(self.artifact)
        store.promote(good)
        bad = f"{good}-rotted"
        with self.worker("corrupt", serving_artifact_dir=None, artifact_dir=folder / "store",
                         artifact_cache_dir=folder / "worker-cache") as worker:

            def promote_rotted() -> None:
                store.push(renamed(self.artifact, folder / bad, bad))
                corrupt(store.local_copy(bad))  # the store's own folder: what the worker will read
                promote_and_announce(store, bad, worker.settings)

            account = self.load(worker, [Fault("promotion", self.at(1 / 4), promote_rotted)],
                                self.clicks_for("~corrupt"), self.args.rate)
            refused = swaps(worker)["refused"]
        served = ", ".join(f"{version} {count:,}" for version, count in account.versions.items())
        return Row("corrupt artifact promoted (graph bit rot after the push)", account, [],
                   f"refused {refused:g} time(s); suggestions by version: {served}")

    def fuzz(self) -> Row:
        messages = fuzzed(take(self.clicks, self.args.fuzz, "~fuzz"), self.args.seed)
        with self.worker("fuzz") as worker:
            account = self.load(worker, [], messages, self.args.fuzz_rate)
            counted = worker.metric_samples("nextclick_dead_letters_total")
        reasons = Counter(reason for letters in account.dead.values() for reason in letters)
        exact = sum(value for _, value in counted) == sum(reasons.values())
        listed = ", ".join(f"{reason} {count:,}" for reason, count in reasons.most_common())
        return Row(f"{self.args.fuzz:,} fuzzed events at {self.args.fuzz_rate:g}/s", account, [],
                   f"dead letters by reason: {listed}; the worker's counters {'agree' if exact else 'DIFFER'}")


def swaps(worker: WorkerProcess) -> Counter[str]:
    return Counter({labels["outcome"]: value for labels, value in worker.metric_samples("nextclick_model_swaps_total")})


def report(rows: list[Row]) -> None:
    print("| fault | clicks sent | answered | dead-lettered | lost | duplicated | recovery (s) | notes |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row.cells()) + " |")
    lost = sum(len(row.account.lost()) for row in rows)
    returns = [r for row in rows if row.broker_returns for r in row.recoveries]
    slowest = max((r if r is not None else float("inf")) for r in returns)
    print(f"\nbar, 0 lost in every row: {'met' if lost == 0 else f'NOT met ({lost} lost)'}; "
          f"recovery <= {RECOVERY_BAR:g} s after the broker returns: "
          f"{'met' if slowest <= RECOVERY_BAR else 'NOT met'} (slowest {slowest:.2f} s)")
    unacknowledged = {row.fault: row.account.unacknowledged for row in rows if row.account.unacknowledged}
    failed = {row.fault: row.account.failed for row in rows if row.account.failed}
    if unacknowledged or failed:
        print(f"answered but never acknowledged (a produce retried after its ack was lost): {unacknowledged};"
              f" sends that failed: {failed}")


def main() -> None:
    unwind_on_sigterm()
    args = parse_args()
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # the bench's own clients: the faults are on purpose
    settings = get_settings()
    artifact = demo_artifact(settings, QUICK_EPOCHS)
    manifest = verify_artifact(artifact)
    print(machine_line(f"model {manifest['version']} ({', '.join(manifest['models'])})"), flush=True)
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker(log_file=Path(tmp) / "broker.log") as broker:
        bench = Bench(args, artifact, broker, Path(tmp))
        rows = []
        for name in args.rows:
            started = time.monotonic()
            rows.append(getattr(bench, name)())
            account = rows[-1].account
            print(f"{rows[-1].fault}: {time.monotonic() - started:.0f} s; {len(account.sent)} sent,"
                  f" {len(account.lost())} lost", flush=True)
    print()
    report(rows)


if __name__ == "__main__":
    main()
