"""The worker's two records: a click it read (and where), and the suggestion that answers it."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from stream_app.inference.events import Click


@dataclass(frozen=True, slots=True)
class SourcedClick:
    """A valid click and where it was read, which the suggestion cites."""

    click: Click
    partition: int
    offset: int


@dataclass(frozen=True, slots=True)
class Suggestion:
    """The items suggested after one click, best first, and what made them.

    Published as JSON (`as_json`):
        {"session_id", "click": {"item_id", "timestamp", "partition", "offset"},
         "items": [item id, ...], "scores": [float, ...], "source": "model" | "popularity" | "model+popularity",
         "model", "artifact_version", "variant": "current" | "canary", "produced_at": Unix seconds}
    """

    answers: SourcedClick
    items: list[str]  # external item ids
    scores: list[float]
    # popularity: the clicked item is unknown to the model; model+popularity: the model's candidates ran dry under the
    # catalogue and the click's rules, and popular items topped the suggestion up (`stream_app.inference.serving_rules`)
    source: Literal["model", "popularity", "model+popularity"]
    model: str  # the served pipeline (`stream_app.inference.scoring.PIPELINES`)
    artifact_version: str
    variant: str  # "current", or "canary": a second version serving a share of the sessions

    @property
    def session_id(self) -> str:
        return self.answers.click.session_id

    def as_json(self, produced_at: float) -> dict[str, Any]:
        click = self.answers.click
        return {
            "session_id": click.session_id,
            "click": {
                "item_id": click.item_id,
                "timestamp": click.timestamp,
                "partition": self.answers.partition,
                "offset": self.answers.offset,
            },
            "items": self.items,
            "scores": self.scores,
            "source": self.source,
            "model": self.model,
            "artifact_version": self.artifact_version,
            "variant": self.variant,
            "produced_at": produced_at,
        }

    def encoded(self, produced_at: float) -> bytes:
        """`as_json` as the record's value, UTF-8 JSON (every id is text UTF-8 carries: `stream_app.inference.events`).
        orjson: far cheaper per click than the standard library's encoder (docs/stream_performance.md)."""
        return orjson.dumps(self.as_json(produced_at))


@dataclass(frozen=True, slots=True)
class Judgement:
    """A suggestion judged against the click that followed it in its session."""

    labels: tuple[str, str, str]  # model, artifact_version and variant of the judged suggestion
    rank: int | None  # the clicked item's position in it, 1 = first; None: not suggested

    @classmethod
    def of(cls, suggested: Sequence[int], clicked: str, labels: tuple[str, str, str]) -> Judgement:
        """`suggested` as `item_hash`es, the form a session's state keeps it in."""
        clicked_hash = item_hash(clicked)
        return cls(labels, suggested.index(clicked_hash) + 1 if clicked_hash in suggested else None)


def item_hash(item_id: str) -> int:
    """The 16-bit name of an item in a kept suggestion (the low half of the CRC-32 of its id in UTF-8): a
    suggestion is kept only to find the next click in it (`stream_app.inference.sessions.SessionState`).
    A click outside a suggestion of `top_k` items matches one by chance with probability top_k / 65,536,
    far inside the sampling error of a live hit rate (docs/stream_performance.md, Session state)."""
    return zlib.crc32(item_id.encode()) & 0xFFFF
