"""`python -m devtools.demo`: the product's loop live on one machine, fed by the real test day.

Starts the embedded broker (Tansu) and a worker that follows the artifact store (NEXTCLICK_ARTIFACT_DIR,
the one `python -m stream_app.artifacts list` shows), then:

  1. a first version: a small GRU4Rec trained in seconds on a slice of `yoochoose_rsc15_100k`, pushed to
     the store and promoted (`--force-promote`, so the loop shows even over a better current version);
  2. the replay: the test day's clicks in time order, their logged gaps divided by `--speedup`;
  3. meanwhile, in the background, the better version: `python -m training.retrain` with
     configs/gru4rec_yoochoose.toml (`--epochs`, 1 by default) on the full slice, through the quality gate;
     when it passes, it is promoted and announced on the model-updates topic and the worker swaps to it live.

With `--follow N`, continuous training joins in: a follower (`python -m training.follow`) updates the served
version incrementally every N replayed clicks (warm-started, new items added, through the quality gate) and the
worker swaps to each update it promotes; the better version, once promoted, is what it continues from.

The day is replayed again (sessions renamed per round) until the better version has served a whole round
(or the retrain ended without a swap), Ctrl-C, `--duration` or `--rounds`. The status line shows the
version served, and per version the worker's own live hit-rate@20 (its /metrics) next to that version's
offline Recall@20 on this day (the artifact's served figures, under the policy the worker serves).
With NEXTCLICK_SERVING_ARTIFACT_DIR set to a valid artifact, the worker serves that one, fixed: no
training, no swap, one round.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from devtools.click_replay import (
    LoggedClick,
    OnlineStats,
    WorkerProcess,
    held_out_clicks,
    kafka_producer,
    receive_suggestions,
    send_clicks,
    speedup_schedule,
    suggestion_consumer,
)
from devtools.embedded_broker import TANSU_WORKER_TUNING, EmbeddedBroker, free_port
from devtools.stopping import unwind_on_sigterm
from stream_app.cli_help import HelpFormatter
from stream_app.inference.artifact_format import ArtifactError, verify_artifact
from stream_app.release.store import ArtifactStore
from stream_app.settings import REPO_ROOT, Settings, get_settings

DATASET = "yoochoose_rsc15_100k"  # its test day is what the demo replays
#: The first version: small and on a slice, so that it serves within seconds; quality is not its point.
FIRST_VERSION_FLAGS = (
    "--models gru4rec --epochs 1 --gru4rec-layers 32 --gru4rec-batch-size 64 --gru4rec-n-sample 256"
    " --max-train-sessions 2000 --threads 1 --no-progress --force-promote"
)
#: The better version: the official YOOCHOOSE settings on the full slice, `--epochs` of them (10 in the config).
BETTER_VERSION_FLAGS = f"--models gru4rec --config {Path('configs') / 'gru4rec_yoochoose.toml'} --no-progress"
QUICK_EPOCHS = 1
REFRESH_SECONDS = 0.5
CUTOFF = "20"  # the live hit-rate and offline Recall cutoff shown
DEMO_WORKER = {"model_poll_interval": 2.0}  # an announcement sent before the worker listened is seen at once


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m devtools.demo", description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--speedup", type=float, default=600.0, help="divide the logged gaps between clicks by this")
    parser.add_argument("--max-clicks", type=int, help="replay only the first N clicks of the test day in each round")
    parser.add_argument("--rounds", type=int, help="replay the day at most this many times (default: until the "
                        "better version served a whole round)")
    parser.add_argument("--duration", type=float, help="stop sending after this many seconds")
    parser.add_argument("--drain", type=float, default=10.0,
                        help="after the last click, wait at most this many seconds without a new suggestion")
    parser.add_argument("--epochs", type=int, default=QUICK_EPOCHS, help="epochs of the better version")
    parser.add_argument("--first-version-args", default=FIRST_VERSION_FLAGS,
                        help="flags of `training.retrain` for the first version")
    parser.add_argument("--retrain-args", default="",
                        help="more flags of `training.retrain` for the better version (they win over the demo's)")
    parser.add_argument("--follow", type=int, default=0, metavar="N",
                        help="continuous training: an incremental update every N clicks; 0: none. Later rounds "
                             "repeat the day, which the updates learnt: only the first round's live figures are "
                             "figures on clicks no version trained on")
    parser.add_argument("--log-dir", type=Path, default=REPO_ROOT / "runs" / "demo",
                        help="broker, worker and retrain logs")
    return parser


def fixed_artifact(settings: Settings) -> Path | None:
    """NEXTCLICK_SERVING_ARTIFACT_DIR when it is set and valid."""
    if settings.serving_artifact_dir is not None:
        with contextlib.suppress(ArtifactError):
            verify_artifact(settings.serving_artifact_dir)
            return settings.serving_artifact_dir
    return None


def follower_env(every: int) -> dict[str, str]:
    """The follower's settings for a demo day: an update every `every` clicks, no metrics port of its own."""
    return {"NEXTCLICK_FOLLOW_INTERVAL_CLICKS": str(every), "NEXTCLICK_FOLLOW_MIN_CLICKS": str(min(every, 1000)),
            "NEXTCLICK_FOLLOW_POLL_SECONDS": "1", "NEXTCLICK_FOLLOW_METRICS_PORT": "0"}


