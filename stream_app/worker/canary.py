"""Canary routing: a second version serves a share of the sessions next to the current one.

A canary (`python -m stream_app.artifacts canary VERSION --share S`) serves the sessions whose id hashes below
its share (`canary_position`: a session never flips between the two while the canary runs, and every worker
agrees); its suggestions and live quality metrics carry variant="canary". Loading and stopping it is the
follower's (`stream_app.worker.model_swap`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from stream_app.inference.sessions import BatchResult, SessionRecommender, SessionState
from stream_app.inference.suggestion import SourcedClick


def canary_position(session_id: str) -> float:
    """Where a session falls in [0, 1): a hash of its id, so that a share of sessions (not of clicks)
    goes to the canary, the same ones on every worker, independent of the partitioning (murmur2)."""
    digest = hashlib.blake2b(session_id.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def routed_batch(
    current: SessionRecommender,
    canary: tuple[SessionRecommender, float] | None,
    clicks: list[SourcedClick],
    table: Mapping[bytes, SessionState],
    now: float,
) -> BatchResult:
    """One batch, each click scored by its session's variant: the canary (with its share), or the current one."""
    if canary is None:
        return current.recommend(clicks, table, now)
    recommender, share = canary
    on_canary = [canary_position(sourced.click.session_id) < share for sourced in clicks]
    suggestions: list = [None] * len(clicks)
    states: dict[bytes, SessionState] = {}
    judgements = []
    for engine, variant in ((current, False), (recommender, True)):
        positions = [p for p, flag in enumerate(on_canary) if flag is variant]
        if positions:
            result = engine.recommend([clicks[p] for p in positions], table, now)
            for position, suggestion in zip(positions, result.suggestions, strict=True):
                suggestions[position] = suggestion
            states |= result.states  # disjoint: a session is on one variant
            judgements += result.judgements
    return BatchResult(suggestions, states, judgements)
