"""Served quality: suggestions judged by the session's next click, offline and live, and the exclusion policy.

The worker's live figures (its Prometheus counters) must equal the offline served protocol's
(`served_top_k_metrics`) on the same clicks, for each exclusion policy; repeated deliveries are
answered but never judged twice; `auto` serves what the artifact measured, or says it could not.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from devtools.artifact_versions import rehash, renamed
from devtools.click_replay import held_out_clicks
from stream_app.inference.artifact_format import EXCLUSION_POLICIES
from stream_app.inference.events import Click
from stream_app.inference.scoring import UNMEASURED_EXCLUDE_SEEN, Scorer
from stream_app.inference.served_quality import (
    CUTOFF,
    ServedMetrics,
    served_evaluation,
    served_judgements,
    served_top_k_metrics,
)
from stream_app.inference.sessions import SessionRecommender, SessionState
from stream_app.inference.suggestion import Judgement, SourcedClick, item_hash
from stream_app.settings import Settings, get_settings

LIVE_CLICKS = 400  # the test day's first real clicks, about 150 sessions


def day_sessions(clicks: int) -> dict[str, list[str]]:
    """The test day's first `clicks` clicks grouped by session, in time order (item ids as logged)."""
    sessions: dict[str, list[str]] = defaultdict(list)
    for click in held_out_clicks(get_settings(), clicks):
        sessions[click.session_id].append(click.item_id)
    return sessions


def at(session_id: str, item_id: str, offset: int) -> SourcedClick:
    return SourcedClick(Click(session_id, item_id, 0.0), partition=0, offset=offset)


def test_each_suggestion_is_judged_once_by_the_next_click_and_repeats_are_not(scorer: Scorer) -> None:
    engine = SessionRecommender(scorer, top_k=CUTOFF, max_history=50, session_ttl=math.inf, exclude_seen=False)
    a, b, c = scorer.item_ids[3:6]
    table: dict[bytes, SessionState] = {}

    def serve(*clicks: SourcedClick) -> tuple[list, list[Judgement]]:
        result = engine.recommend(list(clicks), table, now=0.0)
        # through JSON, as the changelog and any restarted worker see the state
        table.update({key: SessionState.loads(state.dumps()) for key, state in result.states.items()})
        return result.suggestions, result.judgements

    [first], judged = serve(at("s", a, 0))
    assert judged == [] and table[b"s"].suggested == list(map(item_hash, first.items))
    assert table[b"s"].served_by == ("gru4rec", scorer.version, "current")
    [second], judged = serve(at("s", b, 1))
    expected_rank = first.items.index(b) + 1 if b in first.items else None
    assert judged == [Judgement(("gru4rec", scorer.version, "current"), expected_rank)]
    [repeat], judged = serve(at("s", b, 1))  # the same click delivered again
    assert judged == [] and repeat.items == second.items and table[b"s"].suggested == list(map(item_hash, second.items))
    [_], judged = serve(at("s", second.items[4], 2))  # the fifth suggested item clicked
    assert judged == [Judgement(("gru4rec", scorer.version, "current"), 5)]
    _, judged = serve(at("s", c, 3), at("t", a, 0), at("t", c, 1))  # two clicks of t in one batch
    assert [j.rank is None or j.rank >= 1 for j in judged] == [True, True] and len(judged) == 2


def test_served_metrics_count_hits_and_reciprocal_ranks_within_the_cutoff() -> None:
    labels = ("gru4rec", "v", "current")
    judgements = [Judgement(labels, rank) for rank in (1, 4, None, 20, 21)]
    metrics = ServedMetrics.of("v", judgements)
    assert metrics.predictions == 5
    assert metrics.recall == 3 / 5
    assert metrics.mrr == pytest.approx((1 + 1 / 4 + 1 / 20) / 5, abs=1e-15)


def test_retrain_measures_both_policies_and_auto_serves_the_better_one(artifact: Path, scorer: Scorer) -> None:
    served = json.loads((artifact / "metrics.json").read_text())["served"]
    entry = served["pipelines"]["gru4rec"]
    sessions = list(day_sessions(10_000).values())[: served["sessions"]]
    for policy, exclude in (("keep_seen", False), ("exclude_seen", True)):
        again = served_top_k_metrics(scorer, sessions, Settings(), exclude_seen=exclude)
        assert entry[policy]["recall@20"] == again.recall and entry[policy]["predictions"] == again.predictions
    figures = {policy: (entry[policy]["recall@20"], entry[policy]["mrr@20"]) for policy in EXCLUSION_POLICIES}
    better = "exclude_seen" if figures["exclude_seen"] > figures["keep_seen"] else "keep_seen"
    assert entry["policy"] == better
    assert scorer.exclusion_policy("auto")[0] is (better == "exclude_seen")
    assert "measured by training" in scorer.exclusion_policy("auto")[1]
    assert scorer.exclusion_policy("true") == (True, "NEXTCLICK_EXCLUDE_SEEN=true")
    assert scorer.exclusion_policy("false")[0] is False
    auto = SessionRecommender.from_settings(scorer, Settings(exclude_seen="auto"))
    assert auto.exclude_seen is (better == "exclude_seen")


