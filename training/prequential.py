"""`python -m training.prequential`: test, then train, on a time-ordered click log, under several policies.

    python -m training.prequential --dataset yoochoose_rsc15_100k --config configs/gru4rec_yoochoose.toml --epochs 1
    python -m training.prequential --dataset diginetica_srgnn --config configs/gru4rec_diginetica.toml \\
        --slice-clicks 50000 --retrain-every 4
    python -m training.prequential --train clicks_a.tsv --test clicks_b.tsv --policies frozen incremental

The log is cut in two by sessions: the first `--initial-share` trains the first version (a full retrain), the
rest streams in time order in slices (per day, or every `--slice-clicks`). Each slice is first served by every
policy's current version (frozen, retrain, incremental, popularity, vsknn, and the worker's live kNN pipelines:
live-vsknn and blend) through the served protocol, then each policy learns from it. docs/continuous-training.md
("What freshness is worth") says how sessions that cross slices are served and judged, why the live pipelines are
served in stream order, what each policy learns from, and what is reported.

Every flag this command does not define is `training.retrain`'s (the models and their hyper-parameters:
`--models`, `--config`, `--epochs`, `--gru4rec-*`, `--narm-*`, `--dien-*`, `--top-k`, `--threads`, `--device`,
`--lanes`; `--device` is the full retrains', an incremental update trains on the CPU); `--models` defaults to
the models of `--pipeline`. Bad data: one line on stderr, exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import resource
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from stream_app.cli_help import HelpFormatter
from stream_app.inference.blended_scorer import PIPELINE as BLEND
from stream_app.inference.events import Click
from stream_app.inference.live_knn import PIPELINE as VSKNN
from stream_app.inference.live_knn import LiveNeighbours
from stream_app.inference.scoring import PIPELINES, UNMEASURED_EXCLUDE_SEEN, Scorer
from stream_app.inference.served_baseline import ItemVocabulary, ServedBaseline
from stream_app.inference.served_pipeline import ServingPipeline, live_neighbours, served_scorer
from stream_app.inference.served_quality import CUTOFF, ServedMetrics, replayed
from stream_app.inference.sessions import SessionRecommender, SessionState
from stream_app.inference.suggestion import Judgement, SourcedClick, Suggestion, item_hash
from stream_app.settings import REPO_ROOT, Settings, get_settings
from training import retrain
from training.artifact import code_version, new_version, write_retrain_artifact
from training.data.click_log import ClickLog, EncodedSplit, ItemMap, encode_sessions, item_popularity
from training.data.datasets import add_column_arguments, custom_dataset, dataset_files, dataset_names
from training.data.errors import exits_on_data_errors
from training.evaluation.baselines import build_baseline
from training.evaluation.plots import plot_prequential
from training.incremental import DIEN_POLICIES, UpdateBudget, update
from training.model_training import ModelTraining, RetrainData, RetrainPlan, evaluated_models
from training.progress import StageClock

POLICIES = ("frozen", "retrain", "incremental", "popularity", "vsknn", "live-vsknn", "blend")
ARTIFACT_POLICIES = ("frozen", "retrain", "incremental", "live-vsknn", "blend")  # serve artifacts: the first version
STREAM_BATCH = 64  # clicks a live policy serves at once at most: a worker's micro-batch
DEFAULT_SLICE_CLICKS = 50_000  # a log without times
DAY = 86_400.0
# per day: a last day with fewer clicks than this share of the stream's joins the day before (yoochoose_rsc15_100k's
# test file ends 50 minutes into a day: 9 clicks)
STUB_SHARE = 0.01
RESULT, PLOT = "prequential.json", "prequential.png"
# retrain flags that have no meaning here (the replay decides what each version trains on and where it goes)
NOT_HERE = ("tune", "out", "push", "no_promote", "force_promote", "from_topic", "validation", "max_train_sessions",
            "max_test_sessions", "retriever_artifact", "choose_pipeline")  # the replay serves --pipeline


# --- the stream ---

def clicks_of(log: ClickLog, clicks: np.ndarray) -> ClickLog:
    """The clicks of `log` at the (ascending) indices `clicks`: each session's clicks stay together and in order."""
    times = None if log.times is None else log.times[clicks]
    return ClickLog(log.session_ids[clicks], log.item_ids[clicks], times, log.source)


def concatenated(first: ClickLog, second: ClickLog, source: str) -> ClickLog:
    times = None if first.times is None or second.times is None else np.concatenate([first.times, second.times])
    return ClickLog(np.concatenate([first.session_ids, second.session_ids]),
                    np.concatenate([first.item_ids, second.item_ids]), times, source)


def joined(train: ClickLog, test: ClickLog) -> ClickLog:
    """A train and a test log as one log, sessions in the order of their first click (file order without times).
    A test session whose id a train session has too is another session: the test ids get a prefix."""
    if set(np.unique(train.session_ids.astype(str))) & set(np.unique(test.session_ids.astype(str))):
        test = ClickLog(np.char.add("test:", test.session_ids.astype(str)).astype(object), test.item_ids, test.times,
                        test.source)
    log = concatenated(train, test, f"{train.source} + {test.source}")
    if log.times is None:
        return log
    offsets = log.session_offsets()
    order = np.argsort(log.times[offsets[:-1]], kind="stable")
    lengths = np.diff(offsets)[order]
    starts = offsets[:-1][order]
    clicks = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths) + np.arange(lengths.sum())
    return clicks_of(log, clicks)


