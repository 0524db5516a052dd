"""Which library serves an approximate top-K of a retriever's scores: faiss-cpu against hnswlib, by measurement.

    PYTHONPATH=. python bench/ann_libraries.py --artifact DIR [--sizes 43097 250000 1000000] [--queries 5000]

The artifact is a GRU4Rec trained on Diginetica (`python -m training.retrain --dataset diginetica_srgnn ...`). Its
item vectors ([W_y | b_y], scored against [h | 1]) are grown to each catalogue size by synthetic items drawn from a
Gaussian fitted to the real ones (`grown_vectors`); the queries are the model's real states after `--queries` test
clicks, and their targets (the next clicks) are real items. Per library and setting it prints the index's build
time, its size, the time to search a batch of 256 queries on one thread, the recall of the exact top-20 and
top-100, and Recall@20 of the targets (exact scoring's beside it). docs/decisions.md records the choice.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from bench.stream_throughput import test_sessions
from stream_app.inference import item_index
from stream_app.inference.scoring import Scorer
from stream_app.settings import get_settings

BATCH = 256
TOP = 100  # what serving reads of a retriever's list


def grown_vectors(real: np.ndarray, n_items: int, seed: int = 0) -> np.ndarray:
    """`real` followed by synthetic rows drawn from a Gaussian with the real rows' mean and covariance."""
    extra = n_items - len(real)
    if extra <= 0:
        return real
    rng = np.random.default_rng(seed)
    drawn = rng.multivariate_normal(real.mean(axis=0), np.cov(real, rowvar=False), size=extra, method="cholesky")
    return np.vstack([real, drawn.astype(np.float32)])


