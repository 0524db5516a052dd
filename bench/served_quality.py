"""What an artifact serves, and what remembering it costs: served Recall@20 / MRR@20 keeping and
excluding the session's clicked items, and the bytes of session state per session.

    python bench/served_quality.py --artifact DIR --dataset diginetica_srgnn [--pipelines gru4rec gru4rec+dien]

(a) Every pipeline the artifact serves (or those asked) judged through the worker's own recommender on
the data set's test sessions, both exclusion policies (`stream_app.inference.served_quality.served_evaluation`,
what `training.retrain` writes into metrics.json); the policy `auto` would serve is marked. The worker's
NEXTCLICK_* settings apply: NEXTCLICK_TOPK_INDEX=ann judges the retrievers' top K searched in their item index.
(b) The session table after those sessions, as the worker writes it: the changelog record's JSON bytes
per session, and the Python heap it takes in a worker's in-memory table (tracemalloc), with the last
suggestion kept for live judging (the state since the served-quality change) and without it (before),
next to the raw state (hidden floats and kept item indices as 4-byte numbers).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
import tracemalloc
from pathlib import Path

from stream_app.inference.artifact_format import MANIFEST
from stream_app.inference.events import Click
from stream_app.inference.scoring import Scorer
from stream_app.inference.served_quality import format_served, served_evaluation
from stream_app.inference.sessions import SessionRecommender, SessionState
from stream_app.inference.suggestion import SourcedClick
from stream_app.settings import Settings
from training.data.datasets import dataset_names, load_dataset


def final_states(scorer: Scorer, sessions: list[list[str]], settings: Settings) -> list[SessionState]:
    """Each session's table entry after its last click, served the way the worker serves it."""
    recommender = SessionRecommender.from_settings(scorer, settings, session_ttl=math.inf)
    table: dict[bytes, SessionState] = {}
    for start in range(0, len(sessions), 1024):
        clicks = [
            SourcedClick(Click(f"s{start + number}", item, 0.0), partition=0, offset=offset)
            for number, session in enumerate(sessions[start : start + 1024])
            for offset, item in enumerate(session)
        ]
        table.update(recommender.recommend(clicks, table, now=0.0).states)
    for state in table.values():  # as the worker keeps a state once the clicks before its last are committed
        state.forget_committed(state.offsets[-1])
    return list(table.values())


def without_suggestion(state: SessionState) -> SessionState:
    return SessionState(items=state.items, last_seen=state.last_seen, hidden=state.hidden,
                        artifact_version=state.artifact_version, offsets=state.offsets, model=state.model,
                        variant=state.variant)


def heap_bytes_per_state(records: list[bytes]) -> float:
    """Heap taken by a table of `records` (as a worker's in-memory table holds them: one bytes object each)."""
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    table = {str(number).encode(): SessionState.loads(record).dumps() for number, record in enumerate(records)}
    taken = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert len(table) == len(records)
    return taken / len(records)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifact", type=Path, required=True, help="an artifact directory")
    parser.add_argument("--dataset", choices=dataset_names(), required=True,
                        help="the data set the artifact was trained on: its test sessions are replayed")
    parser.add_argument("--pipelines", nargs="+", help="default: every pipeline the artifact serves")
    parser.add_argument("--max-sessions", type=int, help="the first N test sessions only")
    parser.add_argument("--state-pipelines", nargs="*",
                        help="the pipelines whose session state is measured (default: those judged; a re-ranker "
                             "adds nothing to the state, so a retriever alone tells it, faster)")
    args = parser.parse_args()

    print(f"{platform.processor() or platform.machine()}, {time.strftime('%Y-%m-%d %H:%M')}; artifact "
          f"{args.artifact.name}, data set {args.dataset}")
    _, test = load_dataset(args.dataset)
    if args.max_sessions:
        test = test.head_sessions(args.max_sessions)
    sessions = test.sessions_as_ids()
    manifest = json.loads((args.artifact / MANIFEST).read_text())
    settings = Settings(exclude_seen="auto")
    started = time.perf_counter()
    served = served_evaluation(args.artifact, manifest, sessions, settings, args.pipelines)
    print(format_served(served) + f"\n({time.perf_counter() - started:.0f} s)\n")

    print("session state per session (mean over the test sessions' final states):")
    state_pipelines = args.state_pipelines if args.state_pipelines is not None else list(served["pipelines"])
    for pipeline in state_pipelines:
        scorer = Scorer(args.artifact, pipeline=pipeline)
        states = final_states(scorer, sessions, settings)
        raw = statistics.fmean(scorer.layers * scorer.hidden_size * 4 + 4 * len(s.items) for s in states)
        for label, records in (
            ("without the last suggestion (before)", [without_suggestion(s).dumps() for s in states]),
            ("with the last suggestion (now)", [s.dumps() for s in states]),
        ):
            print(f"  {pipeline:<14} {label:<38} record {statistics.fmean(map(len, records)):7.0f} B   "
                  f"heap {heap_bytes_per_state(records):7.0f} B   raw {raw:5.0f} B")


if __name__ == "__main__":
    main()