@dataclass(frozen=True)
class Stream:
    """The part of the log that is replayed: its sessions, the order its clicks arrive in, and the slices."""

    log: ClickLog  # the streamed sessions, each one's clicks together (the `ClickLog` invariant)
    order: np.ndarray  # stream position -> click index in `log`
    bounds: np.ndarray  # slice t is stream positions bounds[t]:bounds[t + 1]
    labels: list[str]  # each slice's name
    slicing: str

    @property
    def n_slices(self) -> int:
        return len(self.bounds) - 1

    @property
    def n_clicks(self) -> int:
        return self.log.n_clicks

    @classmethod
    def of(cls, log: ClickLog, slice_clicks: int | None) -> Stream:
        offsets = log.session_offsets()
        session = np.repeat(np.arange(log.n_sessions), np.diff(offsets))
        position = np.arange(log.n_clicks) - offsets[session]
        n = log.n_clicks
        if log.times is None:
            order = np.arange(n)
        else:  # by time; a tie: the session that started first, then the session's own order
            order = np.lexsort((position, session, log.times))
        if slice_clicks is None and log.times is not None:
            days = np.floor(log.times[order] / DAY).astype(np.int64)
            bounds = np.concatenate([[0], np.flatnonzero(days[1:] != days[:-1]) + 1, [n]])
            if len(bounds) > 2 and n - bounds[-2] < STUB_SHARE * n:  # a last day that barely started: the day before's
                bounds = np.delete(bounds, -2)
            labels = [time.strftime("%Y-%m-%d", time.gmtime(days[b] * DAY)) for b in bounds[:-1]]
            return cls(log, order, bounds, labels, "per day (UTC of the logged times)")
        every = slice_clicks or DEFAULT_SLICE_CLICKS
        bounds = np.unique(np.concatenate([np.arange(0, n, every), [n]]))
        return cls(log, order, bounds, [f"{b:,}" for b in bounds[:-1]], f"every {every:,} clicks")


def initial_and_stream(log: ClickLog, share: float) -> tuple[ClickLog, ClickLog]:
    """The first `share` of the sessions (in the order of their first click) and the rest."""
    n_initial = round(share * log.n_sessions)
    if not 0 < n_initial < log.n_sessions:
        raise ValueError(f"--initial-share {share} of {log.n_sessions:,} sessions leaves no first part or no stream")
    first = np.arange(log.n_sessions) < n_initial
    return log.take_sessions(first), log.take_sessions(~first)


# --- serving a slice through the served protocol ---

@dataclass
class Served:
    """What a policy served in one slice."""

    judgements: list[Judgement]
    clicks: int
    unknown: int  # clicks on items the version did not know (answered by popularity)
    first_suggested: dict[str, int]  # new item -> the first stream position whose suggestion named it
    seconds: float = 0.0  # wall time of serving the slice


@dataclass(frozen=True)
class Spans:
    """The sessions with clicks in one slice and, for each, its first and last + 1 position in the slice."""

    sessions: np.ndarray
    starts: np.ndarray
    ends: np.ndarray