def retrain_command(flags: str) -> list[str]:
    return [sys.executable, "-m", "training.retrain", "--dataset", DATASET, *shlex.split(flags)]


def demo_artifact(settings: Settings, epochs: int) -> Path:
    """For the benches (a fixed artifact): NEXTCLICK_SERVING_ARTIFACT_DIR if valid, else the better version's
    settings trained once with `--out` into NEXTCLICK_ARTIFACT_DIR/demo (reused next time; not pushed)."""
    quick = settings.artifact_dir / "demo"
    return fixed_artifact(settings) or fixed_artifact(settings.model_copy(update={"serving_artifact_dir": quick})) \
        or train_quick_artifact(quick, epochs)


def train_quick_artifact(out: Path, epochs: int, *flags: str) -> Path:
    """The better version's settings with `epochs`, written to `out` (then `flags`); nothing pushed."""
    print(f"training GRU4Rec ({epochs} epoch(s) of configs/gru4rec_yoochoose.toml on {DATASET}) into {out}", flush=True)
    command = [*retrain_command(f"{BETTER_VERSION_FLAGS} --epochs {epochs}"), "--out", str(out), *flags]
    subprocess.run(command, cwd=REPO_ROOT, check=True)
    return out


class Retrain:
    """A `training.retrain` (or the follower) that publishes to the demo's store (gate, push, promote, announce),
    as a child process in its own session (a Ctrl-C for the demo does not reach it; the demo stops it)."""

    def __init__(self, what: str, command: list[str], env: dict[str, str], log_file: Path, niceness: int = 0) -> None:
        self.what = what
        self.log_file = log_file
        with log_file.open("ab") as log:
            self.process = subprocess.Popen(
                ["nice", "-n", str(niceness), *command],
                cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        self.started = time.monotonic()
        self.ended: float | None = None

    def poll(self) -> int | None:
        code = self.process.poll()
        if code is not None and self.ended is None:
            self.ended = time.monotonic()
        return code

    def state(self) -> str:
        code = self.poll()
        if code is None:
            return f"{self.what}: training ({time.monotonic() - self.started:.0f} s)"
        took = f"after {self.ended - self.started:.0f} s"
        if code == 0:
            return f"{self.what}: promoted {took}"
        if code == 3:  # training.retrain.REFUSED_EXIT_STATUS
            return f"{self.what}: refused by the quality gate {took} (see {self.log_file})"
        return f"{self.what}: failed with status {code} {took} (see {self.log_file})"

    def wait(self) -> int:
        self.process.wait()
        return self.poll()

    def stop(self) -> None:
        if self.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.poll()


@dataclass
class VersionQuality:
    """One artifact version as the worker reports it: live judgements and the offline figure beside them."""

    version: str
    judged: float = 0.0
    hits: float = 0.0
    offline_recall: float | None = None  # Recall@20 on the day, under the served policy
    exclude_seen: str | None = None

    @property
    def live(self) -> float:
        return self.hits / self.judged if self.judged else math.nan

    @property
    def noise(self) -> float:
        """Two standard errors of the live hit-rate (a binomial share)."""
        p = self.offline_recall if self.offline_recall is not None else self.live
        return 2 * math.sqrt(p * (1 - p) / self.judged) if self.judged else math.nan

    def line(self) -> str:
        offline = f"{self.offline_recall:.3f}" if self.offline_recall is not None else "not measured"
        return f"{self.version}: live {self.live:.3f} ({self.judged:,.0f} judged), offline {offline}"


@dataclass
class WorkerView:
    """What the worker's /metrics say: the version served now and every version's served quality."""

    serving: str | None = None
    swaps: list[tuple[float, str]] = field(default_factory=list)  # (seconds into the replay, version)
    versions: dict[str, VersionQuality] = field(default_factory=dict)

    def read(self, worker: WorkerProcess, elapsed: float) -> None:
        names = ("nextclick_model_info", "nextclick_suggestions_judged_total", "nextclick_suggestion_hits_total",
                 "nextclick_model_offline_recall")
        snapshot = worker.metric_snapshot(*names)
        for labels, _ in snapshot["nextclick_model_info"]:
            if labels.get("variant") == "current":
                self._quality(labels["artifact_version"]).exclude_seen = labels.get("exclude_seen")
                if labels["artifact_version"] != self.serving:
                    self.serving = labels["artifact_version"]
                    self.swaps.append((elapsed, self.serving))
        for labels, value in snapshot["nextclick_suggestions_judged_total"]:
            self._quality(labels["artifact_version"]).judged = value
        for labels, value in snapshot["nextclick_suggestion_hits_total"]:
            if labels["cutoff"] == CUTOFF:
                self._quality(labels["artifact_version"]).hits = value
        for labels, value in snapshot["nextclick_model_offline_recall"]:  # only while a version serves
            if labels["cutoff"] == CUTOFF:
                self._quality(labels["artifact_version"]).offline_recall = value

    def _quality(self, version: str) -> VersionQuality:
        return self.versions.setdefault(version, VersionQuality(version))

    def status(self) -> str:
        served = [self.versions[v] for _, v in self.swaps]
        parts = [f"serving {self.serving or '(loading)'}"]
        parts += [f"{'now ' if q.version == self.serving else 'was '}{q.line()}" for q in served[-2:]]
        return " | ".join(parts)


@dataclass
class Replay:
    """The clicks of the day, round after round, and how far the replay got."""

    day: list[LoggedClick]
    schedule: list[float]  # send offsets within a round, s
    rounds: int = 0  # rounds started
    sent_in_round: int = 0
    ended: str = "finished: the last version served a whole round"

    def round_clicks(self, number: int) -> list[LoggedClick]:
        """Round 0 is the day as logged; later rounds rename the sessions, so each round's are new ones."""
        if number == 0:
            return self.day
        return [LoggedClick(f"{c.session_id}.{number}", c.item_id, c.time) for c in self.day]

    @property
    def not_sent(self) -> int:
        return len(self.day) - self.sent_in_round if self.rounds else len(self.day)


async def send_rounds(args: argparse.Namespace, replay: Replay, worker: WorkerProcess, producer, sent,
                      retrain: Retrain | None) -> None:
    """Replay the day until the better version served a whole round (or the retrain ended without one)."""
    while args.rounds is None or replay.rounds < args.rounds:
        retrain_over_before_round = retrain is None or retrain.poll() is not None
        replay.rounds += 1
        replay.sent_in_round = 0
        await send_clicks(producer, worker.settings.clicks_topic, replay.round_clicks(replay.rounds - 1),
                          replay.schedule,
                          sent)
        if retrain_over_before_round and args.rounds is None:
            return
    replay.ended = f"finished: {args.rounds} round(s) replayed"


async def watch(progress: tqdm, stats: OnlineStats, worker: WorkerProcess, view: WorkerView,
                retrain: Retrain | None, started: float, launched: float) -> None:
    """Refresh the status line; fail as soon as the worker dies. Says once when the first suggestion came."""
    last_received, last_time = 0, time.monotonic()
    while True:
        await asyncio.sleep(REFRESH_SECONDS)
        worker.check_alive()
        now = time.monotonic()
        if last_received == 0 and stats.received:
            progress.write(f"first suggestion {stats.first_received - launched:.1f} s after the demo started")
        await asyncio.to_thread(view.read, worker, now - started)
        rate = (stats.received - last_received) / (now - last_time)
        last_received, last_time = stats.received, now
        p50, p99 = stats.latency_percentiles(50, 99)
        line = (f"{view.status()} | {rate:.0f} suggestions/s, p50 {p50 * 1000:.0f} ms p99 {p99 * 1000:.0f} ms"
                + (f" | {retrain.state()}" if retrain else ""))
        progress.set_postfix_str(line)


async def drain(stats: OnlineStats, quiet_seconds: float) -> None:
    """Wait until every click sent has its suggestion, or none came for `quiet_seconds`."""
    last_answered, quiet_since = stats.answered, time.monotonic()
    while stats.answered < stats.sent and time.monotonic() - quiet_since < quiet_seconds:
        await asyncio.sleep(0.1)
        if stats.answered != last_answered:
            last_answered, quiet_since = stats.answered, time.monotonic()


async def until_first(tasks: set[asyncio.Task]) -> None:
    """Wait for the first of `tasks` to end; re-raise its error (a dead worker, a failed send)."""
    done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for task in done:
        task.result()


async def replay_live(args: argparse.Namespace, worker: WorkerProcess, replay: Replay, view: WorkerView,
                      retrain: Retrain | None, launched: float) -> OnlineStats:
    """Send the rounds on schedule while showing the suggestions; Ctrl-C ends it early."""
    stats = OnlineStats()
    interrupted = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, interrupted.set)
    producer, consumer = kafka_producer(worker.settings), suggestion_consumer(worker.settings)
    await producer.start()
    await consumer.start()
    progress = tqdm(unit="click", desc="clicks sent", dynamic_ncols=True)
    started = time.monotonic()

    def sent(click: LoggedClick, sent_at: float) -> None:
        stats.clicked(click, sent_at)
        replay.sent_in_round += 1
        progress.update()

    tasks = {
        asyncio.create_task(receive_suggestions(consumer, stats)),
        watcher := asyncio.create_task(watch(progress, stats, worker, view, retrain, started, launched)),
        interruption := asyncio.create_task(interrupted.wait()),
    }
    try:
        tasks.add(sending := asyncio.create_task(send_rounds(args, replay, worker, producer, sent, retrain)))
        ends = {sending, watcher, interruption}
        if args.duration is not None:
            tasks.add(timer := asyncio.create_task(asyncio.sleep(args.duration)))
            ends.add(timer)
        await until_first(ends)
        if interrupted.is_set():
            replay.ended = "interrupted (Ctrl-C)"
        else:
            if not sending.done():
                replay.ended = f"--duration {args.duration:g} s reached"
            sending.cancel()
            tasks.add(draining := asyncio.create_task(drain(stats, args.drain)))
            await until_first({draining, watcher, interruption})
            if interrupted.is_set():
                replay.ended = "interrupted (Ctrl-C) while waiting for the last suggestions"
        await asyncio.to_thread(view.read, worker, time.monotonic() - started)  # the final figures
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        progress.close()
        loop.remove_signal_handler(signal.SIGINT)
        await producer.stop()
        await consumer.stop()
    return stats


