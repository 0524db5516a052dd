"""The worker's item table: every catalogue record, held compactly, and what each served model may show.

Every worker holds the whole catalogue (`stream_app.worker.catalogue_reader` reads it). Each served model (the
current version, a canary) gets a `CatalogueView`: a flags byte and a category code per item of its vocabulary,
numpy arrays over the model's item index, whose id-to-index dict the model's `Scorer` holds anyway. Records of items
that no served model knows wait in one dict (id -> flags and category packed in one shared int) until a model that
knows them serves. The live session-kNN's vocabulary grows with the stream: its view covers the items it had, and
takes the records of those it learns since at the next batch (`cover_new_items`), so a batch costs the new items,
never the catalogue. An item without a record is shown (the catalogue only takes items away), so an empty catalogue
changes no suggestion. Why this layout, and its bytes per item: docs/serving.md, Catalogue and rules.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from stream_app.inference.catalogue_records import ItemRecord
from stream_app.inference.scoring import Scorer

PRESENT, UNAVAILABLE, BLOCKED, NEW = 1, 2, 4, 8  # flag bits of an item's record
HIDDEN = UNAVAILABLE | BLOCKED  # never suggested
NO_CATEGORY = 0  # the category code of an item without one


class CatalogueView:
    """The catalogue over one model's item index: which of its items are hidden or new, and each one's category code.

    It covers the model's first `covered` items (all of them, unless the model learns items as it serves)."""

    def __init__(self, scorer: Scorer, catalogue: Catalogue) -> None:
        self.scorer = scorer
        self._catalogue = catalogue
        self.covered = 0
        self.flags = np.zeros(0, dtype=np.uint8)
        self.categories = np.zeros(0, dtype=np.int32)
        self.changes = 0  # counts the records applied, so that what is derived from the arrays knows when to renew
        self._shown_popular: tuple[int, np.ndarray] | None = None

    def cover_new_items(self) -> None:
        """Take the records of the items the model learnt since the last call (the live kNN's vocabulary grows with
        the stream); before each batch, so that every item the batch scores is covered."""
        if len(self.scorer.item_ids) > self.covered:
            self._catalogue.cover(self)

    def index_of(self, item_id: str) -> int | None:
        """The item's place in the arrays; None when the model does not know it or the view does not cover it yet."""
        index = self.scorer.index_of(item_id)
        return index if index is not None and index < self.covered else None

    def hidden(self, items: np.ndarray) -> np.ndarray:
        """Which of `items` (covered model indices, any shape) are unavailable or blocked."""
        return (self.flags[items] & HIDDEN) != 0

    def marked_new(self, items: np.ndarray) -> np.ndarray:
        """Which of `items` (covered model indices, any shape) the catalogue marks `new`."""
        return (self.flags[items] & NEW) != 0

    def in_categories(self, items: np.ndarray, names: Iterable[str]) -> np.ndarray:
        """Which of `items` (model indices) belong to one of the named categories."""
        known = self._catalogue.codes
        codes = [known[name] for name in names if name in known]  # a name no record gives selects none
        return np.isin(self.categories[items], codes)

    def shown_popular(self) -> np.ndarray:
        """The model's items by training popularity, most clicked first, the hidden ones left out (renewed only after
        a change: a batch's fills share it)."""
        if self._shown_popular is None or self._shown_popular[0] != self.changes:
            order = self.scorer.popular_order
            self._shown_popular = (self.changes, order[~self.hidden(order)])
        return self._shown_popular[1]

    def packed(self, index: int) -> int:
        return int(self.flags[index]) | int(self.categories[index]) << 8

    def store(self, index: int, packed: int) -> None:
        self.flags[index] = packed & 0xFF
        self.categories[index] = packed >> 8
        self.changes += 1

    def grow(self, count: int) -> None:
        """Room for `count` items, at least doubling: a vocabulary that grows by a few items a batch seldom copies."""
        if count > len(self.flags):
            more = max(count, 2 * len(self.flags)) - len(self.flags)
            self.flags = np.pad(self.flags, (0, more))
            self.categories = np.pad(self.categories, (0, more))


class Catalogue:
    """Every catalogue record, as the views of the served models and the records no served model knows."""

    def __init__(self) -> None:
        self.views: list[CatalogueView] = []
        self._waiting: dict[str, int] = {}  # packed records of the items no view covers
        self._shared: dict[int, int] = {}  # one int object per distinct packed value: the waiting dict shares them
        self.codes: dict[str, int] = {}  # category name -> code (from 1; never reused)
        self._names: list[str | None] = [None]  # code -> category name
        self.items = 0  # items with a record

    def _pack(self, record: ItemRecord) -> int:
        code = NO_CATEGORY
        if record.category is not None:
            code = self.codes.setdefault(record.category, len(self._names))
            if code == len(self._names):
                self._names.append(record.category)
        flags = PRESENT | (0 if record.available else UNAVAILABLE) | (BLOCKED if record.blocked else 0)
        flags |= NEW if record.new else 0
        packed = flags | code << 8
        return self._shared.setdefault(packed, packed)

    def _unpack(self, packed: int) -> ItemRecord:
        category = self._names[packed >> 8]
        return ItemRecord(not packed & UNAVAILABLE, bool(packed & BLOCKED), category, bool(packed & NEW))

    def _lookup(self, item_id: str) -> int:
        """The item's packed record; 0 when it has none."""
        for view in self.views:
            if (index := view.index_of(item_id)) is not None:
                return view.packed(index)
        return self._waiting.get(item_id, 0)

    def record(self, item_id: str) -> ItemRecord | None:
        """What the catalogue holds of an item (its record's extra attributes are not kept); None: no record."""
        packed = self._lookup(item_id)
        return self._unpack(packed) if packed else None

    def apply(self, item_id: str, record: ItemRecord | None) -> None:
        """Take one record (None: a tombstone) into the table and every view."""
        packed = self._pack(record) if record is not None else 0
        self.items += bool(packed) - bool(self._lookup(item_id))
        known = False
        for view in self.views:
            if (index := view.index_of(item_id)) is not None:
                view.store(index, packed)
                known = True
        if known or not packed:
            self._waiting.pop(item_id, None)
        else:
            self._waiting[item_id] = packed

    def view(self, scorer: Scorer) -> CatalogueView:
        """A view for a model that starts serving; the records of its items move into it (`release` it when the
        model stops serving)."""
        view = CatalogueView(scorer, self)
        self.cover(view)
        self.views.append(view)
        return view

    def cover(self, view: CatalogueView) -> None:
        """Extend `view` over the items its model knows beyond those it covers, with their records: from the dict,
        or from another view that covers the item."""
        item_ids = view.scorer.item_ids
        start, end = view.covered, len(item_ids)
        view.grow(end)
        for index in range(start, end):
            item_id = item_ids[index]
            packed = self._waiting.pop(item_id, None)
            if packed is None:
                packed = next((other.packed(j) for other in self.views
                               if (j := other.index_of(item_id)) is not None), 0)
            if packed:
                view.store(index, packed)
        view.covered = end

    def release(self, view: CatalogueView) -> None:
        """The view's model stops serving: the records of items no other served model knows wait in the dict."""
        self.views.remove(view)
        item_ids = view.scorer.item_ids
        for index in np.flatnonzero(view.flags & PRESENT).tolist():
            item_id = item_ids[index]
            if all(other.index_of(item_id) is None for other in self.views):
                self._waiting[item_id] = self._shared.setdefault(view.packed(index), view.packed(index))