class Replay:
    """The stream, indexed for serving: every session's items, each click's session, position and stream position."""

    def __init__(self, stream: Stream, new_items: set[str]) -> None:
        self.stream = stream
        log = stream.log
        self.sessions = log.sessions_as_ids()
        self.offsets = log.session_offsets()
        self.session_of = np.repeat(np.arange(log.n_sessions), np.diff(self.offsets))
        self.position = np.arange(log.n_clicks) - self.offsets[self.session_of]
        self.stream_position = np.empty(log.n_clicks, dtype=np.int64)
        self.stream_position[stream.order] = np.arange(log.n_clicks)
        self.new_items = new_items

    def spans(self, t: int) -> Spans:
        clicks = self.stream.order[self.stream.bounds[t]:self.stream.bounds[t + 1]]
        sessions, inverse = np.unique(self.session_of[clicks], return_inverse=True)
        starts = np.full(len(sessions), np.iinfo(np.int64).max)
        ends = np.zeros(len(sessions), dtype=np.int64)
        np.minimum.at(starts, inverse, self.position[clicks])
        np.maximum.at(ends, inverse, self.position[clicks] + 1)
        return Spans(sessions, starts, ends)

    def serve(self, recommender: SessionRecommender, spans: Spans) -> Served:
        """The slice served by `recommender` (see the module docstring): each session replayed from its first click
        to its last in the slice; the suggestions answering the slice's clicks judged by each one's next click."""
        labels = labels_of(recommender)
        prefixes = [self.sessions[s][:end] for s, end in zip(spans.sessions, spans.ends)]
        served = Served([], 0, 0, {})
        row = 0
        for chunk, result in replayed(recommender, prefixes):
            position = 0  # of the chunk's first click among the result's suggestions
            for prefix in chunk:
                s, start = int(spans.sessions[row]), int(spans.starts[row])
                for p in range(start, len(prefix)):
                    self.count(served, result.suggestions[position + p], s, p, labels)
                position += len(prefix)
                row += 1
        return served

    def serve_in_stream_order(self, t: int, served_by: dict[str, tuple[SessionRecommender, dict]],
                              neighbours: LiveNeighbours) -> dict[str, Served]:
        """Slice t served as a worker serves it, by each of `served_by` (name -> its recommender and session table,
        which carries each session's state across slices and versions): the clicks in stream order, in batches
        of consecutive ones (`stream_batches`), each batch indexed into `neighbours` just before it is served, as a
        worker indexes it; every suggestion judged by its session's next click, as `serve` judges it."""
        served = {name: Served([], 0, 0, {}) for name in served_by}
        for batch in self.stream_batches(t):
            sessions, positions = self.session_of[batch], self.position[batch]
            clicks = [SourcedClick(Click(str(s), item, 0.0), partition=0, offset=int(at)) for s, item, at in
                      zip(sessions.tolist(), self.stream.log.item_ids[batch].astype(str).tolist(),
                          self.stream_position[batch])]
            ended = [click.click.session_id.encode() for click, s, p in zip(clicks, sessions, positions)
                     if p + 1 == len(self.sessions[s])]
            for click in clicks:
                neighbours.observe(click.click.session_id, click.click.item_id)
            for name, (recommender, table) in served_by.items():
                started = time.monotonic()
                result = recommender.recommend(clicks, table, now=0.0)
                table.update(result.states)
                for key in ended:  # its last click: no state is read again
                    del table[key]
                labels = labels_of(recommender)
                for suggestion, s, p in zip(result.suggestions, sessions.tolist(), positions.tolist()):
                    self.count(served[name], suggestion, s, p, labels)
                served[name].seconds += time.monotonic() - started
        return served

    def stream_batches(self, t: int) -> Iterator[np.ndarray]:
        """Slice t's clicks (indices in the log) in stream order, in runs of at most `STREAM_BATCH` consecutive
        ones, a run cut before a second click of one session: each click is served before the next click of its
        session arrives, as in a worker whose batches are what has arrived."""
        batch: list[int] = []
        sessions: set[int] = set()
        for click in self.stream.order[self.stream.bounds[t]:self.stream.bounds[t + 1]].tolist():
            session = int(self.session_of[click])
            if len(batch) == STREAM_BATCH or session in sessions:
                yield np.array(batch)
                batch, sessions = [], set()
            batch.append(click)
            sessions.add(session)
        if batch:
            yield np.array(batch)

    def count(self, served: Served, suggestion: Suggestion, s: int, p: int, labels: tuple[str, str, str]) -> None:
        """The suggestion answering click p of session s: a served click (an unknown one when it is the popularity
        answer), judged by the session's click p + 1, and the first to name the new items it names."""
        session = self.sessions[s]
        served.clicks += 1
        served.unknown += suggestion.source == "popularity"
        if p + 1 < len(session):
            served.judgements.append(Judgement.of([item_hash(item) for item in suggestion.items], session[p + 1],
                                                  labels))
        if self.new_items:
            at = int(self.stream_position[self.offsets[s] + p])
            for item in suggestion.items:
                if item in self.new_items and at < served.first_suggested.get(item, math.inf):
                    served.first_suggested[item] = at


def labels_of(recommender: SessionRecommender) -> tuple[str, str, str]:
    """What a judgement of its suggestions is labelled with: pipeline, version and variant."""
    return recommender.scorer.name, recommender.scorer.version, recommender.variant


# --- the policies ---

def cpu_seconds() -> float:
    """User + system CPU seconds of this process (every thread) and its waited-for children."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@contextlib.contextmanager
def quiet(log_file: Path) -> Iterator[None]:
    """Training's own lines (epochs, stages, tables) go to `log_file`, not between the progress bar's updates."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("a") as log, contextlib.redirect_stdout(log):
        yield


def full_retrain(plan: RetrainPlan, log: ClickLog, out: Path, name: str) -> Path:
    """A full retrain of `plan` on `log` into the artifact `out`: `training.retrain`'s training
    (`ModelTraining`) and artifact (`write_retrain_artifact`), with no test log (the replay judges it)."""
    none = log.take_sessions(np.zeros(log.n_sessions, dtype=bool))
    data = RetrainData(name, "none (judged by training.prequential)", log, none, EncodedSplit.of(log, none))
    clock = StageClock()
    trained_by, version = code_version(), new_version()
    trained = ModelTraining(plan, data.split, clock).run()
    rows = evaluated_models(trained, data.split, clock)
    write_retrain_artifact(out, version=version, trained_by=trained_by, plan=plan, data=data, trained=trained,
                           rows=rows, clock=clock)
    return out