def test_an_artifact_without_the_measurement_falls_back_to_the_documented_default(
    artifact: Path, tmp_path: Path
) -> None:
    older = renamed(artifact, tmp_path / "older", "older")
    metrics = json.loads((older / "metrics.json").read_text())
    del metrics["served"]
    (older / "metrics.json").write_text(json.dumps(metrics))
    rehash(older)
    scorer = Scorer(older)
    exclude, why = scorer.exclusion_policy("auto")
    assert exclude is UNMEASURED_EXCLUDE_SEEN is False
    assert "did not measure" in why and "keeping clicked items, the default" in why
    assert scorer.offline_figures(exclude) is None


def test_served_evaluation_covers_every_pipeline_an_artifact_serves(three_model_artifact: Path) -> None:
    sessions = list(day_sessions(300).values())
    manifest = json.loads((three_model_artifact / "manifest.json").read_text())
    served = served_evaluation(three_model_artifact, manifest, sessions, Settings())
    assert list(served["pipelines"]) == ["gru4rec", "narm", "gru4rec+dien"]
    for pipeline, entry in served["pipelines"].items():
        scorer = Scorer(three_model_artifact, pipeline=pipeline)
        for policy in ("keep_seen", "exclude_seen"):
            recommender = SessionRecommender.from_settings(
                scorer, Settings(), top_k=CUTOFF, session_ttl=math.inf, exclude_seen=policy == "exclude_seen"
            )
            direct = ServedMetrics.of(scorer.version, served_judgements(recommender, sessions))
            assert entry[policy] == direct.to_dict()


@pytest.mark.broker
@pytest.mark.parametrize("exclude_seen", ["true", "false"])
def test_the_workers_live_figures_equal_the_offline_protocol_on_the_same_clicks(
    exclude_seen: str, artifact: Path, scorer: Scorer, start_worker: Callable[..., Any]
) -> None:
    clicks = held_out_clicks(get_settings(), LIVE_CLICKS)
    sessions = day_sessions(LIVE_CLICKS)
    fields = {"serving_artifact_dir": artifact, "exclude_seen": exclude_seen}
    with start_worker(f"live-quality-{exclude_seen}", require_model=True, **fields) as worker:
        messages = [
            (c.session_id.encode(), json.dumps({"session_id": c.session_id, "item_id": c.item_id,
                                                "timestamp": time.time()}).encode())
            for c in clicks
        ]
        worker.produce(worker.settings.clicks_topic, messages)
        assert len(worker.consume(worker.settings.recommendations_topic, len(clicks))) == len(clicks)
        labels = {"model": "gru4rec", "artifact_version": scorer.version, "variant": "current"}
        worker.wait_until(
            lambda: worker.metric("nextclick_suggestions_judged_total", **labels) == len(clicks) - len(sessions),
            what="every suggestion but each session's last judged",
        )
        judged = worker.metric("nextclick_suggestions_judged_total", **labels)
        live = {
            cutoff: (
                worker.metric("nextclick_suggestion_hits_total", cutoff=str(cutoff), **labels) / judged,
                worker.metric("nextclick_suggestion_reciprocal_rank_total", cutoff=str(cutoff), **labels) / judged,
            )
            for cutoff in (5, 10, 20)
        }
        offline_figure = worker.metric("nextclick_model_offline_recall", cutoff="20", **labels)

    engine = SessionRecommender.from_settings(
        scorer, Settings(exclude_seen=exclude_seen), top_k=CUTOFF, session_ttl=math.inf
    )
    judgements = served_judgements(engine, list(sessions.values()))
    assert judged == len(judgements)
    for cutoff, (hit_rate, mrr) in live.items():
        ranks = [j.rank for j in judgements if j.rank is not None and j.rank <= cutoff]
        assert hit_rate == len(ranks) / len(judgements), cutoff  # counts: exact
        assert mrr == pytest.approx(sum(1 / r for r in ranks) / len(judgements), rel=1e-12, abs=0), cutoff
    measured = scorer.offline_figures(exclude_seen == "true")
    assert offline_figure == measured["recall@20"]


def test_the_worker_logs_the_policy_it_serves_and_why(
    artifact: Path, start_worker: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    with start_worker("policy-log", require_model=True, serving_artifact_dir=artifact, exclude_seen="auto") as worker:
        exclude = worker.metric("nextclick_model_info", variant="current", exclude_seen="true")
        keep = worker.metric("nextclick_model_info", variant="current", exclude_seen="false")
        log = worker.log.read_text()
    assert exclude + keep == 1
    assert "clicked items from suggestions (measured by training:" in log


test_the_worker_logs_the_policy_it_serves_and_why = pytest.mark.broker(
    test_the_worker_logs_the_policy_it_serves_and_why
)
logging.getLogger(__name__)
