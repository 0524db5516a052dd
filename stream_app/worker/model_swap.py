"""Which model a worker serves, and how it changes without a restart.

A worker serves either a fixed artifact directory (`serving_artifact_dir`, never swapped) or the
artifact store's current version, following every promotion and rollback: it checks the pointer
every `model_poll_interval` seconds and at once when the model-updates topic announces a change.
A new version is prepared in a background thread (copied from a remote store, every sha256 checked
by the Scorer, a smoke inference run through the real serving path) while the old one keeps
serving; the swap itself is one assignment on the event loop, which the batch loop reads once per
batch, so a swap always falls between two batches: no click is dropped, none is answered twice.
A version that fails any of this is refused (log line, `nextclick_model_swaps_total{outcome="refused"}`)
and the old model keeps serving; it is tried again only when the pointer is written again (one
that could not be fetched from the store, a network or storage failure, is tried at every check).

A canary is a second version loaded next to the current one with the same checks; which sessions it
serves is `stream_app.worker.canary`'s. When the canary stops, or is promoted, its sessions go to the
current version, their state rebuilt like any other version change.

Session state needs nothing here: each state records the version that computed its hidden state,
and `SessionRecommender` rebuilds a state from another version by replaying the session's clicks,
on that session's next click (see `stream_app.inference.sessions`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import itertools
import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path

from stream_app.inference.artifact_format import MANIFEST, ArtifactError
from stream_app.inference.catalogue import Catalogue
from stream_app.inference.events import Click
from stream_app.inference.live_knn import LiveNeighbours
from stream_app.inference.served_pipeline import served_scorer
from stream_app.inference.sessions import BatchResult, SessionRecommender, SessionState
from stream_app.inference.suggestion import SourcedClick
from stream_app.release import announcements
from stream_app.release.store import ArtifactStore, Canary, Pointer
from stream_app.settings import Settings
from stream_app.worker.canary import routed_batch
from stream_app.worker.live_quality import LiveQuality
from stream_app.worker.metrics import WorkerMetrics

logger = logging.getLogger(__name__)

SMOKE_SESSION = "nextclick-smoke-check"
LISTEN_RETRY_SECONDS = 5.0


def smoke_check(recommender: SessionRecommender) -> None:
    """Serve a two-click session in two batches, as the worker would, and check what comes back.

    Catches graphs that load but answer wrongly: too few items (a graph top-K below the served
    top_k), ids outside the vocabulary, non-finite or unsorted scores, a hidden state that does not
    fit the next call. Raises ArtifactError.
    """
    scorer = recommender.scorer
    clicked = scorer.item_ids[:2]
    table: dict[bytes, SessionState] = {}
    vocabulary = set(scorer.item_ids)
    for offset, item in enumerate(clicked):
        click = SourcedClick(Click(SMOKE_SESSION, item, 0.0), partition=0, offset=offset)
        try:
            result = recommender.recommend([click], table, now=0.0)
        except Exception as error:  # e.g. onnxruntime refusing the inputs the manifest describes
            raise ArtifactError(f"smoke inference failed: {error!r}") from error
        table.update(result.states)
        [suggestion] = result.suggestions
        items, scores = suggestion.items, suggestion.scores
        seen = offset + 1 if recommender.exclude_seen else 0
        expected = min(recommender.top_k, len(scorer.item_ids) - seen)
        problems = [
            f"{len(items)} items instead of {expected}" if len(items) != expected else "",
            f"{len(scores)} scores for {len(items)} items" if len(scores) != len(items) else "",
            "ids outside the vocabulary" if not vocabulary.issuperset(items) else "",
            "non-finite scores" if not all(math.isfinite(s) for s in scores) else "",
            "scores not best first" if any(a < b for a, b in itertools.pairwise(scores)) else "",
            f"source {suggestion.source!r}" if suggestion.source != "model" else "",
        ]
        if any(problems):
            raise ArtifactError("smoke inference: " + "; ".join(p for p in problems if p))


def freeze_long_lived_objects() -> None:
    """Take what the worker has built by its first served version (the libraries, faust's machinery, the model)
    out of the garbage collector's full passes. Those objects live as long as the process, and a full pass over
    them holds the event loop, and every click waiting on it, for tens of milliseconds (docs/stream_performance.md);
    what a click makes dies young, in the passes that stay cheap. A version swapped out later is still freed: it
    holds no reference cycle, so its reference counts free it (tests/stream_app/worker/test_long_lived_objects.py)."""
    gc.collect()
    gc.freeze()


def created_timestamp(directory: Path) -> float:
    """The manifest's `created_at` as Unix seconds (the served-model-age metric)."""
    created_at = json.loads((directory / MANIFEST).read_text()).get("created_at")
    try:
        return datetime.fromisoformat(created_at).timestamp()
    except (TypeError, ValueError):
        raise ArtifactError(f"{directory / MANIFEST}: no valid created_at ({created_at!r})") from None


class ServedModel:
    """The recommender a worker serves now, and the loading and swapping that replace it."""

    def __init__(self, settings: Settings, metrics: WorkerMetrics, loaded: asyncio.Event,
                 catalogue: Catalogue | None = None, neighbours: LiveNeighbours | None = None) -> None:
        self.settings = settings
        self.neighbours = neighbours  # the kNN pipelines' live index (`vsknn`, `artifact`); None: none kept
        self.metrics = metrics
        self.catalogue = catalogue  # what may be shown; each version served gets its view of it (None: no rules)
        self.loaded = loaded  # set once a first model serves (readiness)
        self.recommender: SessionRecommender | None = None
        self.canary: tuple[SessionRecommender, float] | None = None  # and the share of sessions it serves
        self.live_quality = LiveQuality(metrics, settings.top_k)
        self._announced = asyncio.Event()

    def recommend(
        self, clicks: list[SourcedClick], table: Mapping[bytes, SessionState], now: float
    ) -> BatchResult:
        """One batch, each click scored by its session's variant (the canary, or the current version); its clicks
        counted per version, those on items the version does not know too (`LiveQuality.count_clicks`)."""
        current, canary = self.recommender, self.canary  # read once: swaps land between batches
        assert current is not None, "no model is served yet"
        result = routed_batch(current, canary, clicks, table, now)
        self.live_quality.count_clicks(result.suggestions)
        return result

    def prepare(self, directory: Path, variant: str = "current") -> tuple[SessionRecommender, float]:
        """Load and check an artifact (blocking: run it in a thread); raises on any problem. The kNN pipelines
        serve the worker's session index as the artifact's version (`stream_app.inference.served_pipeline`)."""
        scorer = served_scorer(directory, self.settings, self.neighbours)
        created = created_timestamp(directory)
        with scorer.neighbours.lock if scorer.neighbours else contextlib.nullcontext():
            recommender = SessionRecommender.from_settings(scorer, self.settings, variant=variant)
            smoke_check(recommender)
        recommender.observe_inference = self.metrics.inference_latency.observe  # served calls only
        return recommender, created

    def _started(self, recommender: SessionRecommender, variant: str, previous: SessionRecommender | None) -> None:
        """Catalogue view, metrics and log of a version that serves from now on (`previous`: the one it replaces)."""
        scorer = recommender.scorer
        if self.catalogue is not None:
            recommender.catalogue = self.catalogue.view(scorer)
        if previous is not None:
            self._stopped(previous, variant)
        self.live_quality.start(scorer, variant, recommender.exclude_seen)
        self.metrics.model.labels(variant=variant).info(
            {
                "name": scorer.name,
                "artifact_version": scorer.version,
                "provider": scorer.provider,
                "exclude_seen": str(recommender.exclude_seen).lower(),
            }
        )
        logger.info(
            "%s: %s clicked items from suggestions (%s)",
            scorer.version,
            "excluding" if recommender.exclude_seen else "keeping",
            scorer.exclusion_policy(self.settings.exclude_seen)[1],
        )

    async def run(self) -> None:
        """Serve the fixed artifact, or the store's current version and every later one."""
        if self.settings.serving_artifact_dir is not None:
            await self._serve_fixed(self.settings.serving_artifact_dir)
        else:
            await self._follow(ArtifactStore.from_settings(self.settings))

    async def _serve_fixed(self, directory: Path) -> None:
        while not await self._swap(lambda: directory, f"artifact directory {directory}"):
            await asyncio.sleep(self.settings.model_retry_interval)

    async def _follow(self, store: ArtifactStore) -> None:
        listener = asyncio.create_task(self._listen()) if self.settings.model_updates_topic else None
        done: tuple[str, float] | None = None  # the last pointer served or refused: not tried again
        canary_done: Canary | None = None  # likewise for the canary pointer
        waiting_logged = False
        try:
            while True:
                self._announced.clear()
                try:
                    pointer: Pointer | None = await asyncio.to_thread(store.current)
                except Exception:
                    self.metrics.errors.labels(stage="model_watch").inc()
                    logger.exception("reading the current version of %s failed", store.location)
                    pointer = None
                if pointer is not None and (key := (pointer.version, pointer.updated_at)) != done:
                    serving = self.recommender.scorer.version if self.recommender else None
                    served = pointer.version == serving or await self._swap(
                        functools.partial(store.local_copy, pointer.version),
                        f"version {pointer.version} ({pointer.action}) of {store.location}",
                    )
                    if served is not None:  # None: not fetched, so try again at the next check
                        done = key
                elif pointer is None and not waiting_logged:
                    logger.warning("no current version in %s yet; waiting for a promotion", store.location)
                    waiting_logged = True
                if pointer is not None:
                    canary_done = await self._follow_canary(store, pointer, canary_done)
                try:
                    await asyncio.wait_for(self._announced.wait(), self.settings.model_poll_interval)
                except TimeoutError:
                    pass
        finally:
            if listener is not None:
                listener.cancel()

    async def _follow_canary(self, store: ArtifactStore, pointer: Pointer, done: Canary | None) -> Canary | None:
        """Start, change or stop the canary as the store says; returns the canary pointer dealt with."""
        try:
            canary = await asyncio.to_thread(store.canary)
        except Exception:
            self.metrics.errors.labels(stage="model_watch").inc()
            logger.exception("reading the canary of %s failed", store.location)
            return done
        if canary is not None and canary.version == pointer.version:
            canary = None  # promoted: the store removes the canary pointer right after the current one
        if canary == done:
            return done
        if canary is None:
            self._stop_canary()
            return None
        if self.canary is not None and self.canary[0].scorer.version == canary.version:
            self.canary = (self.canary[0], canary.share)  # only the share changed
            logger.info("canary %s now serves %.1f%% of the sessions", canary.version, 100 * canary.share)
            return canary
        served = await self._swap(
            functools.partial(store.local_copy, canary.version),
            f"canary {canary.version} for {100 * canary.share:.1f}% of the sessions of {store.location}",
            variant="canary",
            share=canary.share,
        )
        return done if served is None else canary

    def _stopped(self, recommender: SessionRecommender, variant: str) -> None:
        """A version stops serving as `variant`: its offline figures and its catalogue view go."""
        self.live_quality.stop(recommender.scorer, variant)
        if self.catalogue is not None and recommender.catalogue is not None:
            self.catalogue.release(recommender.catalogue)

    def _stop_canary(self) -> None:
        if self.canary is None:
            return
        (recommender, _), self.canary = self.canary, None
        self._stopped(recommender, "canary")
        self.metrics.model.remove("canary")
        logger.info("canary %s stopped: its sessions go to the current version", recommender.scorer.version)

    async def _listen(self) -> None:
        """Wake the follower on every announcement; reconnect after errors (polling covers the gap)."""
        while True:
            try:
                await announcements.listen(self.settings, lambda update: self._announced.set())
            except asyncio.CancelledError:
                raise
            except Exception:
                self.metrics.errors.labels(stage="model_updates").inc()
                logger.exception("reading %s failed; retrying", self.settings.model_updates_topic)
                await asyncio.sleep(LISTEN_RETRY_SECONDS)

    async def _swap(
        self, locate: Callable[[], Path], what: str, variant: str = "current", share: float = 0.0
    ) -> bool | None:
        """Fetch the artifact (`locate`), prepare it, serve it as `variant` (a canary: for `share` of the
        sessions): True; False when it is refused; None when it could not be fetched (a store or network
        failure: worth another try)."""
        started = time.monotonic()
        try:
            directory = await asyncio.to_thread(locate)
        except Exception as error:
            self.metrics.errors.labels(stage="model_fetch").inc()
            logger.error("cannot fetch %s: %r; trying again at the next check", what, error)
            return None
        try:
            recommender, created = await asyncio.to_thread(self.prepare, directory, variant)
        except Exception as error:
            self.metrics.errors.labels(stage="model_load").inc()
            self.metrics.model_swaps.labels(outcome="refused").inc()
            serving = self.recommender.scorer.version if self.recommender else "nothing"
            logger.error("model swap refused: %s: %r; still serving %s", what, error, serving)
            return False
        scorer = recommender.scorer
        self.metrics.model_swaps.labels(outcome="success").inc()
        if variant == "canary":
            previous = self.canary[0] if self.canary else None
            self.canary = (recommender, share)
        else:
            previous, self.recommender = self.recommender, recommender  # between two batches (module doc)
            self.metrics.model_created.set(created)
            if not self.loaded.is_set():
                freeze_long_lived_objects()
            self.loaded.set()
        self._started(recommender, variant, previous)
        logger.info(
            "serving %s artifact %s as the %s version on %s (was %s): %s, loaded and checked in %.2f s",
            scorer.name,
            scorer.version,
            variant,
            scorer.provider,
            previous.scorer.version if previous else "nothing",
            what,
            time.monotonic() - started,
        )
        return True