@dataclass
class Policy:
    """One way of keeping a version current: what serves now, and what learning from a slice makes of it."""

    name: str
    version: str = "initial"  # this run's name of the version serving now
    initial_cpu: float = 0.0  # the first version's training (the first part), shared by the artifact policies
    training_cpu: float = 0.0  # every later version's
    training_wall: float = 0.0
    versions: int = 0  # versions made after the first
    judgements: list[Judgement] = field(default_factory=list)
    clicks: int = 0
    unknown: int = 0
    first_suggested: dict[str, int] = field(default_factory=dict)
    slices: list[dict] = field(default_factory=list)

    def recommender(self, settings: Settings, exclude_seen: bool) -> SessionRecommender:
        """The worker's recommender as `served_top_k_metrics` builds it, on the version serving now."""
        return SessionRecommender.from_settings(self.scorer(), settings, top_k=CUTOFF, session_ttl=math.inf,
                                                exclude_seen=exclude_seen)

    def scorer(self) -> Scorer:
        raise NotImplementedError

    def due(self, t: int) -> bool:
        """Whether it learns after slice t (0-based)."""
        return True

    def learn(self, run: PrequentialRun, t: int) -> None:
        raise NotImplementedError

    def record(self, served: Served, label: str, cpu: float, wall: float) -> None:
        figures = ServedMetrics.of(self.version, served.judgements)
        self.judgements += served.judgements
        self.clicks += served.clicks
        self.unknown += served.unknown
        for item, at in served.first_suggested.items():
            self.first_suggested.setdefault(item, at)
        self.slices.append({
            "slice": label, "version": self.version, f"hit_rate@{CUTOFF}": figures.recall,
            f"mrr@{CUTOFF}": figures.mrr, "predictions": figures.predictions, "clicks": served.clicks,
            "unknown_clicks": served.unknown, "unknown_share": served.unknown / served.clicks if served.clicks else 0.0,
            "serving_wall_seconds": round(served.seconds, 2), "training_cpu_seconds_after": round(cpu, 2),
            "training_wall_seconds_after": round(wall, 2),
        })


@dataclass
class ArtifactPolicy(Policy):
    """A policy whose versions are artifacts (frozen, retrain, incremental), served through their `Scorer`."""

    directory: Path | None = None
    pipeline: str = "gru4rec"
    every: int = 0  # learns after every `every` slices; 0: never
    keep_versions: bool = False
    made: list[Path] = field(default_factory=list)
    _scorer: Scorer | None = None

    def scorer(self) -> Scorer:
        if self._scorer is None or self._scorer.artifact_dir != self.directory:
            self._scorer = Scorer(self.directory, pipeline=self.pipeline)
        return self._scorer

    def due(self, t: int) -> bool:
        return self.every > 0 and (t + 1) % self.every == 0

    def adopt(self, directory: Path, version: str) -> None:
        if self.made and not self.keep_versions:
            shutil.rmtree(self.made[-1], ignore_errors=True)
        self.made.append(directory)
        self.directory, self.version = directory, version
        self.versions += 1


class Frozen(ArtifactPolicy):
    def learn(self, run: PrequentialRun, t: int) -> None:  # never due
        pass


class Retrain(ArtifactPolicy):
    def learn(self, run: PrequentialRun, t: int) -> None:
        out = run.out / "versions" / self.name / f"after-slice-{t}"
        with quiet(run.out / "logs" / f"{self.name}-after-slice-{t}.log"):
            full_retrain(run.plan, run.seen(t), out, f"{run.name}: every click up to slice {t}")
        self.adopt(out, f"retrain@{t}")


@dataclass
class Incremental(ArtifactPolicy):
    budget: UpdateBudget = field(default_factory=UpdateBudget)
    since: int = 0  # the first stream position its current version has not trained on

    def learn(self, run: PrequentialRun, t: int) -> None:
        end = int(run.stream.bounds[t + 1])
        new = clicks_of(run.stream.log, np.sort(run.stream.order[self.since:end]))
        out = run.out / "versions" / self.name / f"after-slice-{t}"
        span = new.time_range()
        cutoff = {"stream_positions": [self.since, end], "until": None if span is None else span[1]}
        with quiet(run.out / "logs" / f"{self.name}-after-slice-{t}.log"):
            update(self.directory, new, out, budget=self.budget, cutoff=cutoff)
        self.since = end
        self.adopt(out, f"incremental@{t}")


@dataclass
class Rebuilt(Policy):
    """Popularity or V-SKNN, rebuilt after every slice from every click seen so far."""

    baseline: str | None = None  # None: popularity; else a `training.evaluation.baselines` name
    params: object = None
    window: int = 0
    graph_top_k: int = 100
    _scorer: ServedBaseline | None = None

    def scorer(self) -> ServedBaseline:
        return self._scorer

    def build(self, log: ClickLog, version: str) -> None:
        item_map = ItemMap.fit(log.item_ids)
        sessions = encode_sessions(log, item_map)
        popularity = item_popularity(sessions, len(item_map))
        model = None if self.baseline is None else build_baseline(self.baseline, self.params, sessions,
                                                                  len(item_map))
        self._scorer = ServedBaseline(self.name, version, ItemVocabulary(item_map.ids), popularity, model,
                                      self.window, self.graph_top_k)
        self.version = version

    def learn(self, run: PrequentialRun, t: int) -> None:
        self.build(run.seen(t), f"{self.name}@{t}")
        self.versions += 1


