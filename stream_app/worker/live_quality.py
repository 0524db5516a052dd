"""The worker's live served quality: each suggestion judged by its session's next click, counted per model,
version and variant next to that version's offline figures (the judging itself: `stream_app.inference`); and
the clicks each version answered, with those on items it does not know and the suggestions topped up with popular
items."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from stream_app.inference.scoring import Scorer
from stream_app.inference.served_quality import CUTOFF
from stream_app.inference.suggestion import Judgement, Suggestion
from stream_app.worker.metrics import QUALITY_CUTOFFS, WorkerMetrics


class LiveQuality:
    """The worker's live judgements as Prometheus counters, per model, version and variant."""

    def __init__(self, metrics: WorkerMetrics, top_k: int) -> None:
        self.metrics = metrics
        self.cutoffs = [k for k in QUALITY_CUTOFFS if k <= top_k]  # a hit beyond the suggestion is unseen

    def start(self, scorer: Scorer, variant: str, exclude_seen: bool) -> None:
        """A version starts serving: its series exist from now (at 0), with its offline figures beside."""
        labels = (scorer.name, scorer.version, variant)
        self.metrics.judged.labels(*labels)
        self.metrics.clicks_scored.labels(*labels)
        self.metrics.clicks_unknown_item.labels(*labels)
        self.metrics.topped_up.labels(*labels)
        for cutoff in self.cutoffs:
            self.metrics.hits.labels(*labels, str(cutoff))
            self.metrics.reciprocal_rank.labels(*labels, str(cutoff))
        offline = scorer.offline_figures(exclude_seen)
        if offline is not None:
            self.metrics.offline_recall.labels(*labels, str(CUTOFF)).set(offline[f"recall@{CUTOFF}"])
            self.metrics.offline_mrr.labels(*labels, str(CUTOFF)).set(offline[f"mrr@{CUTOFF}"])

    def stop(self, scorer: Scorer, variant: str) -> None:
        """A version stops serving: its offline figures go (its counters stay, as counters do)."""
        for gauge in (self.metrics.offline_recall, self.metrics.offline_mrr):
            try:
                gauge.remove(scorer.name, scorer.version, variant, str(CUTOFF))
            except KeyError:  # never set: the artifact did not measure it
                pass

    def observe(self, judgements: Iterable[Judgement]) -> None:
        """Count a batch's judgements: one increment per series, however many clicks."""
        judged: Counter[tuple[str, str, str]] = Counter()
        hits: Counter[tuple[tuple[str, str, str], int]] = Counter()
        reciprocal: Counter[tuple[tuple[str, str, str], int]] = Counter()
        for judgement in judgements:
            judged[judgement.labels] += 1
            for cutoff in self.cutoffs:
                if judgement.rank is not None and judgement.rank <= cutoff:
                    hits[judgement.labels, cutoff] += 1
                    reciprocal[judgement.labels, cutoff] += 1.0 / judgement.rank
        for labels, count in judged.items():
            self.metrics.judged.labels(*labels).inc(count)
        for (labels, cutoff), count in hits.items():
            self.metrics.hits.labels(*labels, str(cutoff)).inc(count)
            self.metrics.reciprocal_rank.labels(*labels, str(cutoff)).inc(reciprocal[labels, cutoff])

    def count_clicks(self, suggestions: Iterable[Suggestion]) -> None:
        """Count a batch's answered clicks, those on items their version does not know (answered from popularity)
        and those topped up with popular items: one pass over the suggestions, one increment per series."""
        scored: Counter[tuple[str, str, str]] = Counter()
        by_source: Counter[tuple[str, tuple[str, str, str]]] = Counter()
        for suggestion in suggestions:
            labels = (suggestion.model, suggestion.artifact_version, suggestion.variant)
            scored[labels] += 1
            by_source[suggestion.source, labels] += 1
        for labels, count in scored.items():
            self.metrics.clicks_scored.labels(*labels).inc(count)
        counters = {"popularity": self.metrics.clicks_unknown_item, "model+popularity": self.metrics.topped_up}
        for (source, labels), count in by_source.items():
            if source in counters:
                counters[source].labels(*labels).inc(count)
