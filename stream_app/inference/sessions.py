"""Turn a micro-batch of clicks into suggestions, advancing each session's state.

Faust-free, so it runs on any mapping (the worker's table, a dict in tests); it reads states and leaves
writing them to the caller. A batch costs one model call per round (round r: the r-th click of every
session in it); a repeated delivery is answered from its session's prefix and leaves the state alone; a
state computed by another model version is rebuilt lazily, by replaying its item ids on the session's
next click. Why each is so: docs/serving.md (State, Delivery guarantee, Hot swap) and
docs/stream_performance.md (Session state; State from another model version).
"""

from __future__ import annotations

import struct
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from stream_app.inference.catalogue import CatalogueView
from stream_app.inference.new_items import new_candidates, new_places, with_new_items
from stream_app.inference.scoring import Scorer
from stream_app.inference.serving_rules import allowed_candidates, first_allowed, refused_items, topped_up
from stream_app.inference.suggestion import Judgement, SourcedClick, Suggestion
from stream_app.settings import Settings


@dataclass(slots=True)
class SessionState:
    """One session in the table, and its changelog record (`dumps`, `loads`).

    The record is one line of JSON, a newline, then the kept suggestion as one little-endian uint16 per
    item (`item_hash`, `"suggested"` of them), then the hidden state as raw little-endian float32
    (`layers * hidden_size * 4` bytes; none until a known item is clicked):

        {"last_seen":1733331234,"by":["gru4rec","20261204T...","current"],"items":["81766","31331"],
         "offsets":[1219],"suggested":20}
        <40 bytes: 20 item hashes><400 bytes for 1 layer of 100 units>

    The worker's table holds these records as they are and decodes a session when it clicks. `items` holds
    external ids, not model indices: ids survive a model change, when the hidden state is rebuilt by
    replaying them. `offsets` belong to the last entries of `items`, as many as may still be delivered
    again (`forget_committed`). One model, version and variant (`by`) made both the hidden state and the
    suggestion. Why this layout (exact floats, 2-byte hashes, whole seconds): docs/stream_performance.md,
    Session state.
    """

    items: list[str]  # last `max_history` clicked item ids, oldest first
    last_seen: float  # worker clock (Unix s) at the session's latest click
    hidden: bytes  # float32 [layers, hidden_size], little-endian; b"" until a known item is clicked
    artifact_version: str  # the artifact whose model produced `hidden` and `suggested`
    offsets: list[int] = field(default_factory=list)  # clicks-topic offsets of the last entries of `items`
    suggested: list[int] = field(default_factory=list)  # `item_hash` of each item of the last suggestion
    model: str = ""  # the pipeline that served the session (`stream_app.inference.scoring.PIPELINES`)
    variant: str = ""  # "current" or "canary"

    _HEAD = b'{"last_seen":'

    @property
    def served_by(self) -> tuple[str, str, str]:
        return (self.model, self.artifact_version, self.variant)

    def dumps(self) -> bytes:
        header = {
            "last_seen": int(self.last_seen),
            "by": self.served_by,
            "items": self.items,
            "offsets": self.offsets,
            "suggested": len(self.suggested),
        }
        return b"".join(
            (orjson.dumps(header), b"\n", struct.pack(f"<{len(self.suggested)}H", *self.suggested), self.hidden)
        )

    @classmethod
    def loads(cls, record: bytes) -> SessionState:
        header, _, tail = record.partition(b"\n")  # JSON escapes every newline inside the line
        fields = orjson.loads(header)
        model, version, variant = fields["by"]
        cut = 2 * fields["suggested"]
        return cls(
            items=fields["items"],
            last_seen=fields["last_seen"],
            hidden=tail[cut:],
            artifact_version=version,
            offsets=fields["offsets"],
            suggested=list(struct.unpack(f"<{fields['suggested']}H", tail[:cut])),
            model=model,
            variant=variant,
        )

    def forget_committed(self, committed: int | None) -> None:
        """Keep only the offsets from `committed` on (the partition's committed offset, None: unknown, keep
        all): Kafka never delivers a click below it again, so no repeat can carry those offsets, and a
        session of 50 clicks carries one or two offsets instead of 50."""
        if committed is not None:
            self.offsets = [offset for offset in self.offsets if offset >= committed]

    @classmethod
    def last_seen_of(cls, record: bytes) -> float:
        """`last_seen` without decoding the rest: the eviction sweep reads it for every session."""
        return float(record[len(cls._HEAD) : record.index(b",")])