@dataclass
class Live(Policy):
    """A kNN pipeline served as a worker serves it (`live-vsknn`: V-SKNN; `blend`: fused with a neural version):
    over the live index, which learns each stream click once it is served, the clicks served in stream order
    (`Replay.serve_in_stream_order`); the artifact serving is the current version of the policy it follows."""

    chosen: ServingPipeline | None = None
    follows: ArtifactPolicy | None = None
    neighbours: LiveNeighbours | None = None  # shared by the live policies: they index the same clicks
    settings: Settings | None = None
    table: dict[bytes, SessionState] = field(default_factory=dict)  # kept across slices, as a worker's
    _scorer: Scorer | None = None
    _directory: Path | None = None

    def scorer(self) -> Scorer:
        """The worker's scorer of the followed version; a new version is a hot swap: the table stays, and each
        session's state is rebuilt from its kept clicks at its next click (`SessionRecommender`)."""
        if self._directory != self.follows.directory:
            if self._directory is not None:
                self.versions += 1
            self._scorer = served_scorer(self.follows.directory, self.settings, self.neighbours, self.chosen)
            self._directory, self.version = self.follows.directory, self.follows.version
        return self._scorer

    def due(self, t: int) -> bool:
        """Never: the index learns as it serves, and the versions are the followed policy's."""
        return False

    def serving(self) -> dict:
        """What the record says it served: the pipeline, whose versions, how, and the index's settings."""
        index = {"sessions": self.neighbours.index.capacity} | dataclasses.asdict(self.neighbours.model.params)
        return {"pipeline": self.chosen.describe(), "artifact_versions_of": self.follows.name, "index": index,
                "served": f"in stream order, batches of up to {STREAM_BATCH} clicks, each indexed once served"}


def index_first_part(neighbours: LiveNeighbours, initial: ClickLog) -> None:
    """The first part's clicks into the live index, session after session (in the order of their first click:
    the index numbers them as a worker that read them from the clicks topic does)."""
    for number, session in enumerate(initial.sessions_as_ids()):
        for item in session:
            neighbours.observe(f"first:{number}", item)


# --- the run ---

@dataclass
class PrequentialRun:
    name: str
    initial: ClickLog
    stream: Stream
    plan: RetrainPlan
    policies: list[Policy]
    out: Path
    settings: Settings
    exclude_seen: bool
    record: dict
    progress: bool = True
    _seen: tuple[int, ClickLog] | None = None

    def seen(self, t: int) -> ClickLog:
        """Every click up to the end of slice t: the first part, then the stream's clicks so far."""
        if self._seen is None or self._seen[0] != t:
            end = int(self.stream.bounds[t + 1])
            streamed = clicks_of(self.stream.log, np.sort(self.stream.order[:end]))
            self._seen = (t, concatenated(self.initial, streamed, f"{self.name}: up to slice {t}"))
        return self._seen[1]

    def run(self) -> dict:
        new_items = NewItems.of(self.stream, set(np.unique(self.initial.item_ids.astype(str)).tolist()))
        replay = Replay(self.stream, set(new_items.first))
        self.record["stream"]["new_items"] = len(new_items.first)
        live = [policy for policy in self.policies if isinstance(policy, Live)]
        bar = tqdm(range(self.stream.n_slices), desc="slices", unit="slice", disable=not self.progress)
        for t in bar:
            spans = replay.spans(t)
            label = self.stream.labels[t]
            last = t == self.stream.n_slices - 1
            served = {}
            for policy in self.policies:
                if not isinstance(policy, Live):
                    started = time.monotonic()
                    served[policy.name] = replay.serve(policy.recommender(self.settings, self.exclude_seen), spans)
                    served[policy.name].seconds = time.monotonic() - started
            if live:
                served |= replay.serve_in_stream_order(
                    t, {p.name: (p.recommender(self.settings, self.exclude_seen), p.table) for p in live},
                    live[0].neighbours)
            for policy in self.policies:
                cpu = wall = 0.0
                if not last and policy.due(t):
                    started_cpu, started_wall = cpu_seconds(), time.monotonic()
                    policy.learn(self, t)
                    cpu, wall = cpu_seconds() - started_cpu, time.monotonic() - started_wall
                    policy.training_cpu += cpu
                    policy.training_wall += wall
                policy.record(served[policy.name], label, cpu, wall)
            bar.set_postfix({p.name: f"{p.slices[-1][f'hit_rate@{CUTOFF}']:.3f}" for p in self.policies})
            start, end = int(self.stream.bounds[t]), int(self.stream.bounds[t + 1])
            self.record["slices"].append({
                "slice": label, "clicks": end - start, "sessions": len(spans.sessions),
                "new_items_first_clicked": sum(1 for at in new_items.first.values() if start <= at < end),
            })
            self.write(new_items, reached=end, plot=last)
        return self.record

    def write(self, new_items: NewItems, reached: int, plot: bool = False) -> None:
        self.record["policies"] = {p.name: self.figures(p, new_items, reached) for p in self.policies}
        for policy in self.policies:  # where the stream's new items stand at the slice's end
            policy.slices[-1]["new_items_so_far"] = self.record["policies"][policy.name]["new_items"]
        (self.out / RESULT).write_text(json.dumps(self.record, indent=1))
        if plot:
            plot_prequential(self.record, self.out / PLOT, f"prequential replay of {self.name}")

    def figures(self, policy: Policy, new_items: NewItems, reached: int) -> dict:
        overall = ServedMetrics.of(policy.version, policy.judgements)
        serving = {"serving": policy.serving()} if isinstance(policy, Live) else {}
        return serving | {
            "overall": {f"hit_rate@{CUTOFF}": overall.recall, f"mrr@{CUTOFF}": overall.mrr,
                        "predictions": overall.predictions, "clicks": policy.clicks, "unknown_clicks": policy.unknown,
                        "unknown_share": policy.unknown / policy.clicks if policy.clicks else 0.0},
            "training": {"cpu_seconds": round(policy.training_cpu, 2), "wall_seconds": round(policy.training_wall, 2),
                         "versions": policy.versions, "initial_cpu_seconds": round(policy.initial_cpu, 2)},
            "new_items": new_items.figures(policy.first_suggested, reached, self.stream),
            "slices": policy.slices,
        }


