"""Served quality: how good the suggestions a version serves are, judged alike offline and live.

A suggestion is judged when its session's next click arrives (`stream_app.inference.suggestion.Judgement`):
a hit at K when the clicked item is among its first K items; reciprocal rank 1 / its position, 0
when absent. The worker judges live (each session's state keeps its last suggestion) and counts per
version and variant (`stream_app.worker.live_quality`, Prometheus counters); training and the quality gate judge offline
by replaying held-out sessions through the worker's own `SessionRecommender`
(`served_top_k_metrics`), so over the same clicks the two give the same figures.

Every click but a session's last is a prediction: a click on an item a version does not know gets
its popularity suggestion, a next click it does not know is a miss. These "served" figures differ
from the offline protocol's (`training.evaluation.evaluate`: unseen items dropped, full-catalogue ranks, no
exclusion of clicked items); they describe what users get.

Leaving a session's clicked items out of its suggestions is a measured choice: training judges
every pipeline an artifact can serve both ways (`served_evaluation`) and writes both figures and
the better policy into its metrics.json; a worker with NEXTCLICK_EXCLUDE_SEEN=auto serves that policy.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from stream_app.inference.artifact_format import EXCLUSION_POLICIES
from stream_app.inference.events import Click
from stream_app.inference.scoring import MODEL_NAME, PIPELINES, Scorer
from stream_app.inference.served_pipeline import ARTIFACT, ServingPipeline, served_scorer
from stream_app.inference.sessions import BatchResult, SessionRecommender
from stream_app.inference.suggestion import Judgement, SourcedClick, item_hash
from stream_app.settings import Settings

CUTOFF = 20  # training and the quality gate judge Recall@20 and MRR@20
PROTOCOL = (
    f"served top-{CUTOFF} (SessionRecommender, the worker's settings) at every click of every held-out "
    "session but its last, against the next click; unknown targets count as misses"
)
SESSIONS_PER_CALL = 1024  # held-out sessions replayed per `recommend` call (bounds the batch)
# the same for a pipeline that reads a live index of sessions, which learns each chunk once it is served: a
# session's neighbours are the sessions of the chunks before its own, so a small chunk loses few of them
INDEXED_SESSIONS_PER_CALL = 64


@dataclass(frozen=True)
class ServedMetrics:
    version: str
    recall: float  # Recall@CUTOFF
    mrr: float  # MRR@CUTOFF
    predictions: int

    @classmethod
    def of(cls, version: str, judgements: Sequence[Judgement]) -> ServedMetrics:
        ranks = [j.rank for j in judgements if j.rank is not None and j.rank <= CUTOFF]
        n = len(judgements)  # fsum: the same figure whatever order the judgements come in
        return cls(version, len(ranks) / n if n else 0.0, math.fsum(1.0 / r for r in ranks) / n if n else 0.0, n)

    def to_dict(self) -> dict:
        return {
            "version": self.version,
            f"recall@{CUTOFF}": self.recall,
            f"mrr@{CUTOFF}": self.mrr,
            "predictions": self.predictions,
        }


def replayed(
    recommender: SessionRecommender, sessions: Sequence[Sequence[str]]
) -> Iterator[tuple[Sequence[Sequence[str]], BatchResult]]:
    """`sessions` (external ids) served by `recommender` click by click, a chunk of sessions per call: each
    chunk and its result (suggestions in click order). A pipeline that reads a live index of sessions (a kNN
    pipeline's `neighbours`) starts from its index as it is, and the index learns each chunk once it is served, as
    a worker's learns the stream: sessions in time order see the sessions before them, never themselves or later
    ones."""
    neighbours = recommender.scorer.neighbours
    per_call = SESSIONS_PER_CALL if neighbours is None else INDEXED_SESSIONS_PER_CALL
    for start in range(0, len(sessions), per_call):
        chunk = sessions[start : start + per_call]
        clicks = [
            SourcedClick(Click(str(start + number), str(item), 0.0), partition=0, offset=offset)
            for number, session in enumerate(chunk)
            for offset, item in enumerate(session)
        ]
        yield chunk, recommender.recommend(clicks, {}, now=0.0)
        for sourced in clicks if neighbours is not None else ():
            neighbours.observe(sourced.click.session_id, sourced.click.item_id)


def served_judgements(recommender: SessionRecommender, sessions: Sequence[Sequence[str]]) -> list[Judgement]:
    """Every suggestion `recommender` serves along `sessions` (external ids), judged by the next click."""
    return [judgement for _, result in replayed(recommender, sessions) for judgement in result.judgements]


def served_top_k_metrics(
    scorer: Scorer, sessions: Sequence[Sequence[str]], settings: Settings, exclude_seen: bool | None = None
) -> ServedMetrics:
    """Recall@20 and MRR@20 of what `scorer` serves for every next click of `sessions` (external ids).

    The one place that evaluates a version through the serving path: the worker's recommender
    (`SessionRecommender.from_settings`, the exclusion policy the worker would serve unless
    `exclude_seen` says), asked for the top 20, with no session expiry.
    """
    overrides = {"top_k": CUTOFF, "session_ttl": math.inf}
    if exclude_seen is not None:
        overrides["exclude_seen"] = exclude_seen
    recommender = SessionRecommender.from_settings(scorer, settings, **overrides)
    return ServedMetrics.of(scorer.version, served_judgements(recommender, sessions))


def served_both_ways(scorer: Scorer, sessions: Sequence[Sequence[str]], settings: Settings) -> dict[str, ServedMetrics]:
    """`served_top_k_metrics` keeping and excluding clicked items, from one pass through the recommender.

    The exclusion policy changes which items are picked from the pipeline's list, never the model's
    state or scores: keeping clicked items and asked for a list long enough to hold either policy's top
    20 (the pipeline's whole list, and 20 + the kept clicks of popular items), the recommender serves the
    keep policy's suggestion as its first 20 items and the exclude policy's as its first 20 the session
    has not clicked (among the items the model knows, as `SessionRecommender` leaves out)."""
    width = max(scorer.graph_top_k, CUTOFF + settings.max_history)
    recommender = SessionRecommender.from_settings(
        scorer, settings, top_k=width, session_ttl=math.inf, exclude_seen=False
    )
    labels = (scorer.name, scorer.version, recommender.variant)
    judged: dict[str, list[Judgement]] = {policy: [] for policy in EXCLUSION_POLICIES}
    for chunk, result in replayed(recommender, sessions):
        suggestions = result.suggestions  # one per click, in click order
        position = 0
        for session in chunk:
            for j in range(1, len(session)):
                served = suggestions[position + j - 1].items  # after click j - 1, judged by click j
                kept = [str(item) for item in session[:j]][-settings.max_history :]
                seen = {item for item in kept if scorer.index_of(item) is not None}
                target = str(session[j])
                judged["keep_seen"].append(Judgement.of(list(map(item_hash, served[:CUTOFF])), target, labels))
                unseen = [item for item in served if item not in seen][:CUTOFF]
                judged["exclude_seen"].append(Judgement.of(list(map(item_hash, unseen)), target, labels))
            position += len(session)
    return {policy: ServedMetrics.of(scorer.version, judged[policy]) for policy in EXCLUSION_POLICIES}


def servable_pipelines(manifest: dict) -> list[str]:
    """The pipelines an artifact can serve: each retriever it holds, DIEN on the retriever it re-ranks, and the
    kNN pipeline it records as chosen (`stream_app.inference.served_pipeline`), if any."""
    models = manifest["models"]
    chosen = ServingPipeline.from_dict(manifest.get("serving_pipeline") or {"pipeline": MODEL_NAME})
    return [
        pipeline
        for pipeline in PIPELINES
        if all(model in models for model in pipeline.split("+"))
        and ("dien" not in pipeline or models["dien"]["retriever"] == pipeline.split("+")[0])
    ] + ([chosen.pipeline] if chosen.reads_neighbours else [])


def pipeline_scorer(directory: Path, pipeline: str, settings: Settings) -> Scorer:
    """`pipeline` of the artifact, as a worker serves it; a kNN pipeline is the one the artifact records, reading
    an index that starts empty (`replayed` fills it)."""
    return served_scorer(directory, settings.model_copy(update={"serving_model": pipeline if pipeline in PIPELINES
                                                                  else ARTIFACT}))


def served_evaluation(
    directory: Path,
    manifest: dict,
    sessions: Sequence[Sequence[str]],
    settings: Settings,
    only: Sequence[str] | None = None,
) -> dict:
    """metrics.json's `served`: each servable pipeline (or those of `only`) judged keeping and excluding
    clicked items, and the better policy (higher Recall@20, then MRR@20; keeping them on a tie)."""
    pipelines = {}
    for pipeline in servable_pipelines(manifest):
        if only is not None and pipeline not in only:
            continue
        figures = served_both_ways(pipeline_scorer(directory, pipeline, settings), sessions, settings)
        best = max(EXCLUSION_POLICIES, key=lambda policy: (figures[policy].recall, figures[policy].mrr))
        pipelines[pipeline] = {policy: figures[policy].to_dict() for policy in EXCLUSION_POLICIES} | {"policy": best}
    return {"protocol": PROTOCOL, "cutoff": CUTOFF, "sessions": len(sessions), "pipelines": pipelines}


def format_served(served: dict) -> str:
    """The served figures as a table, one row per pipeline and policy, the chosen policy marked."""
    lines = [f"served through the worker's path (Recall@{CUTOFF} / MRR@{CUTOFF}, {served['sessions']:,} sessions):"]
    for pipeline, entry in served["pipelines"].items():
        for policy in EXCLUSION_POLICIES:
            row = entry[policy]
            mark = "  <- served" if policy == entry["policy"] else ""
            lines.append(
                f"  {pipeline:<14} {policy:<13} {row[f'recall@{CUTOFF}']:.4f}  {row[f'mrr@{CUTOFF}']:.4f}{mark}"
            )
    return "\n".join(lines)