@dataclass(frozen=True, slots=True)
class BatchResult:
    suggestions: list[Suggestion]  # one per click, in click order
    states: dict[bytes, SessionState]  # every session the batch stepped (not only repeated), keyed like the table
    judgements: list[Judgement]  # the sessions' earlier suggestions, judged by the batch's new clicks


@dataclass(slots=True)
class _Session:
    items: list[str]
    offsets: list[int]
    hidden: np.ndarray | None  # [layers, hidden_size]
    stale: bool = False  # `hidden` is still to be rebuilt from `items` (`_rebuild_stale`)
    suggested: list[int] = field(default_factory=list)  # item hashes of the last suggestion
    served_by: tuple[str, str, str] = ("", "", "")  # its model, version and variant
    stepped: bool = False  # a click of this batch was new to the session (not a repeat)


def _encode_hidden(hidden: np.ndarray | None) -> bytes:
    return b"" if hidden is None else hidden.astype("<f4").tobytes()


class SessionRecommender:
    """Scores batches of clicks against per-session state held in a mapping."""

    def __init__(
        self,
        scorer: Scorer,
        *,
        top_k: int,
        max_history: int,
        session_ttl: float,
        exclude_seen: bool,
        variant: str = "current",
        observe_inference: Callable[[float], None] = lambda seconds: None,
        catalogue: CatalogueView | None = None,
        new_items_share: float = 0.0,
    ) -> None:
        self.observe_inference = observe_inference  # gets the wall time of each model call
        # what may be shown, and clicks' own rules applied (`stream_app.inference.serving_rules`); None: neither
        self.catalogue = catalogue
        # places of each suggestion kept for the items the catalogue marks new (`stream_app.inference.new_items`)
        self.new_places = new_places(new_items_share, top_k)
        self.scorer = scorer
        self.top_k = top_k
        self.max_history = max_history
        self.session_ttl = session_ttl
        self.exclude_seen = exclude_seen
        self.variant = variant  # "current", or "canary" for a version serving a share of sessions

    @classmethod
    def from_settings(cls, scorer: Scorer, settings: Settings, **overrides: Any) -> SessionRecommender:
        """The recommender the worker serves with; the quality gate overrides `top_k` and `session_ttl`.
        The exclusion policy is the artifact's measured one unless the settings choose."""
        options = {
            "top_k": settings.top_k,
            "max_history": settings.max_history,
            "session_ttl": settings.session_ttl,
            "exclude_seen": scorer.exclusion_policy(settings.exclude_seen)[0],
            "new_items_share": settings.new_items_share,
        }
        return cls(scorer, **options | overrides)

    def recommend(
        self, clicks: Sequence[SourcedClick], table: Mapping[bytes, SessionState | bytes], now: float
    ) -> BatchResult:
        """One suggestion per click, in click order, and the new state of each session touched.

        `table` is keyed like the clicks topic (the session id in UTF-8), holds states or their
        records (`SessionState.dumps`, as the worker's table does) and is only read: the caller
        writes `BatchResult.states` back, in whatever context and form its store needs.
        """
        if self.catalogue is not None:
            self.catalogue.cover_new_items()
        session_ids = dict.fromkeys(sourced.click.session_id for sourced in clicks)
        sessions = {session_id: self._load(table.get(session_id.encode()), now) for session_id in session_ids}
        self._rebuild_stale([session for session in sessions.values() if session.stale])
        suggestions: list[Suggestion | None] = [None] * len(clicks)
        judgements: list[Judgement] = []
        fresh = []
        for position, sourced in enumerate(clicks):
            session = sessions[sourced.click.session_id]
            if session.offsets and sourced.offset <= session.offsets[-1]:
                suggestions[position] = self._answer_repeat(sourced, session)
            else:
                fresh.append(position)
        for positions in self._rounds(clicks, fresh):
            self._step_round(clicks, positions, sessions, suggestions, judgements)
        states = {
            session_id.encode(): SessionState(
                items=session.items,
                last_seen=now,
                hidden=_encode_hidden(session.hidden),
                artifact_version=self.scorer.version,
                offsets=session.offsets,
                suggested=session.suggested,
                model=self.scorer.name,
                variant=self.variant,
            )
            for session_id, session in sessions.items()
            if session.stepped
        }
        return BatchResult(suggestions, states, judgements)  # type: ignore[arg-type]: every position is answered

    @staticmethod
    def _rounds(clicks: Sequence[SourcedClick], positions: list[int]) -> list[list[int]]:
        rounds: list[list[int]] = []
        clicks_so_far: Counter[str] = Counter()
        for position in positions:
            sourced = clicks[position]
            ordinal = clicks_so_far[sourced.click.session_id]
            clicks_so_far[sourced.click.session_id] += 1
            if ordinal == len(rounds):
                rounds.append([])
            rounds[ordinal].append(position)
        return rounds

    def _load(self, state: SessionState | bytes | None, now: float) -> _Session:
        if isinstance(state, bytes):
            state = SessionState.loads(state)
        if state is None or now - state.last_seen > self.session_ttl:
            return _Session(items=[], offsets=[], hidden=None)
        session = _Session(
            items=list(state.items),
            offsets=list(state.offsets),
            hidden=None,
            suggested=state.suggested,
            served_by=state.served_by,
        )
        if not self.scorer.stateful:  # the pipeline reads the kept clicks themselves: nothing to rebuild
            return session
        if state.artifact_version == self.scorer.version and state.hidden:
            shape = (self.scorer.layers, self.scorer.hidden_size)
            session.hidden = np.frombuffer(state.hidden, dtype="<f4").reshape(shape).astype(np.float32)
        else:
            session.stale = True
        return session

    def _rebuild_stale(self, stale: list[_Session]) -> None:
        """Rebuild the hidden states of `stale` sessions from their known items, all in one replay:
        right after a swap, most sessions of a batch need it."""
        known = [self.scorer.known_indices(session.items) for session in stale]
        hidden = self.scorer.rebuild_hidden(known)
        for row, session in enumerate(stale):
            session.hidden = hidden[:, row, :].copy() if known[row] else None
            session.stale = False

    def _answer_repeat(self, sourced: SourcedClick, session: _Session) -> Suggestion:
        """The suggestion for a click the state already holds, from the session's prefix up to it.

        A repeat older than the kept history (`max_history` clicks) is answered from its own click.
        `offsets` lines up with the end of `items`.
        """
        if sourced.offset in session.offsets:
            kept = len(session.items) - len(session.offsets) + session.offsets.index(sourced.offset)
        else:
            kept = 0
        replayed = _Session(items=session.items[:kept], offsets=[], hidden=None, stale=True)
        self._rebuild_stale([replayed])
        suggestions: list[Suggestion | None] = [None]
        self._step_round([sourced], [0], {sourced.click.session_id: replayed}, suggestions, [])
        return suggestions[0]  # type: ignore[return-value]: answered above

    def _step_round(
        self,
        clicks: Sequence[SourcedClick],
        positions: list[int],
        sessions: dict[str, _Session],
        suggestions: list[Suggestion | None],
        judgements: list[Judgement],
    ) -> None:
        scorer = self.scorer
        indices = {p: scorer.index_of(clicks[p].click.item_id) for p in positions}
        stepped = [p for p in positions if indices[p] is not None]
        new_in_row: dict[int, set[int]] = {}  # the candidates marked new, of the rows that have some
        if stepped:
            hidden = None
            if scorer.stateful:
                hidden = np.stack(
                    [
                        h
                        if (h := sessions[clicks[p].click.session_id].hidden) is not None
                        else scorer.zero_hidden(1)[:, 0, :]
                        for p in stepped
                    ],
                    axis=1,
                )
            windows = []
            if scorer.window:
                windows = [self._window(sessions[clicks[p].click.session_id], indices[p]) for p in stepped]
            started = time.perf_counter()
            result = scorer.score(np.array([indices[p] for p in stepped], dtype=np.int64), hidden, windows,
                                  [clicks[p].click.session_id for p in stepped])
            self.observe_inference(time.perf_counter() - started)
            # a row's best `top_k` after leaving out at most `max_history` seen items: no need to read further
            read = self.top_k + (self.max_history if self.exclude_seen else 0)
            if self.catalogue is None:
                top_items, top_scores = result.top_items[:, :read].tolist(), result.top_scores[:, :read].tolist()
            else:  # the next candidates take the places of those the rules refuse
                rules = [clicks[p].click.rules for p in stepped]
                allowed = allowed_candidates(self.catalogue, result.top_items, rules)
                if self.new_places:  # a new item may take a place however far down it ranks: every candidate
                    new_in_row = new_candidates(self.catalogue, allowed)
                    top_items, top_scores = allowed.tolist(), result.top_scores.tolist()
                else:
                    read += max((len(rule.exclude_items) for rule in rules if rule is not None), default=0)
                    top_items, top_scores = first_allowed(allowed, result.top_scores, read)
        rows = {p: row for row, p in enumerate(stepped)}
        item_ids, item_hashes = scorer.item_ids, scorer.item_hashes

        for p in positions:
            sourced = clicks[p]
            session = sessions[sourced.click.session_id]
            if session.suggested:
                judgements.append(Judgement.of(session.suggested, sourced.click.item_id, session.served_by))
            session.items = (session.items + [sourced.click.item_id])[-self.max_history :]
            session.offsets = (session.offsets + [sourced.offset])[-self.max_history :]
            exclude = self._seen(session) if self.exclude_seen else set()
            if self.catalogue is not None:
                exclude |= refused_items(self.catalogue, sourced.click.rules)
            if p in rows:
                row = rows[p]
                if result.next_hidden is not None:
                    session.hidden = result.next_hidden[:, row, :].copy()
                if row in new_in_row:
                    items, scores = with_new_items(top_items[row], top_scores[row], self.top_k, exclude,
                                                   new_in_row[row], self.new_places)
                else:
                    items, scores = scorer.select(top_items[row], top_scores[row], self.top_k, exclude)
                source = "model"
            else:
                items, scores = ([], []) if self.catalogue is not None else scorer.popular(self.top_k, exclude)
                source = "popularity"
            if self.catalogue is not None and len(items) < self.top_k:  # the model's candidates ran dry
                topped, scores = topped_up(self.catalogue, items, scores, self.top_k, exclude, sourced.click.rules)
                if source == "model" and len(topped) > len(items):
                    source = "model+popularity"
                items = topped
            suggestion = Suggestion(
                sourced,
                [item_ids[i] for i in items],
                scores,
                source,
                scorer.name,
                scorer.version,
                self.variant,
            )
            suggestions[p] = suggestion
            session.suggested = [item_hashes[i] for i in items]
            session.served_by = (scorer.name, scorer.version, self.variant)
            session.stepped = True

    def _window(self, session: _Session, clicked: int) -> list[int]:
        """The session's last known clicks up to and including `clicked` (model indices), as many as the
        pipeline reads (`Scorer.window`; GRU4Rec alone reads none, and is not asked). Unknown items are
        skipped, as the offline evaluation drops them; at most `max_history` clicks are kept to choose from."""
        return (self.scorer.known_indices(session.items) + [clicked])[-self.scorer.window :]

    def _seen(self, session: _Session) -> set[int]:
        return set(self.scorer.known_indices(session.items))