def quality_lines(view: WorkerView, replay: Replay, settings: Settings, round_seconds: float) -> list[str]:
    """Per version: the worker's live hit-rate@20 beside the offline Recall@20, and why they may differ."""
    lines = [f"served quality per version (live: the worker's /metrics, hit-rate@{CUTOFF} of its judged suggestions;"
             f" offline: the artifact's Recall@{CUTOFF} on this day, served policy):"]
    for _, version in view.swaps:
        q = view.versions[version]
        policy = {"true": "excluding", "false": "keeping"}.get(q.exclude_seen or "", "?")
        verdict = ""
        if q.offline_recall is not None and q.judged:
            gap = q.live - q.offline_recall
            verdict = (f"; gap {gap:+.3f}, " + ("within noise" if abs(gap) <= q.noise else "beyond noise")
                       + f" (±{q.noise:.3f}, 2 s.e.)")
        lines.append(f"  {q.line()}, {policy} clicked items{verdict}")
    gaps = []
    if replay.sent_in_round < len(replay.day) or len(view.swaps) > 1:
        gaps.append("a version judged over part of the day (a swap mid-round, or the replay stopped mid-round) "
                    "is measured on those sessions only, the offline figure on the whole day")
    if round_seconds > settings.session_ttl:
        gaps.append(f"a round lasts {round_seconds:.0f} s, longer than the session TTL ({settings.session_ttl:g} s): "
                    "long sessions are cut live, not offline")
    gaps.append("a suggestion is judged by the version that made it, when the session's next click arrives "
                "(a session's last suggestion is never judged, offline neither); clicks on unknown items get the "
                "popularity suggestion and count alike on both sides")
    return lines + [f"  why live and offline can differ: {gap}" for gap in gaps]


