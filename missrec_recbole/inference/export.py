"""Export a MISSRec catalogue for serving: item vectors, one FAISS index per modality, a JSON manifest.

Files written by :func:`export_predictor` into ``out_dir``:

* ``vectors_<m>.npy`` - float32 [N, d] per modality m: the candidate vectors the model scores against,
  ``normalize(W_m x_i^m + b_m (+ ID embedding in transductive mode))``; row r = ``item_ids[r]``; a row
  of zeros where item r has no modality m.
* ``present.npy`` - bool [N, M]: which modalities each item has.
* ``index_<m>.faiss`` - ``IndexIDMap2(IndexFlatIP(d))`` over the rows that have modality m; the FAISS
  labels are row numbers into ``item_ids``. Read with ``faiss.read_index``.
* ``index_<m>_only.faiss`` - the same over the items that have *only* modality m (e.g. no image);
  written when there are such items (it lets the bound below stay tight).
* ``manifest.json`` - format, modalities, ``dim``, feature dims, ``fusion`` (``beta``), ``temperature``,
  mode, file names, ``item_ids`` (original ids in row order) and the retrieval recipe below.

Why not one index: MISSRec's score is not an inner product. With the user vector u = s_u/||s_u|| and
per-modality similarities ``s_m = <u, v_i^m>`` over the modalities item i has, the dynamic fusion is
``f_i(u) = sum_m w_m s_m`` with ``w = softmax_m(beta * s_m)``: weights depend on the user *and* the item.

Retrieve-then-rerank, exact (:class:`ExportedIndex`): search every index for its top C items and
re-rank the union with the exact fused score. Let ``t`` be the C-th similarity returned by an index
(none if the index holds no more than C items). An item outside the union has ``s_m <= t_m`` in
every modality it has, so its fused score is at most

* ``box_bound(t_text, t_image, beta)`` = the maximum of f over ``[-1, t_text] x [-1, t_image]``, for
  items with both modalities (for beta >= 0 it is attained at one of three corners, see
  :func:`box_bound`; for beta < 0, ``max(t_text, t_image)``), and
* ``t`` of ``index_<m>_only`` for items with modality m only (their score is ``s_m``).

If the k-th best re-ranked score exceeds that bound (plus a float32 margin), the top-k equals the
model's full-ranking top-k; otherwise C is doubled (at worst until every item is retrieved).
Candidate size: ``candidates_start`` (default ``max(4k, 50)``) per index; how often C=50 already certifies the
top-10 is measured in benchmarks/README.md ("Export: certified top-k").
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import faiss
import numpy as np

from missrec_recbole.inference.errors import ExportError, InferenceError

EXPORT_FORMAT = "missrec-recbole-export/1"
# FAISS scores (float32 inner products of unit vectors) vs the exact fused score: a safety margin for
# the certificate that easily covers float32 rounding of a dot product of length <= a few thousand.
MARGIN = 1e-4


APPROXIMATE = ("ivf", "hnsw")
HNSW_NEIGHBOURS, HNSW_EF_CONSTRUCTION, HNSW_EF_SEARCH = 32, 80, 128
# IVF lists searched by default: a sixteenth of them, at most 128. At 1M items (~4,000 lists) recall@10 was 0.986
# from 62 to 500 lists probed (the 100 candidates per modality set it) while the search took 3.0 ms at 62, 4.1 ms at
# 125 and 7.9 ms at 250 (benchmarks/README.md); smaller catalogues keep a sixteenth (100k items: 79 lists).
IVF_NPROBE_FRACTION, IVF_NPROBE_MAX = 16, 128


def default_nprobe(nlist: int) -> int:
    return min(nlist, max(8, min(nlist // IVF_NPROBE_FRACTION, IVF_NPROBE_MAX)))


def _flat_index(matrix: np.ndarray, rows: np.ndarray):
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(matrix.shape[1]))
    if len(rows):
        index.add_with_ids(np.ascontiguousarray(matrix[rows]), rows)
    return index


def ivf_lists(n: int) -> int:
    """IVF lists for ``n`` vectors: ~4 sqrt(n), at least 39 training points per list (FAISS' minimum)."""
    return max(1, min(int(4 * math.sqrt(n)), n // 39))


def _approximate_index(kind: str, matrix: np.ndarray, rows: np.ndarray, nprobe: int | None):
    """An IVF-Flat or HNSW inner-product index over ``rows`` (labels = row numbers) and its search parameters."""
    d = matrix.shape[1]
    data = np.ascontiguousarray(matrix[rows])
    if kind == "hnsw":
        base = faiss.IndexHNSWFlat(d, HNSW_NEIGHBOURS, faiss.METRIC_INNER_PRODUCT)
        base.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        params = {"M": HNSW_NEIGHBOURS, "efSearch": HNSW_EF_SEARCH}
    else:
        nlist = ivf_lists(len(rows))
        base = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        base.cp.niter = 10  # k-means iterations of the coarse quantizer (FAISS default 25): build time, not recall
        sample = data[np.random.default_rng(0).permutation(len(data))[:40 * nlist]] if len(data) else data
        base.train(sample if len(sample) else np.zeros((1, d), np.float32))
        params = {"nlist": nlist, "nprobe": min(nlist, nprobe or default_nprobe(nlist))}
    index = faiss.IndexIDMap2(base)
    if len(rows):
        index.add_with_ids(data, rows)
    return index, params


def set_search_params(index, params: dict) -> None:
    """Apply the manifest's search parameters to a loaded approximate index (IVF ``nprobe``, HNSW ``efSearch``)."""
    base = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap2) else index
    if "nprobe" in params:
        faiss.extract_index_ivf(base).nprobe = int(params["nprobe"])
    if "efSearch" in params:
        base.hnsw.efSearch = int(params["efSearch"])


def export_predictor(predictor, out_dir, approximate: str | None = None, nprobe: int | None = None) -> Path:
    """Write the export of ``predictor``'s current catalogue (including added items) to ``out_dir``.

    ``approximate``: None (exact flat indexes, certified search), ``"ivf"`` or ``"hnsw"`` (an approximate index per
    modality; the search re-ranks the retrieved candidates with the exact fused score but cannot certify the
    top-k). ``nprobe``: IVF lists searched (default :func:`default_nprobe`: nlist/16, at least 8, at most 128)."""
    if approximate not in (None, *APPROXIMATE):
        raise ExportError(f"approximate={approximate!r}: use None (exact), 'ivf' or 'hnsw'.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vectors, present = predictor.item_vectors()
    model = predictor.model
    files, search_params = {}, {}
    for j, m in enumerate(model.modalities):
        matrix = vectors[m]
        np.save(out / f"vectors_{m}.npy", matrix)
        rows = np.flatnonzero(present[:, j]).astype(np.int64)
        if approximate:
            index, search_params[m] = _approximate_index(approximate, matrix, rows, nprobe)
        else:
            index = _flat_index(matrix, rows)
        faiss.write_index(index, str(out / f"index_{m}.faiss"))
        files[m] = {"vectors": f"vectors_{m}.npy", "index": f"index_{m}.faiss", "items": int(len(rows))}
        only = np.flatnonzero(present[:, j] & (present.sum(axis=1) == 1)).astype(np.int64)
        if not approximate and len(model.modalities) > 1 and len(only):  # items with no other modality
            faiss.write_index(_flat_index(matrix, only), str(out / f"index_{m}_only.faiss"))
            files[m].update(only_index=f"index_{m}_only.faiss", only_items=int(len(only)))
    np.save(out / "present.npy", present)
    manifest = {
        "format": EXPORT_FORMAT,
        "model_file": predictor.model_file,
        "dataset": predictor.dataset_name,
        "mode": predictor.mode,
        "modalities": list(model.modalities),
        "dim": int(model.hidden_size),
        "feature_dims": {m: int(predictor.config[f"{m}_dim"]) for m in model.modalities},
        "n_items": predictor.n_items,
        "fusion": {
            "type": "dynamic",
            "beta": float(model.fusion_beta.detach().cpu()),
            "formula": "u = s_u/||s_u||; s_m = <u, v_m> over the item's present modalities; "
                       "w = softmax_m(beta * s_m); score = sum_m w_m * s_m",
        },
        "temperature": float(model.temperature),
        "user_vector": "MISSRecPredictor.user_vectors(histories): normalised MISSRec sequence representation",
        "vectors": "normalize(adapter_m(feature_m) (+ ID embedding if transductive)); zero row = modality absent",
        "index_type": (f"IDMap2,{approximate.upper()},Flat (inner product, approximate)" if approximate else
                       "IDMap2,Flat (inner product)") + "; labels are row numbers into item_ids",
        "approximate": {"kind": approximate, "search_params": search_params} if approximate else None,
        "retrieval": ("per modality: approximate FAISS top-C; union; re-rank with the exact fused score (not "
                      "certified: an item the indexes miss is not found)") if approximate else (
                     "per modality (and per single-modality group): FAISS top-C; union; re-rank with the exact "
                     "fused score; certified exact when the k-th fused score > the bound on unretrieved items "
                     "(see missrec_recbole/inference/export.py), else double C"),
        "files": files,
        "presence": "present.npy",
        "item_ids": list(predictor.item_ids),
    }
    path = out / "manifest.json"
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(manifest, handle, indent=1)
    return path


def fused_scores(user: np.ndarray, vectors: dict, present: np.ndarray, modalities, beta: float,
                 rows: np.ndarray) -> np.ndarray:
    """Exact dynamic-fusion scores of one normalised user vector against ``rows`` (float32, as the model)."""
    sims = np.stack([vectors[m][rows] @ user for m in modalities], axis=1).astype(np.float32)
    mask = present[rows]
    logits = np.where(mask, np.float32(beta) * sims, -np.inf).astype(np.float32)
    peak = logits.max(axis=1, keepdims=True)
    peak = np.where(np.isfinite(peak), peak, 0.0)
    weights = np.where(mask, np.exp(logits - peak), 0.0).astype(np.float32)
    total = weights.sum(axis=1, keepdims=True)
    weights = np.divide(weights, total, out=np.zeros_like(weights), where=total > 0)
    return (weights * sims).sum(axis=1).astype(np.float32)


def _fuse_pair(a: float, b: float, beta: float) -> float:
    peak = max(beta * a, beta * b)
    wa, wb = math.exp(beta * a - peak), math.exp(beta * b - peak)
    return (wa * a + wb * b) / (wa + wb)


def box_bound(t1: float, t2: float, beta: float) -> float:
    """max of the fused score f(s1, s2) over s1 in [-1, t1], s2 in [-1, t2] (similarities of unit vectors).

    For beta >= 0: where s1 >= s2, df/ds1 = w1 (1 + beta (s1 - f)) > 0 (f <= s1), so the maximum has the
    larger coordinate at its upper end, say s1 = t1; along the other coordinate x, f(t1, x) decreases and
    then increases (its slope has the sign of 1 - y sigma(y), y = beta (t1 - x), and y sigma(y) is
    increasing), so the maximum is at an end: the corner (t1, t2) or (t1, -1), or symmetrically (-1, t2).
    For beta < 0 the safe bound max(t1, t2) (f is a convex combination) is used.
    """
    if beta < 0:
        return max(t1, t2)
    return max(_fuse_pair(t1, t2, beta), _fuse_pair(t1, -1.0, beta), _fuse_pair(-1.0, t2, beta))


class ExportedIndex:
    """Serve an export without the model: exact top-k by per-modality FAISS retrieval + fused re-ranking."""

    def __init__(self, manifest: dict, vectors: dict, present: np.ndarray, indexes: dict):
        self.manifest = manifest
        self.modalities = list(manifest["modalities"])
        self.beta = float(manifest["fusion"]["beta"])
        self.item_ids = list(manifest["item_ids"])
        self.row_of = {item: row for row, item in enumerate(self.item_ids)}
        self.vectors, self.present, self.indexes = vectors, present, indexes
        self.n_both = int(present.all(axis=1).sum()) if present.size else 0
        self.approximate = bool(manifest.get("approximate"))
        self.last_candidates: list[int] = []  # C that certified each user of the last search

    @classmethod
    def load(cls, out_dir) -> "ExportedIndex":
        out = Path(out_dir)
        path = out / "manifest.json"
        if not path.is_file():
            raise ExportError(f"{path}: manifest not found; write the export with MISSRecPredictor.export(out_dir).")
        manifest = json.loads(path.read_text(encoding="utf-8"))
        if manifest.get("format") != EXPORT_FORMAT:
            raise ExportError(f"{path}: format {manifest.get('format')!r}, expected {EXPORT_FORMAT!r}.")
        vectors, indexes = {}, {}
        for m in manifest["modalities"]:
            entry = manifest["files"][m]
            for key in ("vectors", "index"):
                if not (out / entry[key]).is_file():
                    raise ExportError(f"{out / entry[key]}: file listed in the manifest is missing.")
            vectors[m] = np.load(out / entry["vectors"])
            indexes[m] = faiss.read_index(str(out / entry["index"]))
            if manifest.get("approximate"):
                set_search_params(indexes[m], manifest["approximate"]["search_params"][m])
            if entry.get("only_index"):
                indexes[f"{m}_only"] = faiss.read_index(str(out / entry["only_index"]))
        present = np.load(out / manifest["presence"])
        return cls(manifest, vectors, present, indexes)

    def bound(self, thresholds: dict) -> float:
        """Upper bound of the fused score of every item outside the retrieved sets.

        ``thresholds``: per searched index (``m`` = all items with modality m, ``m_only`` = items with m
        only), the C-th similarity, or None if that index was retrieved completely.
        """
        bound = -np.inf
        both_indexed = [thresholds[m] for m in self.modalities]
        if len(self.modalities) == 1:
            return bound if both_indexed[0] is None else both_indexed[0]
        if self.n_both and all(t is not None for t in both_indexed):
            bound = box_bound(both_indexed[0], both_indexed[1], self.beta)
        for m in self.modalities:
            t = thresholds.get(f"{m}_only")
            if t is not None:
                bound = max(bound, t)
        return bound

    def search(self, user_vectors: np.ndarray, k: int = 10, candidates_start: int | None = None,
               exclude=None) -> list[list[tuple[str, float]]]:
        """Exact top-``k`` (original id, fused score) per user vector; ``exclude``: per user, ids to skip
        (e.g. the history). Ties are broken by row order, like ``MISSRecPredictor.recommend``.

        An approximate export retrieves ``candidates_start`` (default max(10k, 100)) items per modality once and
        re-ranks them exactly: the fused scores are exact, the top-k is as good as the indexes' recall."""
        users = np.asarray(user_vectors, dtype=np.float32)
        if users.ndim != 2 or users.shape[1] != self.manifest["dim"]:
            raise InferenceError(f"user vectors must be [B, {self.manifest['dim']}], got {users.shape}")
        users = users / np.maximum(np.linalg.norm(users, axis=1, keepdims=True), 1e-12)
        exclude = exclude or [()] * len(users)
        excluded = [np.array([self.row_of[i] for i in ids if i in self.row_of], dtype=np.int64) for ids in exclude]
        start = candidates_start or (max(10 * k, 100) if self.approximate else max(4 * k, 50))
        largest = max((index.ntotal for index in self.indexes.values()), default=0)
        results = [None] * len(users)
        self.last_candidates = [0] * len(users)
        pending = np.arange(len(users))
        c = start
        while len(pending):
            retrieved = {}
            for name, index in self.indexes.items():
                n = min(c, index.ntotal)
                if n:
                    scores, labels = index.search(np.ascontiguousarray(users[pending]), n)
                    retrieved[name] = (scores, labels, n < index.ntotal)
            still = []
            for slot, b in enumerate(pending):
                union, thresholds = [], {name: None for name in self.indexes}
                for name, (scores, labels, partial) in retrieved.items():
                    union.append(labels[slot][labels[slot] >= 0])
                    if partial:  # items beyond the C-th may still score up to this similarity
                        thresholds[name] = float(scores[slot, -1])
                rows = np.unique(np.concatenate(union)) if union else np.zeros(0, np.int64)
                if len(excluded[b]):
                    rows = rows[~np.isin(rows, excluded[b])]
                fused = fused_scores(users[b], self.vectors, self.present, self.modalities, self.beta, rows)
                order = np.lexsort((rows, -fused))[:k]
                bound = self.bound(thresholds)
                exact = bound == -np.inf or (len(order) == k and fused[order[-1]] > bound + MARGIN)
                if exact or c >= largest or self.approximate:
                    results[b] = [(self.item_ids[int(rows[i])], float(fused[i])) for i in order]
                    self.last_candidates[b] = int(min(c, largest))
                else:
                    still.append(b)
            pending = np.asarray(still, dtype=np.int64)
            c *= 2
        return results