@dataclass(frozen=True)
class NewItems:
    """The items first clicked in the stream (unknown to the first part): where each one's clicks are."""

    first: dict[str, int]  # item -> the stream position of its first click
    positions: dict[str, np.ndarray]  # item -> the stream positions of its clicks, ascending

    @classmethod
    def of(cls, stream: Stream, known: set[str]) -> NewItems:
        items = stream.log.item_ids.astype(str)[stream.order]
        new = np.fromiter((item not in known for item in items), dtype=bool, count=len(items))
        at = np.flatnonzero(new)
        codes, uniques = pd.factorize(items[new])  # in order of first click
        grouped = np.split(at[np.argsort(codes, kind="stable")], np.cumsum(np.bincount(codes))[:-1]) \
            if len(at) else []
        positions = {str(item): clicks for item, clicks in zip(uniques, grouped)}
        return cls({item: int(clicks[0]) for item, clicks in positions.items()}, positions)

    def figures(self, first_suggested: dict[str, int], reached: int, stream: Stream) -> dict:
        """For the items first clicked before stream position `reached`: how many a suggestion named, how many it
        never did, and for those it did, the stream clicks (their own clicks; hours) from the first click to it."""
        clicked = [item for item, at in self.first.items() if at < reached]
        suggested = [item for item in clicked if item in first_suggested]
        figures = {"items": len(clicked), "suggested": len(suggested), "never_suggested": len(clicked) - len(suggested)}
        if not suggested:
            return figures
        until = np.array([first_suggested[item] for item in suggested])
        first = np.array([self.first[item] for item in suggested])
        own = np.array([np.searchsorted(self.positions[item], first_suggested[item]) for item in suggested])
        figures |= {"stream_clicks_until_suggested": summary(until - first),
                    "own_clicks_until_suggested": summary(own)}
        if stream.log.times is not None:
            at = stream.log.times[stream.order]
            figures["hours_until_suggested"] = summary((at[until] - at[first]) / 3600)
        return figures


def summary(values: np.ndarray) -> dict:
    return {"median": float(np.median(values)), "mean": float(np.mean(values))}