def summary(stats: OnlineStats, replay: Replay, view: WorkerView, retrain: Retrain | None, elapsed: float,
            settings: Settings, metrics_url: str) -> str:
    p50, p95, p99 = stats.latency_percentiles(50, 95, 99)
    judged = sum(q.judged for q in view.versions.values())
    not_sent = replay.not_sent if replay.ended.startswith(("interrupted", "--duration")) else 0
    lines = [
        f"ended: {replay.ended}, after {elapsed:.1f} s of replay, {replay.rounds} round(s) of "
        f"{len(replay.day):,} clicks",
        (f"clicks: {stats.sent:,} sent, {not_sent:,} of the last round never sent (stopped early), "
         f"{stats.answered:,} answered by a suggestion, {stats.sent - stats.answered:,} unanswered when it stopped"),
        f"suggestions received: {stats.received:,} ({stats.received - stats.answered:,} repeats, counted once)",
        (f"judged by the worker: {judged:,.0f} of the {stats.sent - stats.sessions:,} clicks sent with a next click "
         f"sent in their session (the rest: the worker had not served that next click when it stopped; "
         f"the {stats.sessions:,} sessions' last clicks have none)"),
        *quality_lines(view, replay, settings, replay.schedule[-1] if replay.schedule else 0.0),
        "versions served: " + ", ".join(f"{v} from {t:.0f} s" for t, v in view.swaps),
    ]
    if retrain is not None:
        lines.append(retrain.state())
    lines += [
        f"click->suggestion latency: p50 {p50 * 1000:.1f} ms, p95 {p95 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms",
        f"worker metrics were served at {metrics_url}; the store: python -m stream_app.artifacts list",
    ]
    return "\n".join(lines)