def test_queries(scorer: Scorer, sessions: list[list[str]], count: int, seed: int = 0,
                 chunk: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """`count` test predictions drawn at random: GRU4Rec's query after each click ([h | 1], h its top layer's new
    state) and the next click's item index."""
    queries, targets = [], []
    known = [k for s in sessions if len(k := scorer.known_indices(s)) > 1]
    for start in range(0, len(known), chunk):
        block = known[start : start + chunk]
        hidden = scorer.zero_hidden(len(block))
        for position in range(max(map(len, block)) - 1):
            rows = [row for row, items in enumerate(block) if len(items) > position + 1]
            step = scorer.step(np.array([block[r][position] for r in rows]), hidden[:, rows])
            hidden[:, rows] = step.next_hidden
            queries.append(step.next_hidden[-1])
            targets.extend(block[r][position + 1] for r in rows)
    queries_all = np.vstack(queries)
    queries_all = np.hstack([queries_all, np.ones((len(queries_all), 1), dtype=np.float32)])
    chosen = np.sort(np.random.default_rng(seed).choice(len(targets), min(count, len(targets)), replace=False))
    return np.ascontiguousarray(queries_all[chosen]), np.asarray(targets)[chosen]


def item_vectors(artifact: Path) -> np.ndarray:
    """GRU4Rec's [W_y | b_y] from the artifact's checkpoint."""
    import torch

    state = torch.load(artifact / "gru4rec.pt", map_location="cpu", weights_only=True)["state_dict"]
    return torch.cat([state["output_weights"], state["output_bias"]], dim=1).numpy().astype(np.float32)


def exact_top(vectors: np.ndarray, queries: np.ndarray, k: int, chunk: int = 256) -> np.ndarray:
    """Each query's k best items by inner product, best first (numpy, in chunks of queries)."""
    rows = []
    for start in range(0, len(queries), chunk):
        scores = queries[start : start + chunk] @ vectors.T
        top = np.argpartition(-scores, k, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
        rows.append(np.take_along_axis(top, order, axis=1))
    return np.vstack(rows)


@dataclass
class Candidate:
    name: str
    build: Callable[[np.ndarray], object]
    searches: dict[str, Callable[[object, np.ndarray], np.ndarray]]  # setting -> search(index, queries) -> ids
    size: Callable[[object], int]


def faiss_hnsw(m: int, ef_construction: int, efs: tuple[int, ...]) -> Candidate:
    def build(vectors: np.ndarray):
        index = faiss.IndexHNSWFlat(vectors.shape[1], m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ef_construction
        index.add(vectors)
        return index

    def search(ef: int):
        def run(index, queries):
            return index.search(queries, TOP, params=faiss.SearchParametersHNSW(efSearch=ef))[1]
        return run

    return Candidate(f"faiss HNSWFlat M={m} efC={ef_construction}", build,
                     {f"efSearch={ef}": search(ef) for ef in efs}, lambda index: faiss.serialize_index(index).nbytes)


def faiss_ivf(lists_per_sqrt: int, probes: tuple[int, ...]) -> Candidate:
    def build(vectors: np.ndarray):
        nlist = lists_per_sqrt * int(np.sqrt(len(vectors)))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(vectors.shape[1]), vectors.shape[1], nlist,
                                   faiss.METRIC_INNER_PRODUCT)
        sample = vectors[np.random.default_rng(0).choice(len(vectors), min(len(vectors), 64 * nlist), replace=False)]
        index.train(sample)
        index.add(vectors)
        return index

    def search(nprobe: int):
        def run(index, queries):
            return index.search(queries, TOP, params=faiss.SearchParametersIVF(nprobe=nprobe))[1]
        return run

    return Candidate(f"faiss IVFFlat nlist={lists_per_sqrt}·√n", build,
                     {f"nprobe={p}": search(p) for p in probes}, lambda index: faiss.serialize_index(index).nbytes)


def served_ivf(probes: tuple[int, ...]) -> Candidate:
    """The index the worker searches, built and searched as `stream_app.inference.item_index` does."""
    def build(vectors: np.ndarray):
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "items.faiss"
            item_index.build(vectors, path)
            return faiss.read_index(str(path))

    def search(nprobe: int):
        def run(index, queries):
            padded = item_index.padded(queries, index.d)
            return index.search(padded, TOP, params=faiss.SearchParametersIVF(nprobe=nprobe))[1]
        return run

    return Candidate("faiss IVF float16 codes, padded (served)", build,
                     {f"nprobe={p}": search(p) for p in probes}, lambda index: faiss.serialize_index(index).nbytes)


def hnswlib_hnsw(m: int, ef_construction: int, efs: tuple[int, ...]) -> Candidate:
    def build(vectors: np.ndarray):
        import hnswlib  # here: bench/big_catalogue.py borrows this module's vectors where hnswlib is not installed

        index = hnswlib.Index(space="ip", dim=vectors.shape[1])
        index.init_index(max_elements=len(vectors), M=m, ef_construction=ef_construction)
        index.add_items(vectors, num_threads=os.cpu_count())
        return index

    def search(ef: int):
        def run(index, queries):
            index.set_ef(ef)
            return index.knn_query(queries, k=TOP, num_threads=1)[0].astype(np.int64)
        return run

    def size(index) -> int:
        with tempfile.TemporaryDirectory() as tmp:
            index.save_index(str(Path(tmp) / "index"))
            return (Path(tmp) / "index").stat().st_size

    return Candidate(f"hnswlib M={m} efC={ef_construction}", build, {f"ef={ef}": search(ef) for ef in efs}, size)


CANDIDATES = (
    served_ivf((16, 64)),
    faiss_hnsw(32, 80, (128, 256)),
    hnswlib_hnsw(32, 80, (128, 256)),
    faiss_ivf(4, (16, 64)),
)


def overlap(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Mean share of each row's exact top-k that `found`'s first k hold."""
    return float(np.mean([len(set(f[:k]) & set(t[:k])) / k for f, t in zip(found.tolist(), truth.tolist())]))


def recall_at_20(found: np.ndarray, targets: np.ndarray) -> float:
    return float(np.mean((found[:, :20] == targets[:, None]).any(axis=1)))


def timed_batches(search, index, queries: np.ndarray) -> tuple[np.ndarray, float]:
    """All queries' results, and the mean seconds per batch of BATCH."""
    results, started = [], time.perf_counter()
    for start in range(0, len(queries), BATCH):
        results.append(search(index, queries[start : start + BATCH]))
    return np.vstack(results), (time.perf_counter() - started) * BATCH / len(queries)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifact", type=Path, required=True)
    parser.add_argument("--sizes", type=int, nargs="+", default=[43_097, 250_000, 1_000_000])
    parser.add_argument("--queries", type=int, default=5_000, help="test predictions sampled")
    parser.add_argument("--only", default="", help="measure only the candidates whose name holds this")
    args = parser.parse_args()
    faiss.omp_set_num_threads(1)  # queries on one thread, as the worker's onnxruntime call shares two cores
    scorer = Scorer(args.artifact)
    _, sessions = test_sessions(args.artifact, get_settings())
    queries, targets = test_queries(scorer, sessions, args.queries)
    real = item_vectors(args.artifact)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}; faiss "
          f"{faiss.__version__}, hnswlib 0.8.0; {len(queries)} test predictions, {real.shape[1]}-dim item vectors,"
          f" batches of {BATCH}, top {TOP}; {time.strftime('%Y-%m-%d %H:%M')}")
    for n_items in args.sizes:
        vectors = grown_vectors(real, n_items)
        started = time.perf_counter()
        truth = exact_top(vectors, queries, TOP)
        exact_seconds = (time.perf_counter() - started) * BATCH / len(queries)
        print(f"{n_items:,} items: exact {1000 * exact_seconds:.1f} ms per batch (numpy, BLAS threads), "
              f"Recall@20 {recall_at_20(truth, targets):.4f}; vectors {vectors.nbytes / 2**20:.0f} MiB", flush=True)
        for candidate in (c for c in CANDIDATES if args.only in c.name):
            faiss.omp_set_num_threads(os.cpu_count())
            started = time.perf_counter()
            index = candidate.build(vectors)
            built = time.perf_counter() - started
            faiss.omp_set_num_threads(1)
            size = candidate.size(index)
            for setting, search in candidate.searches.items():
                found, seconds = timed_batches(search, index, queries)
                print(f"    {candidate.name} {setting}: build {built:.1f} s, {size / 2**20:.0f} MiB, "
                      f"{1000 * seconds:.1f} ms per batch; recall of the exact top-20 {overlap(found, truth, 20):.4f},"
                      f" top-100 {overlap(found, truth, 100):.4f}; Recall@20 {recall_at_20(found, targets):.4f}",
                      flush=True)
            del index


if __name__ == "__main__":
    main()
