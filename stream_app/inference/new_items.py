"""Places kept in a suggestion for the items the catalogue marks `new`.

An item launched this morning has few clicks yet, so the pipeline that scores it (the live session-kNN as soon as
sessions click it, a model once an update knows it) ranks it below the established items. With
`NEXTCLICK_NEW_ITEMS_SHARE`, up to that share of a suggestion's `top_k` places (rounded down) go to the best-scored
new items among the row's candidates, even when they rank lower; places no new candidate takes go back to the
ranking, and a new item that ranks in the top `top_k` on its own keeps its place (a floor, not a cap). Only the
pipeline's candidates count: nothing is added that it did not score. docs/serving.md, Catalogue and rules.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence

import numpy as np

from stream_app.inference.catalogue import CatalogueView
from stream_app.inference.serving_rules import REFUSED


def new_places(share: float, top_k: int) -> int:
    """The places a suggestion of `top_k` items keeps for new items (rounded to 6 digits first: 0.29 x 100 is 29)."""
    return math.floor(round(share * top_k, 6))


def new_candidates(view: CatalogueView, allowed: np.ndarray) -> dict[int, set[int]]:
    """Per row of `allowed` [B, N] (`serving_rules.allowed_candidates`: REFUSED in place of what the rules refuse),
    its candidates marked new; rows without one are left out, so most rows cost nothing more."""
    new = view.marked_new(allowed) & (allowed != REFUSED)
    return {row: set(allowed[row][new[row]].tolist()) for row in np.flatnonzero(new.any(axis=1)).tolist()}


def with_new_items(items: Sequence[int], scores: Sequence[float], k: int, exclude: Collection[int],
                   new: Collection[int], places: int) -> tuple[list[int], list[float]]:
    """The best `k` of a row's ranked candidates outside `exclude`, up to `places` of them the best of `new` however
    they rank; in ranking order, so the scores stay best first."""
    reserved = min(places, sum(item not in exclude for item in new))
    open_places = k - reserved
    chosen, chosen_scores = [], []
    for item, score in zip(items, scores, strict=True):
        if not reserved and not open_places:
            break
        if item in exclude:
            continue
        if reserved and item in new:
            reserved -= 1
        elif open_places:
            open_places -= 1
        else:  # only reserved places are left, and this is not a new item
            continue
        chosen.append(item)
        chosen_scores.append(score)
    return chosen, chosen_scores
