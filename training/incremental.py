"""An incremental update: the current version, warm-started, grown by the items first seen since its cut-off,
and trained a bounded budget on the new clicks mixed with a replay sample of older sessions.

    parent artifact (checkpoints, item ids, popularity, replay sample, cut-off)
      + the clicks after its cut-off
      -> the item map grown (known items keep their index; new ones appended in order of first click)
      -> each model's checkpoint grown (`models.checkpoint.grown`: new rows from co-clicked items' rows)
      -> GRU4Rec and NARM trained `epochs` over the new sessions and a replay sample of older ones, shuffled,
         with the parent's hyper-parameters; DIEN kept (grown, not trained) or, with `dien="fine-tune"`,
         trained `epochs` on the new sessions alone, re-ranking the parent retriever's top-N for them (a
         retriever that never saw them, as stacking gives a full retrain's DIEN)
      -> a new artifact whose lineage names the parent and the new cut-off.

The replay sample is what keeps the model from forgetting: each artifact carries up to `replay_keep` sessions
(`replay.json`), a uniform sample of every session its lineage trained on (a reservoir merged per update).
Why and what it is worth: docs/continuous-training.md.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from models.checkpoint import Checkpoint, grown, load_checkpoint, save_checkpoint
from models.export import export_dien
from stream_app.inference.artifact_format import (
    CONFIG,
    ITEM_IDS,
    METRICS,
    POPULARITY,
    REPLAY,
    verify_artifact,
    weights_file,
)
from stream_app.inference.served_quality import served_evaluation
from stream_app.settings import Settings
from training.artifact import REPLAY_KEEP, code_version, merged_replay, new_version, write_artifact_metadata
from training.data.click_log import ClickLog, ItemMap, Sessions, encode_sessions, item_popularity
from training.evaluation.evaluate import retrieve
from training.model_training import retriever_scores
from training.retriever_files import GRAPHS, export_retriever
from training.trainers.dien import DIENTraining, train_dien
from training.trainers.gru4rec import GRU4RecTrainer, GRU4RecTraining
from training.trainers.narm import NARMTraining, train_narm

TRAINED = {"gru4rec": GRU4RecTraining, "narm": NARMTraining}  # updated by training; DIEN by the budget's `dien`
PARAMS = TRAINED | {"dien": DIENTraining}
DIEN_POLICIES = ("keep", "fine-tune")


@dataclass(frozen=True)
class UpdateBudget:
    epochs: int = 1  # passes over the update's sessions (new and replayed)
    replay_ratio: float = 1.0  # replayed older sessions per new session
    replay_keep: int = REPLAY_KEEP  # sessions the new artifact keeps for later updates' replay
    seed: int = 0
    dien: str = "keep"  # the re-ranker: "keep" (grown only) or "fine-tune" (docs/continuous-training.md)

    def __post_init__(self) -> None:
        if self.dien not in DIEN_POLICIES:
            raise ValueError(f"dien must be one of {', '.join(DIEN_POLICIES)}, got {self.dien!r}")


@dataclass(frozen=True)
class Parent:
    """What an update reads from the version it continues."""

    directory: Path
    manifest: dict
    item_ids: list[str]
    popularity: np.ndarray
    config: dict
    replay: dict

    @classmethod
    def load(cls, directory: Path) -> Parent:
        manifest = verify_artifact(directory)
        replay = directory / REPLAY
        return cls(directory, manifest, json.loads((directory / ITEM_IDS).read_text()),
                   np.load(directory / POPULARITY), json.loads((directory / CONFIG).read_text()),
                   json.loads(replay.read_text()) if replay.is_file() else {"seen": 0, "sessions": []})

    def checkpoint(self, name: str) -> Checkpoint:
        entry = self.manifest["models"][name]
        if "weights" not in entry:
            raise ValueError(f"{self.directory}: {name} has no checkpoint to continue from (trained before they "
                             "were kept); a full retrain makes one")
        return load_checkpoint(self.directory / entry["weights"])


@dataclass(frozen=True)
class Update:
    """One update's result: the artifact and what went into it."""

    directory: Path
    version: str
    new_clicks: int
    new_sessions: int
    new_items: int
    replayed_sessions: int
    seconds: float


