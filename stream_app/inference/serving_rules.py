"""What a suggestion may hold: items the catalogue shows and its click's own rules allow, still `top_k` of them.

A retriever's graph returns its best N items (the artifact's `top_k`, 100 unless training was told otherwise) for a
served K of 20, so the model's next candidates take the places of hidden or refused ones; when the N run dry, the
most popular items that pass every rule top the suggestion up (source `model+popularity`). docs/serving.md,
Catalogue and rules.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from itertools import islice

import numpy as np

from stream_app.inference.catalogue import CatalogueView
from stream_app.inference.events import ClickRules

REFUSED = -1  # in place of a candidate the suggestion may not hold


def allowed_candidates(view: CatalogueView, top_items: np.ndarray, rules: Sequence[ClickRules | None]) -> np.ndarray:
    """`top_items` [B, N] (model indices) with REFUSED in place of each hidden item and, per row, each item outside
    its click's `rules.categories`."""
    allowed = np.where(view.hidden(top_items), REFUSED, top_items)
    for row, rule in enumerate(rules):
        if rule is not None and rule.categories is not None:
            allowed[row] = np.where(view.in_categories(top_items[row], rule.categories), allowed[row], REFUSED)
    return allowed


def first_allowed(allowed: np.ndarray, scores: np.ndarray, count: int) -> tuple[list[list[int]], list[list[float]]]:
    """Per row of `allowed` (`allowed_candidates`), its first `count` allowed candidates and their scores, in
    ranking order (REFUSED ones after them where fewer are allowed), as lists: the rest would never be read, and
    making Python objects of every candidate cost the whole worker far more than the rules themselves."""
    order = np.argsort(allowed == REFUSED, axis=1, kind="stable")[:, :count]
    return np.take_along_axis(allowed, order, 1).tolist(), np.take_along_axis(scores, order, 1).tolist()


def refused_items(view: CatalogueView, rules: ClickRules | None) -> set[int]:
    """What a row's selection leaves out besides the session's clicked items: REFUSED, and the click's
    `rules.exclude_items` the model knows."""
    refused = {REFUSED}
    if rules is not None:
        refused.update(view.scorer.known_indices(sorted(rules.exclude_items)))
    return refused


def topped_up(view: CatalogueView, items: list[int], scores: list[float], k: int, exclude: Collection[int],
              rules: ClickRules | None) -> tuple[list[int], list[float]]:
    """`items` and `scores` followed by the most popular items that pass (their training click counts as scores),
    up to `k` items; fewer only when fewer items pass at all."""
    popular = view.shown_popular()
    if rules is not None and rules.categories is not None:
        popular = popular[view.in_categories(popular, rules.categories)]
    taken = set(items)
    wanted = k - len(items)
    # at most len(exclude) + len(taken) of the first candidates are skipped
    candidates = popular[: wanted + len(exclude) + len(taken)].tolist()
    more = list(islice((item for item in candidates if item not in exclude and item not in taken), wanted))
    return items + more, scores + view.scorer.popularity[more].tolist()