def wait_serving(worker: WorkerProcess, version: str, timeout: float = 60.0) -> None:
    """Block until the worker serves `version` (its /metrics' model info)."""
    deadline = time.monotonic() + timeout
    view = WorkerView()
    while view.serving != version:
        worker.check_alive()
        if time.monotonic() > deadline:
            raise TimeoutError(f"the worker does not serve {version} after {timeout} s; see {worker.log_file}")
        time.sleep(0.1)
        view.read(worker, 0.0)


def main(argv: list[str] | None = None) -> int:
    unwind_on_sigterm()
    try:
        return run(build_parser().parse_args(argv), time.monotonic())
    except KeyboardInterrupt:  # before the replay started: the with-blocks stopped everything
        print("interrupted before the replay started", file=sys.stderr)
        return 130


def run(args: argparse.Namespace, launched: float) -> int:
    settings = get_settings()
    fixed = fixed_artifact(settings)
    day = held_out_clicks(settings, args.max_clicks)
    replay = Replay(day, speedup_schedule(day, args.speedup))
    args.log_dir.mkdir(parents=True, exist_ok=True)
    store = ArtifactStore.from_settings(settings)
    with EmbeddedBroker(log_file=args.log_dir / "broker.log") as broker:
        fields = {
            **TANSU_WORKER_TUNING,
            **DEMO_WORKER,
            "bootstrap_servers": broker.bootstrap_servers,
            "serving_artifact_dir": fixed,
            "web_port": free_port(),
        }
        env = dict(os.environ) | {"NEXTCLICK_BOOTSTRAP_SERVERS": broker.bootstrap_servers}
        with WorkerProcess(fields, args.log_dir / "worker.log") as worker, contextlib.ExitStack() as stack:
            where = f"serving {fixed} (fixed)" if fixed else f"following the store {store.location}"
            print(f"broker pid {broker.pid} at {broker.bootstrap_servers}, worker pid {worker.process.pid} {where}"
                  f" (log: {worker.log_file})\nmetrics: {worker.metrics_url}", flush=True)
            retrain = None
            if fixed is None:
                command = shlex.join(retrain_command(args.first_version_args)[1:])
                print(f"first version: training a small GRU4Rec on a slice (`{command}`),"
                      f" log {args.log_dir / 'retrain-first.log'}", flush=True)
                first = Retrain("first version", retrain_command(args.first_version_args), env,
                                args.log_dir / "retrain-first.log")
                stack.callback(first.stop)
                if first.wait() != 0:
                    raise SystemExit(f"{first.state()}")
                version = store.current().version
                print(f"first version {version} promoted in {store.location}", flush=True)
            worker.wait_ready()
            if fixed is None:
                wait_serving(worker, version)  # an older current version may have loaded first
            if fixed is None:
                better = f"{BETTER_VERSION_FLAGS} --epochs {args.epochs} {args.retrain_args}"
                print(f"better version: training in the background (`{shlex.join(retrain_command(better)[1:])}`),"
                      f" log {args.log_dir / 'retrain.log'}", flush=True)
                retrain = Retrain("better version", retrain_command(better), env, args.log_dir / "retrain.log",
                                  niceness=10)
                stack.callback(retrain.stop)
            if fixed is None and args.follow:
                print(f"continuous training: an incremental update every {args.follow:,} clicks (`python -m "
                      f"training.follow`), log {args.log_dir / 'follow.log'}", flush=True)
                follower = Retrain("follower", [sys.executable, "-m", "training.follow"],
                                   env | follower_env(args.follow), args.log_dir / "follow.log", niceness=10)
                stack.callback(follower.stop)
            view = WorkerView()
            started = time.monotonic()
            stats = asyncio.run(replay_live(args, worker, replay, view, retrain, launched))
            elapsed = time.monotonic() - started
            if retrain is not None:
                retrain.poll()
    print(summary(stats, replay, view, retrain, elapsed, worker.settings, worker.metrics_url), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