# --- the command line ---

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training.prequential", description=__doc__,
                                     formatter_class=HelpFormatter, allow_abbrev=False)
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", choices=dataset_names(), default="yoochoose_rsc15_100k",
                      help="a data set under NEXTCLICK_DATA_DIR: its train and test files as one stream")
    data.add_argument("--train", type=Path, help="your own first click log (CSV/TSV/Parquet or session pickle)")
    data.add_argument("--test", type=Path, help="your own second click log, after the first in time")
    add_column_arguments(data)
    data.add_argument("--max-sessions", type=int, help="replay only the first N sessions of the log (smoke runs)")

    replay = parser.add_argument_group("the replay")
    replay.add_argument("--initial-share", type=float, default=0.5,
                        help="the first version trains on this share of the sessions (default: %(default)s)")
    replay.add_argument("--slice-clicks", type=int,
                        help=f"a slice every N stream clicks (default: per day when the log has times, else "
                             f"{DEFAULT_SLICE_CLICKS:,})")
    replay.add_argument("--policies", nargs="+", choices=POLICIES, default=list(POLICIES),
                        help="which policies to replay")
    replay.add_argument("--retrain-every", type=int, default=1, metavar="K",
                        help="retrain: a full retrain after every K slices (default: %(default)s)")
    replay.add_argument("--incremental-every", type=int, default=1, metavar="M",
                        help="incremental: an update after every M slices; 0: never (default: %(default)s)")
    replay.add_argument("--update-epochs", type=int, default=get_settings().follow_epochs,
                        help="incremental: passes over an update's sessions (default: NEXTCLICK_FOLLOW_EPOCHS, "
                             "%(default)s)")
    replay.add_argument("--replay-ratio", type=float, default=get_settings().follow_replay_ratio,
                        help="incremental: replayed older sessions per new one (default: "
                             "NEXTCLICK_FOLLOW_REPLAY_RATIO, %(default)s)")
    replay.add_argument("--update-dien", choices=DIEN_POLICIES, default=get_settings().follow_dien,
                        help="incremental: DIEN kept or fine-tuned (default: NEXTCLICK_FOLLOW_DIEN, %(default)s)")
    replay.add_argument("--blend-weight", type=float, default=0.5, metavar="W",
                        help="blend: the neural weight, in [0, 1] (default: %(default)s; `training.retrain "
                             "--choose-pipeline` picks it on validation)")
    replay.add_argument("--pipeline", choices=PIPELINES, default="gru4rec",
                        help="what the artifacts serve (default: %(default)s)")
    replay.add_argument("--exclude-seen", choices=("true", "false"),
                        default="true" if UNMEASURED_EXCLUDE_SEEN else "false",
                        help="leave a session's clicked items out of its suggestions, for every policy "
                             "(default: %(default)s)")

    out = parser.add_argument_group("output")
    out.add_argument("--out", type=Path, help="the result, plot, logs and versions (default: "
                     "runs/prequential/<data>-<time>)")
    out.add_argument("--keep-versions", action="store_true", help="keep every version's artifact, not just the "
                     "current ones")
    out.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.epilog = ("Every other flag is training.retrain's: the models and their hyper-parameters (--models, "
                     "--config, --epochs, --gru4rec-*, --narm-*, --dien-*, --top-k, --threads, --device, --lanes).")
    return parser


def retrain_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace,
                      rest: list[str]) -> argparse.Namespace:
    """`training.retrain`'s flags among `rest` (its parser checks them); `--models` defaults to the pipeline's."""
    if not any(flag == "--models" or flag.startswith("--models=") for flag in rest):
        rest = ["--models", *args.pipeline.split("+"), *rest]
    flags = retrain.build_parser()
    flags.prog = parser.prog
    found = flags.parse_args(rest)
    defaults = flags.parse_args([])
    used = [name for name in NOT_HERE if getattr(found, name) != getattr(defaults, name)]
    if used:
        parser.error(f"{', '.join('--' + name.replace('_', '-') for name in used)}: training.retrain's, not here")
    missing = [model for model in args.pipeline.split("+") if model not in found.models]
    if missing:
        parser.error(f"--pipeline {args.pipeline} serves {', '.join(missing)}: add it to --models")
    return found