def grown_item_map(known: Sequence[str], log: ClickLog) -> ItemMap:
    """The known items at their indices, then the log's new items in order of first click."""
    known_map = ItemMap(list(known))
    fresh = ItemMap.fit(log.item_ids)
    return ItemMap([*known, *fresh.ids[known_map.encode(fresh.ids) < 0]])


def co_clicked(sessions: Sessions, n_known: int, n_items: int) -> list[np.ndarray]:
    """For each new item (index >= n_known), the known items clicked in the same sessions: where its row starts."""
    neighbours: list[set[int]] = [set() for _ in range(n_items - n_known)]
    for start, end in zip(sessions.offsets[:-1], sessions.offsets[1:]):
        items = sessions.items[start:end]
        known = {int(i) for i in items if i < n_known}
        for item in items[items >= n_known]:
            neighbours[item - n_known] |= known
    return [np.fromiter(sorted(found), dtype=np.int64) for found in neighbours]


def shuffled(parts: list[Sessions], rng: np.random.Generator) -> Sessions:
    """The sessions of `parts` in a random order: replayed and new sessions mixed through the epoch."""
    joined = Sessions.concat(parts)
    order = rng.permutation(joined.n_sessions)
    lengths = joined.lengths()[order]
    items = np.concatenate([joined.items[joined.offsets[s]:joined.offsets[s + 1]] for s in order]) \
        if len(order) else joined.items
    return Sessions(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64), items, joined.n_dropped_clicks)


def update(parent_dir: Path, new_log: ClickLog, out: Path, *, budget: UpdateBudget, cutoff: dict,
           held_out: Sequence[Sequence[str]] = (), settings: Settings | None = None,
           progress: bool = False) -> Update:
    """Continue the artifact in `parent_dir` on `new_log` into a new artifact in `out`; its lineage records
    `cutoff` (where the clicks it trained on end). With `held_out` sessions, its served figures are measured on
    them (metrics.json `served`: the exclusion policy a worker serves)."""
    started = time.monotonic()
    trained_by, version = code_version(), new_version()
    rng = np.random.default_rng(budget.seed)
    parent = Parent.load(parent_dir)
    item_map = grown_item_map(parent.item_ids, new_log)
    n_known, n_items = len(parent.item_ids), len(item_map)
    new = encode_sessions(new_log, item_map)
    new = Sessions(new.offsets, new.items, 0)
    n_replay = min(len(parent.replay["sessions"]), round(budget.replay_ratio * new.n_sessions))
    replay_ids = [parent.replay["sessions"][i] for i in rng.choice(len(parent.replay["sessions"]), n_replay,
                                                                   replace=False)]
    replayed = _encoded(replay_ids, item_map)
    training = shuffled([replayed, new], rng)
    popularity = np.concatenate([parent.popularity, np.zeros(n_items - n_known, np.int64)])
    popularity += item_popularity(new, n_items)
    neighbours = co_clicked(new, n_known, n_items)

    out.mkdir(parents=True, exist_ok=True)
    models, seconds = {}, {}
    for name, entry in parent.manifest["models"].items():
        model_started = time.monotonic()
        warm = grown(parent.checkpoint(name), neighbours)
        model, optimiser = warm.model, warm.optimiser
        if name in TRAINED and training.n_clicks > training.n_sessions:
            params = dataclasses.replace(_params(name, parent.config[name]), n_epochs=budget.epochs)
            model, optimiser = _trained(name, warm, params, training, popularity, progress)
        elif name == "dien" and budget.dien == "fine-tune" and new.n_clicks > new.n_sessions:
            params = dataclasses.replace(_params(name, parent.config[name]), n_epochs=budget.epochs)
            model = _fine_tuned_dien(parent, neighbours, warm.model, params, new, popularity, progress)
        if name in GRAPHS:
            entry = entry | export_retriever(name, model, out / entry["file"], entry["top_k"])
        else:
            export_dien(model, out / entry["file"])
        save_checkpoint(model, out / weights_file(entry), optimiser)
        models[name] = entry | {"n_items": n_items, "weights": weights_file(entry)}
        seconds[name] = round(time.monotonic() - model_started, 2)

    record = {"parent": parent.manifest["version"], "new_clicks": new_log.n_clicks, "new_sessions": new.n_sessions,
              "new_items": n_items - n_known, "replayed_sessions": replayed.n_sessions,
              "budget": dataclasses.asdict(budget), "seconds": seconds}
    (out / REPLAY).write_text(json.dumps(merged_replay(parent.replay, new_log.sessions_as_ids(), budget.replay_keep,
                                                       rng)))
    lineage = {"kind": "incremental", "parent": parent.manifest["version"], "clicks": cutoff}
    metrics = {"dataset": _parent_metrics(parent).get("dataset"), "incremental": record}

    def sealed(**served: dict) -> Path:
        return write_artifact_metadata(out, version=version, trained_by=trained_by, item_ids=item_map.ids,
                                       popularity=popularity, config=parent.config, metrics=metrics | served,
                                       models=models, lineage=lineage,
                                       serving_pipeline=parent.manifest.get("serving_pipeline"))

    manifest = json.loads(sealed().read_text())
    if held_out and settings is not None:
        sealed(served=served_evaluation(out, manifest, held_out, settings))
    return Update(out, version, new_log.n_clicks, new.n_sessions, n_items - n_known, replayed.n_sessions,
                  time.monotonic() - started)


