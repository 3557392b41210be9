"""The ``--ivf-compare`` job of ``benchmarks/dpc_knn.py``: the hand-written IVF join against FAISS's ``IndexIVFFlat``.

``python benchmarks/dpc_knn.py --ivf-compare N [N ...]`` (first of ``--dims``, ``--threads`` threads; written to
``benchmarks/results/dpc_knn_ivf.json`` unless ``--out``): in one child per N, the hand-written IVF join
(``mode="approx"``) and FAISS's own ``IndexIVFFlat`` (:mod:`dpc_knn_faiss`: ``faiss.Kmeans`` quantizer, candidates
re-ranked by exact distance) on the same tokens, cold, then -- after one epoch of drift
(:func:`dpc_knn_common.drift`) -- warm-started from their own previous state, interleaved (hand-written, FAISS,
hand-written, FAISS) so that both see the same machine load. Without ``OPENBLAS_CORETYPE`` (as in training: FAISS's
k-means and coarse search are BLAS products, the hand-written join's are torch's). Per run: CPU and wall seconds,
peak RSS above the tokens (sampled), kNN recall, and for N <= ``--exact-max`` center recall / assignment agreement
against the exact mode on the drifted tokens; ``faiss_cpu_ratio`` = FAISS CPU s / hand-written CPU s. The results
and the decision they led to: benchmarks/README.md.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from dpc_knn_common import child, drift, knn_recall, quality, rss_mb


# ----------------------------------------------------------------------------------------------
# child side


class PeakRSS:
    """Peak resident set size (MB) of this process while the block runs, sampled every 20 ms."""

    def __enter__(self):
        import threading

        self.peak, self._stop = current_rss_mb(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, current_rss_mb())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, current_rss_mb())


def current_rss_mb() -> float:
    """Resident set size of this process now (MB)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def ivf_compare(x, kc: int, spec: dict) -> dict:
    """Hand-written IVF join vs FAISS IndexIVFFlat, cold then warm after a drift, interleaved (module docstring)."""
    from missrec_recbole.interests import approx_params, dpc_knn
    from missrec_recbole.interests.driver import cluster, thread_limit

    from dpc_knn_faiss import FaissIVFSearch

    n, k, threads = x.shape[0], spec["k"], spec["threads"]
    faiss_params = approx_params(n, k, nprobe=spec["faiss_nprobe"])

    def faiss_ivf(state):
        with thread_limit(threads):
            return cluster(lambda: FaissIVFSearch(x, faiss_params, state), kc, k)

    variants = {"handwritten": lambda state: dpc_knn(x, kc, k=k, n_threads=threads, mode="approx", state=state),
                "faiss": faiss_ivf}
    runs, states, results = [], {}, {}
    base_mb = current_rss_mb()
    for refresh in ("cold", "warm"):
        if refresh == "warm":
            drift(x, spec["seed"] + 2)
        for name, run in variants.items():
            with PeakRSS() as mem:
                t0, c0 = time.perf_counter(), time.process_time()
                r = run(states.get(name))
                total, cpu = time.perf_counter() - t0, time.process_time() - c0
            states[name] = r.state
            results[(refresh, name)] = {"centers": r.centers, "assignment": r.assignment}
            runs.append({"variant": name, "refresh": refresh, "total_s": total, "cpu_s": cpu, **r.timings,
                         "info": r.info, "peak_rss_above_tokens_mb": round(mem.peak - base_mb, 1),
                         "knn_recall": knn_recall(x, r.knn, spec["recall_queries"], spec["seed"])})
            del r
    for row in runs:
        other = "handwritten" if row["variant"] == "faiss" else "faiss"
        row.update({f"vs_{other}_{key}": v for key, v in
                    quality(results[(row["refresh"], other)], results[(row["refresh"], row["variant"])]).items()})
    if n <= spec["exact_max"]:  # center recall against the exact mode, on the tokens of the warm refresh
        t0 = time.process_time()
        e = dpc_knn(x, kc, k=k, n_threads=threads, mode="exact")
        exact_cpu = time.process_time() - t0
        for row in runs:
            if row["refresh"] == "warm":
                row.update(quality(e, results[("warm", row["variant"])]), quality_on="warm tokens, vs exact",
                           exact_cpu_s=exact_cpu)
    return {"runs": runs, "peak_rss_mb": rss_mb()}


# ----------------------------------------------------------------------------------------------
# parent side


def compare(args, out: Path) -> int:
    """One child per N of ``args.ivf_compare``; a row per run, written to ``out`` after each child."""
    from missrec_recbole.files import write_json

    t_start = time.time()
    rows: list[dict] = []
    for n in args.ivf_compare:
        spec = {"n": n, "d": args.dims[0], "k": args.k, "ratio": args.ratio, "threads": args.threads,
                "seed": args.seed, "recall_queries": args.recall_queries, "data": "hier", "mode": "ivf-compare",
                "exact_max": args.exact_max, "faiss_nprobe": args.faiss_nprobe}
        res = child(spec, None)  # the library's default BLAS kernels, as in training (see the docstring)
        hand = {r["refresh"]: r["cpu_s"] for r in res["runs"] if r["variant"] == "handwritten"}
        for r in res["runs"]:
            row = {key: spec[key] for key in ("n", "d", "data", "k", "ratio", "threads")}
            # seconds rounded; shares (recall, agreement) kept to full precision
            row.update(mode=f"ivf-{r['variant']}-{r['refresh']}",
                       **{key: (round(v, 3) if key.endswith("_s") else v) for key, v in r.items()})
            row.update(faiss_cpu_ratio=round(r["cpu_s"] / hand[r["refresh"]], 3) if r["variant"] == "faiss"
                       else None, peak_rss_mb=round(res["peak_rss_mb"], 1), rss_data_mb=res["rss_data_mb"],
                       data_mb=round(n * args.dims[0] * 4 / 2**20, 1), openblas_coretype=None,
                       load_avg=res["load_avg"], wall_s_child=round(res["wall_s"], 1))
            rows.append(row)
            print(f"n={n} {row['mode']:>24}: cpu {r['cpu_s']:.1f} s, wall {r['total_s']:.1f} s, knn recall "
                  f"{r['knn_recall']:.4f}, center recall {r.get('center_overlap', '-')}, ratio "
                  f"{row['faiss_cpu_ratio']}, +{r['peak_rss_above_tokens_mb']} MB", flush=True)
            write_json(out, rows)
    print(f"wrote {out} ({len(rows)} rows) in {time.time() - t_start:.0f}s")
    return 0