def read_log(parser: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[ClickLog, str]:
    if args.train or args.test:
        if not (args.train and args.test):
            parser.error("--train and --test go together")
        spec = custom_dataset(args.train, args.test, session_key=args.session_key, item_key=args.item_key,
                              time_key=args.time_key)
        name = spec.name
    else:
        spec = name = args.dataset
    files = dataset_files(spec)
    log = joined(files.read_train(), files.read_test())
    return (log.head_sessions(args.max_sessions) if args.max_sessions else log), name


def make_policies(args: argparse.Namespace, flags: argparse.Namespace, initial_dir: Path,
                  settings: Settings) -> list[Policy]:
    """The policies of `--policies`. The live ones share one index; `live-vsknn` serves with the first version (its
    version and popular items), `blend` with incremental's versions, or the first where incremental is not run."""
    made: dict[str, Policy] = {
        "frozen": Frozen("frozen", directory=initial_dir, pipeline=args.pipeline),
        "retrain": Retrain("retrain", directory=initial_dir, pipeline=args.pipeline, every=args.retrain_every,
                           keep_versions=args.keep_versions),
        "incremental": Incremental("incremental", directory=initial_dir, pipeline=args.pipeline,
                                   every=args.incremental_every, keep_versions=args.keep_versions,
                                   budget=UpdateBudget(epochs=args.update_epochs, replay_ratio=args.replay_ratio,
                                                       dien=args.update_dien)),
        "popularity": Rebuilt("popularity", graph_top_k=flags.top_k),
        "vsknn": Rebuilt("vsknn", baseline="vsknn", params=retrain.training_params("vsknn", flags.config),
                         window=settings.max_history + 1, graph_top_k=flags.top_k),
    }
    if {"live-vsknn", "blend"} & set(args.policies):  # the index holds `NEXTCLICK_KNN_SESSIONS` slots
        neighbours = live_neighbours(settings)
        made["live-vsknn"] = Live("live-vsknn", chosen=ServingPipeline(VSKNN), follows=made["frozen"],
                                  neighbours=neighbours, settings=settings)
        made["blend"] = Live("blend", chosen=ServingPipeline(BLEND, retriever=args.pipeline,
                                                             weight=args.blend_weight),
                             follows=made["incremental" if "incremental" in args.policies else "frozen"],
                             neighbours=neighbours, settings=settings)
    return [made[name] for name in args.policies]


def format_result(record: dict) -> str:
    lines = [f"{'policy':<12} {'hit@20':>7} {'mrr@20':>7} {'unknown':>8} {'train CPU s':>11} {'versions':>8}  "
             "new items: suggested / never, median stream clicks until"]
    for name, entry in record["policies"].items():
        overall, training, new = entry["overall"], entry["training"], entry["new_items"]
        wait = new.get("stream_clicks_until_suggested", {}).get("median")
        lines.append(f"{name:<12} {overall[f'hit_rate@{CUTOFF}']:>7.4f} {overall[f'mrr@{CUTOFF}']:>7.4f} "
                     f"{overall['unknown_share']:>8.4f} {training['cpu_seconds']:>11,.1f} {training['versions']:>8}  "
                     f"{new['suggested']:,} / {new['never_suggested']:,}"
                     + (f", {wait:,.0f}" if wait is not None else ""))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    """Replay, print the overall figures, write the result and the plot; the result. Bad data: exit status 2."""
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if not 0 < args.initial_share < 1:
        parser.error("--initial-share is a share of the sessions, between 0 and 1")
    if args.slice_clicks is not None and args.slice_clicks < 1:
        parser.error("--slice-clicks must be at least 1")
    if args.retrain_every < 1 or args.incremental_every < 0:
        parser.error("--retrain-every must be at least 1, --incremental-every at least 0")
    if not 0 <= args.blend_weight <= 1:
        parser.error("--blend-weight is the neural weight, between 0 and 1")
    flags = retrain_arguments(parser, args, rest)
    if flags.threads:
        torch.set_num_threads(flags.threads)
    plan = dataclasses.replace(retrain.plan_from_args(flags, baselines={}), progress=False)
    if retrain.chosen_on_validation(plan.params):
        parser.error("--dien-retriever auto: training.retrain's, not here (name DIEN's retriever)")
    settings = get_settings()
    with exits_on_data_errors(parser):
        log, name = read_log(parser, args)
        try:
            initial, streamed = initial_and_stream(log, args.initial_share)
        except ValueError as e:
            parser.error(str(e))
    stream = Stream.of(streamed, args.slice_clicks)
    out = args.out or REPO_ROOT / "runs" / "prequential" / f"{name.replace(':', '-')}-{new_version()}"
    out.mkdir(parents=True, exist_ok=True)
    print(f"{name}: first part {initial.n_sessions:,} sessions / {initial.n_clicks:,} clicks; stream "
          f"{streamed.n_sessions:,} sessions / {streamed.n_clicks:,} clicks in {stream.n_slices} slices "
          f"({stream.slicing}); policies {', '.join(args.policies)}; results in {out}", flush=True)

    started_cpu, started_wall = cpu_seconds(), time.monotonic()
    initial_dir = out / "initial"
    needs_models = any(p in args.policies for p in ARTIFACT_POLICIES)
    if needs_models:
        with quiet(out / "logs" / "initial.log"):
            full_retrain(plan, initial, initial_dir, f"{name}: first {args.initial_share:g} of the sessions")
    initial_cpu, initial_wall = cpu_seconds() - started_cpu, time.monotonic() - started_wall
    policies = make_policies(args, flags, initial_dir, settings)
    live = [policy for policy in policies if isinstance(policy, Live)]
    started = cpu_seconds()
    if live:
        index_first_part(live[0].neighbours, initial)
    indexing_cpu = cpu_seconds() - started
    for policy in policies:
        if isinstance(policy, Rebuilt):
            started = cpu_seconds()
            policy.build(initial, f"{policy.name}@initial")
            policy.initial_cpu = cpu_seconds() - started
        else:
            policy.initial_cpu = initial_cpu + (indexing_cpu if isinstance(policy, Live) else 0.0)
    record = {
        "data": name, "protocol": ("prequential: each stream click served by the version current when it arrives "
                                   "(the served protocol: the worker's SessionRecommender, top 20), its suggestion "
                                   "judged by the session's next click; see training/prequential.py"),
        "cutoff": CUTOFF, "exclude_seen": args.exclude_seen == "true", "pipeline": args.pipeline,
        "flags": {"prequential": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                  "retrain": rest},
        "initial": {"sessions": initial.n_sessions, "clicks": initial.n_clicks,
                    "items": int(len(np.unique(initial.item_ids.astype(str)))),
                    "training_cpu_seconds": round(initial_cpu, 2), "training_wall_seconds": round(initial_wall, 2),
                    "time_range": initial.time_range()},
        "stream": {"sessions": streamed.n_sessions, "clicks": streamed.n_clicks, "slices": stream.n_slices,
                   "slicing": stream.slicing, "time_range": streamed.time_range()},
        "threads": torch.get_num_threads(),
        "slices": [],
    }
    run = PrequentialRun(name, initial, stream, plan, policies, out, settings, args.exclude_seen == "true", record,
                         progress=not args.no_progress)
    result = run.run()
    print("\n" + format_result(result))
    print(f"\n{out / RESULT}\n{out / PLOT}")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