def _params(name: str, fields: dict) -> GRU4RecTraining | NARMTraining | DIENTraining:
    return PARAMS[name](**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})


def _fine_tuned_dien(parent: Parent, neighbours: list[np.ndarray], warm: torch.nn.Module, params: DIENTraining,
                     sessions: Sessions, popularity: np.ndarray, progress: bool) -> torch.nn.Module:
    """DIEN trained on, re-ranking the parent retriever's (grown) top-N of `sessions`, which it never saw."""
    retriever = grown(parent.checkpoint(params.retriever), neighbours).model
    retriever_params = _params(params.retriever, parent.config[params.retriever])
    retrieved = retrieve(retriever_scores(retriever, retriever_params), sessions, params.n_candidates)
    model, _ = train_dien(sessions, popularity, params, retrieved, progress=progress, warm=warm)
    return model


def _trained(name: str, warm: Checkpoint, params, sessions: Sessions, popularity: np.ndarray,
             progress: bool) -> tuple[torch.nn.Module, dict | None]:
    """The model trained on, and where its optimiser ended."""
    if name == "gru4rec":
        trainer = GRU4RecTrainer(popularity, params, warm=warm.model, warm_optimiser=warm.optimiser)
        return trainer.fit(sessions, params.n_epochs, progress), trainer.history.optimiser_state
    model, history = train_narm(sessions, popularity, params, progress=progress, warm=warm.model,
                                warm_optimiser=warm.optimiser)
    return model, history.optimiser_state


def _encoded(sessions: list[list[str]], item_map: ItemMap) -> Sessions:
    ids = [item for session in sessions for item in session]
    owners = [str(s) for s, session in enumerate(sessions) for _ in session]
    log = ClickLog(np.asarray(owners, dtype=object), np.asarray(ids, dtype=object), None, "replay")
    encoded = encode_sessions(log, item_map)
    return Sessions(encoded.offsets, encoded.items, 0)


def _parent_metrics(parent: Parent) -> dict:
    path = parent.directory / METRICS
    return json.loads(path.read_text()) if path.is_file() else {}
