"""A retriever's top K searched in an index of its item vectors, so that a click's cost hardly grows with the catalogue.

A retriever scores item i as query · vectors[i] (`models.export`, the query graphs). Scoring every item and taking the
top K costs the whole catalogue per click; a faiss inverted-file index (IVF, exact inner products over the lists the
query is nearest to) searches `nprobe` of its `nlist` lists instead. The lists hold each vector as float16 codes,
zero-padded to a multiple of 16 dimensions: scanning them is bound by memory reads, half as many as float32's, and faiss
scans codes with SIMD only in whole blocks of 16. Why faiss and these settings, by measurement: docs/decisions.md,
Top-K through an index. Built at export time (`build`), shipped in the artifact under the retriever's `index` entry
with the sha256 of the vectors it holds; `ItemIndex` refuses an index that does not hold exactly those vectors, in
the catalogue's order and number.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path

import numpy as np

from stream_app.inference.artifact_format import ArtifactError

LIBRARY = "faiss-cpu"
LISTS_PER_SQRT_ITEMS = 4  # nlist = 4·√n: a list holds about √n / 4 items
PROBES = 16  # lists searched per query
DIMENSION_BLOCK = 16  # the index's dimensions, a multiple of this: faiss's SIMD scan of codes reads whole blocks
TRAINING_POINTS_PER_LIST = 64
PARALLEL_FROM = 64  # queries in one search from which it runs on every thread: a backlog's batches, not a trickle's
HASHED_ROWS = 65_536  # vectors read back at a time when checking an index


def installed() -> bool:
    """Whether faiss (the `ann` extra) is there to search an index: `auto` scores exactly without it."""
    return importlib.util.find_spec("faiss") is not None


def _faiss():
    """faiss, imported on first use: only a worker that searches an index needs the `ann` extra."""
    if not installed():
        raise ArtifactError("searching an item index needs faiss-cpu: pip install 'nextclick[ann]'")
    import faiss

    return faiss


def vectors_sha256(vectors: np.ndarray) -> str:
    """The sha256 of float32 vectors' bytes, row by row in C order (what `load` compares the index's content with)."""
    digest = hashlib.sha256()
    for start in range(0, len(vectors), HASHED_ROWS):
        digest.update(np.ascontiguousarray(vectors[start : start + HASHED_ROWS], dtype=np.float32).tobytes())
    return digest.hexdigest()


def padded(vectors: np.ndarray, dim: int) -> np.ndarray:
    """`vectors` [n, d] (float32) with zero columns up to `dim`: the same inner products with padded queries."""
    if vectors.shape[1] == dim:
        return np.ascontiguousarray(vectors, dtype=np.float32)
    wide = np.zeros((len(vectors), dim), dtype=np.float32)
    wide[:, : vectors.shape[1]] = vectors
    return wide


def build(vectors: np.ndarray, path: Path, seed: int = 0) -> dict:
    """Index `vectors` [n, d] (float32) into `path`; returns the manifest's `index` entry for it."""
    faiss = _faiss()
    n_items, dim = vectors.shape
    index_dim = -(-dim // DIMENSION_BLOCK) * DIMENSION_BLOCK
    vectors = padded(vectors, index_dim)
    nlist = max(1, min(n_items // TRAINING_POINTS_PER_LIST, LISTS_PER_SQRT_ITEMS * int(np.sqrt(n_items))))
    index = faiss.IndexIVFScalarQuantizer(faiss.IndexFlatIP(index_dim), index_dim, nlist,
                                          faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
    sample = np.random.default_rng(seed).choice(n_items, min(n_items, TRAINING_POINTS_PER_LIST * nlist), replace=False)
    index.train(vectors[np.sort(sample)])
    index.add(vectors)
    faiss.write_index(index, str(path))
    return {"file": path.name, "library": LIBRARY, "kind": "IVFScalarQuantizer", "codes": "fp16", "nlist": nlist,
            "nprobe": min(PROBES, nlist), "n_items": n_items, "dim": dim, "index_dim": index_dim,
            "vectors_sha256": held_sha256(index)}


def held_sha256(index) -> str:
    """The sha256 (`vectors_sha256`) of the vectors `index` holds, its codes decoded, in item order."""
    faiss = _faiss()
    ivf = faiss.extract_index_ivf(index)
    ivf.make_direct_map()  # item index -> its place in a list: reading the vectors back in item order
    try:
        return vectors_sha256(_Rows(index))
    finally:
        ivf.set_direct_map_type(faiss.DirectMap.NoMap)  # only the check needs it


class ItemIndex:
    """A loaded, checked index: the best k items of each query by inner product, best first."""

    def __init__(self, artifact_dir: Path, entry: dict, n_items: int, threads: int = 1) -> None:
        if threads != 1:  # idle OpenMP threads sleep rather than spin against the event loop (read as faiss loads)
            os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        faiss = _faiss()
        path = artifact_dir / entry["file"]
        try:
            index = faiss.read_index(str(path))
        except RuntimeError as error:
            raise ArtifactError(f"{path} is not a faiss index: {error}") from None
        index_dim = entry.get("index_dim", entry["dim"])  # an index without padding (float32 lists) names none
        if not (index.ntotal == entry["n_items"] == n_items) or index.d != index_dim:
            raise ArtifactError(f"{path} holds {index.ntotal} vectors of {index.d}, the catalogue has {n_items} items "
                                f"and the manifest says {entry['n_items']} of {index_dim}")
        held = held_sha256(index)
        if held != entry["vectors_sha256"]:
            raise ArtifactError(f"{path} does not hold the item vectors it was built from (sha256 {held[:12]}, "
                                f"manifest {entry['vectors_sha256'][:12]}): it is another model's index")
        self.index = index
        self.threads = threads or os.cpu_count() or 1  # 0: every core, as onnxruntime reads it
        self.params = faiss.SearchParametersIVF(nprobe=int(entry["nprobe"]))
        self._faiss = faiss

    def top(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(items int64 [B, k], scores float32 [B, k]) of each query row, best first. A few queries search on one
        thread: waking the others costs more than they save, and a click at a steady rate waits for it."""
        self._faiss.omp_set_num_threads(self.threads if len(queries) >= PARALLEL_FROM else 1)
        scores, items = self.index.search(padded(queries, self.index.d), k, params=self.params)
        return items, scores


class _Rows:
    """An index's vectors read back in item order, a block at a time (`vectors_sha256` slices it)."""

    def __init__(self, index) -> None:
        self.index = index

    def __len__(self) -> int:
        return self.index.ntotal

    def __getitem__(self, rows: slice) -> np.ndarray:
        start, stop, _ = rows.indices(len(self))
        return self.index.reconstruct_n(start, stop - start)
