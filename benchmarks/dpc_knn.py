"""DPC-KNN benchmark: exact and approximate modes vs the O(N^2) brute force, on clustered tokens.

For every d in ``--dims`` and N in ``--sizes`` (each configuration in a fresh child process, so
that peak RSS is per run):

* ``bruteforce`` (N <= ``--brute-max``): the research-code way -- a full N x N float32 distance
  matrix (torch.cdist), then rho / delta / centers / assignment from it.  The baseline ratio
  ``speedup_vs_bruteforce`` of the other rows is relative to it.
* ``exact`` (N <= ``--exact-max``): ``dpc_knn(mode="exact")``.
* ``approx``: ``dpc_knn(mode="approx")`` with the parameters chosen from N.

Quality of a row (null where not measured):

* ``knn_recall``: recall@k of its kNN lists for ``--recall-queries`` random tokens against an
  exact search over all N tokens (ties counted as hits).
* ``center_overlap``: |centers ∩ exact centers| / K.
* ``assignment_agreement``: share of tokens mapped to the *same center token* as in exact mode;
  ``assignment_ari``: adjusted Rand index of the two token -> interest partitions (insensitive to
  which token of a cluster represents it).
  For N <= ``--sample`` these compare with the exact run on the same data; above, exact and
  approximate mode are both run on a random ``--sample``-token subset (``quality_on`` says which;
  ``sample_knn_recall``: recall of the approximate kNN lists on that subset).  Such a subset is
  *not* a small copy of the full problem: its clusters are N/sample times thinner (at 1M, ~5
  tokens per cluster instead of ~50, fewer than k + 1), so most kNN lists reach into other
  clusters -- on "flat" data a search among nearly equidistant clusters that the full 1M run
  never has to do.  ``knn_recall`` of the full-size row is the like-for-like figure.

``--ivf-compare N ...`` runs only the inverted-file comparison (first d, ``--threads`` threads, written to
``dpc_knn_ivf.json``): in one child per N, the hand-written IVF join (``mode="approx"``) and FAISS's own
``IndexIVFFlat`` (:mod:`missrec_recbole.interests.ivf_faiss`: ``faiss.Kmeans`` quantizer, candidates
re-ranked by exact distance) on the same tokens, cold, then -- after one epoch of drift (:func:`drift`) --
warm-started from their own previous state, interleaved (hand-written, FAISS, hand-written, FAISS) so that
both see the same machine load. Without ``OPENBLAS_CORETYPE`` (as in training: FAISS's k-means and coarse
search are BLAS products, the hand-written join's are torch's). Per run: CPU and wall seconds, peak RSS above the tokens (sampled), kNN
recall, and for N <= ``--exact-max`` center recall / assignment agreement against the exact mode on the
drifted tokens; ``faiss_cpu_ratio`` = FAISS CPU s / hand-written CPU s.

``refresh`` rows (``--refresh-n``, first d): the incremental-refresh experiment -- approximate run,
then every token moves as after an epoch of adapter training (x <- x (I + eps R) + b), then the
next refresh cold (no state), warm (``state=`` from the first run: coarse quantizer re-fitted with
3 Lloyd iterations) and reused as-is (0 iterations).

Data: a Gaussian mixture with ``0.02 * N`` clusters of log-normal sizes and varying spread,
rows L2-normalised like CLIP embeddings (:func:`clustered`): ``hier`` (clusters grouped in
categories, as real item embeddings are; every row above) and, with ``--flat-sizes``, ``flat``
(independent cluster directions, all clusters nearly equidistant: the hard case for any IVF).
``OPENBLAS_CORETYPE`` (FAISS's bundled OpenBLAS picks
slow generic kernels on recent CPUs) is set for the child processes only, from /proc/cpuinfo;
the smallest size is also run in exact mode without it to show the gain.

Usage::

    nohup python benchmarks/dpc_knn.py > dpc_knn.log 2>&1 &      # full run, ~30-60 min on 2 cores
    python benchmarks/dpc_knn.py --quick                          # smoke test, ~1 min
    python benchmarks/dpc_knn.py --sizes 10000 100000 --dims 300
    nice -n 19 python benchmarks/dpc_knn.py --ivf-compare 100000 300000 --dims 512 --threads 1

Writes ``benchmarks/results/dpc_knn.json`` (a list of rows) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PHASES = ("knn_s", "density_s", "delta_s", "assign_s")


# ----------------------------------------------------------------------------------------------
# child side


def clustered(n: int, d: int, seed: int, kind: str = "hier", frac: float = 0.02):
    """~frac*n Gaussian clusters (log-normal sizes, spreads 0.15-0.45), rows L2-normalised.

    ``kind="hier"``: cluster centres drawn around sqrt(#clusters) "category" centres (cosine
    ~0.6 between sibling clusters, ~0 across categories), so there is structure between the
    clusters as in real embeddings.  ``kind="flat"``: independent random centre directions --
    in 300+ dimensions all clusters are then nearly equidistant (cosine 0 +- 0.06), so the
    nearest *other-cluster* tokens are a needle-in-a-haystack search.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    nc = max(1, int(round(frac * n)))
    if kind == "flat":
        cent = rng.standard_normal((nc, d)).astype(np.float32)
    elif kind == "hier":
        ns = max(1, int(round(math.sqrt(nc))))
        sup = rng.standard_normal((ns, d)).astype(np.float32)
        sup /= np.linalg.norm(sup, axis=1, keepdims=True)
        cent = sup[rng.integers(0, ns, nc)] + 0.8 * rng.standard_normal((nc, d)).astype(np.float32) / np.sqrt(d)
    else:
        raise ValueError(f"unknown data kind {kind!r}")
    cent /= np.linalg.norm(cent, axis=1, keepdims=True)
    w = rng.lognormal(0.0, 0.75, nc)
    lab = rng.choice(nc, size=n, p=w / w.sum())
    spread = rng.uniform(0.15, 0.45, nc).astype(np.float32)
    x = np.empty((n, d), np.float32)
    for s in range(0, n, 65536):
        lb = lab[s : s + 65536]
        blk = rng.standard_normal((lb.size, d), dtype=np.float32)
        blk *= (spread[lb] / np.sqrt(d))[:, None]
        blk += cent[lb]
        blk /= np.linalg.norm(blk, axis=1, keepdims=True)
        x[s : s + 65536] = blk
    return x


def drift(x, seed: int, eps: float = 0.03):
    """In place: x <- x (I + eps R) + b, R Gaussian / sqrt(d) (one epoch of adapter updates)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    d = x.shape[1]
    lin = np.eye(d, dtype=np.float32) + (eps / np.sqrt(d)) * rng.standard_normal((d, d)).astype(np.float32)
    b = (eps / np.sqrt(d)) * rng.standard_normal(d).astype(np.float32)
    for s in range(0, x.shape[0], 65536):
        x[s : s + 65536] = x[s : s + 65536] @ lin + b


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def bruteforce(x, n_centers: int, k: int):
    """O(N^2) memory and time: full float32 distance matrix (research-code style)."""
    import numpy as np
    import torch

    t = {}
    t0 = time.perf_counter()
    xt = torch.from_numpy(x)
    n = xt.shape[0]
    d2 = torch.cdist(xt, xt).square_()
    d2.fill_diagonal_(float("inf"))
    knn_d2, knn = torch.topk(d2, k, dim=1, largest=False)
    d2.fill_diagonal_(0.0)
    t["knn_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    rho = torch.exp(-knn_d2.double().sum(1) / k)
    order = torch.from_numpy(np.lexsort((np.arange(n), -rho.numpy())))
    rank = torch.empty(n, dtype=torch.long)
    rank[order] = torch.arange(n)
    t["density_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    delta2 = torch.empty(n)
    for s in range(0, n, 4096):
        blk = d2[s : s + 4096].clone()
        blk[rank[None, :] >= rank[s : s + 4096, None]] = float("inf")
        delta2[s : s + 4096] = blk.min(1).values
    top = int(order[0])
    delta2[top] = d2[top].max()
    delta = delta2.double().sqrt()
    t["delta_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    score = (rho * delta).numpy()
    centers = np.lexsort((np.arange(n), -score))[:n_centers]
    assignment = d2[:, torch.from_numpy(centers)].argmin(1).numpy()
    t["assign_s"] = time.perf_counter() - t0
    return centers, assignment, knn.numpy(), t


def knn_recall(x, knn, n_queries: int, seed: int) -> float:
    """recall@k of ``knn`` for random queries vs an exact search over all tokens (ties = hits)."""
    import numpy as np
    import torch

    n, k = knn.shape
    rng = np.random.default_rng(seed)
    qs = np.sort(rng.choice(n, size=min(n_queries, n), replace=False))
    xq = torch.from_numpy(x[qs])
    qn = (xq * xq).sum(1)
    m = min(n - 1, k + 16)
    best_v = torch.full((qs.size, 0), float("inf"))
    best_i = torch.empty((qs.size, 0), dtype=torch.long)
    for s in range(0, n, 16384):  # [queries x 16384] blocks: small next to the run it checks
        xb = torch.from_numpy(x[s : s + 16384])
        dd = qn[:, None] + (xb * xb).sum(1)[None, :] - 2.0 * (xq @ xb.T)
        cols = torch.arange(s, s + xb.shape[0])
        dd[torch.from_numpy(qs)[:, None] == cols[None, :]] = float("inf")
        v = torch.cat([best_v, dd], 1)
        i = torch.cat([best_i, cols.expand(qs.size, -1)], 1)
        best_v, j = torch.topk(v, m, dim=1, largest=False)
        best_i = torch.gather(i, 1, j)
    hits = 0
    for r, q in enumerate(qs):
        cand = best_i[r].numpy()
        ex = ((x[cand].astype(np.float64) - x[q]) ** 2).sum(1)
        kth = np.sort(ex)[k - 1]
        got = ((x[knn[q]].astype(np.float64) - x[q]) ** 2).sum(1)
        hits += int((got <= kth * (1 + 1e-9) + 1e-30).sum())
    return hits / (qs.size * k)


def run_child(spec: dict) -> dict:
    import numpy as np

    sys.path.insert(0, str(ROOT))
    import faiss  # noqa: F401  (after OPENBLAS_CORETYPE is in the environment)
    import torch

    from missrec_recbole.interests import dpc_knn, n_interests

    torch.set_num_threads(spec["threads"])
    n, d, k = spec["n"], spec["d"], spec["k"]
    x = clustered(n, d, spec["seed"], spec.get("data", "hier"))
    out: dict = {"rss_data_mb": round(rss_mb(), 1)}
    kc = n_interests(n, spec["ratio"])
    mode = spec["mode"]
    if mode == "bruteforce":
        t0, c0 = time.perf_counter(), time.process_time()
        centers, assignment, knn, t = bruteforce(x, kc, k)
        out.update(total_s=time.perf_counter() - t0, cpu_s=time.process_time() - c0, **t)
    elif mode in ("exact", "approx"):
        t0, c0 = time.perf_counter(), time.process_time()
        r = dpc_knn(x, kc, k=k, n_threads=spec["threads"], mode=mode)
        out.update(total_s=time.perf_counter() - t0, cpu_s=time.process_time() - c0, **r.timings, info=r.info,
                   n_peaks=r.n_peaks)
        centers, assignment, knn = r.centers, r.assignment, r.knn
    elif mode == "sample":  # exact vs approx on a random subset
        rng = np.random.default_rng(spec["seed"] + 1)
        idx = np.sort(rng.choice(n, size=spec["sample"], replace=False))
        xs = np.ascontiguousarray(x[idx])
        del x
        ks = n_interests(xs.shape[0], spec["ratio"])
        t0 = time.perf_counter()
        e = dpc_knn(xs, ks, k=k, n_threads=spec["threads"], mode="exact")
        te = time.perf_counter() - t0
        t0 = time.perf_counter()
        a = dpc_knn(xs, ks, k=k, n_threads=spec["threads"], mode="approx")
        ta = time.perf_counter() - t0
        out.update(quality(e, a), sample_knn_recall=list_recall(e.knn, a.knn), sample_exact_s=te,
                   sample_approx_s=ta, peak_rss_mb=rss_mb())
        return out
    elif mode == "refresh":
        runs = {}
        t0, c0 = time.perf_counter(), time.process_time()
        r = dpc_knn(x, kc, k=k, n_threads=spec["threads"], mode="approx")
        runs["first"] = dict(total_s=time.perf_counter() - t0, cpu_s=time.process_time() - c0, **r.timings,
                             info=r.info)
        state = r.state
        del r
        drift(x, spec["seed"] + 2)
        cold = None
        for name, kw in (("cold", {}), ("warm", {"state": state}),
                         ("reuse", {"state": state, "approx": {"warm_iters": 0}})):
            t0, c0 = time.perf_counter(), time.process_time()
            r = dpc_knn(x, kc, k=k, n_threads=spec["threads"], mode="approx", **kw)
            runs[name] = dict(total_s=time.perf_counter() - t0, cpu_s=time.process_time() - c0, **r.timings,
                              info=r.info, knn_recall=knn_recall(x, r.knn, spec["recall_queries"], spec["seed"]))
            if cold is None:
                cold = {"centers": r.centers, "assignment": r.assignment}
            else:
                runs[name].update({f"vs_cold_{key}": v for key, v in quality(cold, r).items()})
            del r
        out.update(runs=runs, peak_rss_mb=rss_mb())
        return out
    elif mode == "ivf-compare":
        return {**out, **ivf_compare(x, kc, spec)}
    else:
        raise ValueError(mode)
    out["peak_rss_mb"] = rss_mb()
    if spec.get("recall_queries"):
        out["knn_recall"] = knn_recall(x, knn, spec["recall_queries"], spec["seed"])
    np.savez(spec["save"], centers=centers, assignment=assignment)
    return out


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
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def ivf_compare(x, kc: int, spec: dict) -> dict:
    """Hand-written IVF join vs FAISS IndexIVFFlat, cold then warm after a drift, interleaved (module docstring)."""
    import numpy as np

    from missrec_recbole.interests import approx_params, dpc_knn
    from missrec_recbole.interests.driver import cluster, thread_limit
    from missrec_recbole.interests.ivf_faiss import FaissIVFSearch

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


def list_recall(ref, other) -> float:
    """Share of the entries of the reference kNN lists that are also in the other's (row by row)."""
    import numpy as np

    return float(np.mean([(ref[s : s + 8192, :, None] == other[s : s + 8192, None, :]).any(axis=2).mean()
                          for s in range(0, len(ref), 8192)]))


def ari(a, b) -> float:
    """Adjusted Rand index of two labelings."""
    import numpy as np

    def pairs(c):
        c = np.asarray(c, dtype=np.float64)
        return float((c * (c - 1) / 2).sum())

    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    _, nij = np.unique(a * (int(b.max()) + 1) + b, return_counts=True)
    sa, sb = pairs(np.bincount(a)), pairs(np.bincount(b))
    expected = sa * sb / pairs([a.size])
    denom = (sa + sb) / 2 - expected
    return 1.0 if denom == 0 else (pairs(nij) - expected) / denom


def quality(ref, other) -> dict:
    """center overlap / assignment agreement / ARI of ``other`` vs ``ref`` (objects or dicts)."""
    import numpy as np

    def get(o, f):
        return o[f] if isinstance(o, dict) else getattr(o, f)

    rc, ra = np.asarray(get(ref, "centers")), np.asarray(get(ref, "assignment"))
    oc, oa = np.asarray(get(other, "centers")), np.asarray(get(other, "assignment"))
    return {
        "center_overlap": np.intersect1d(rc, oc).size / rc.size,
        "assignment_agreement": float(np.mean(rc[ra] == oc[oa])),
        "assignment_ari": ari(ra, oa),
    }


# ----------------------------------------------------------------------------------------------
# parent side


def coretype() -> str | None:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    if " avx512f" in flags:
        return "SkylakeX"
    if " avx2" in flags:
        return "Haswell"
    return None


def child(spec: dict, core: str | None) -> dict:
    env = dict(os.environ)
    env.pop("OPENBLAS_CORETYPE", None)
    if core:
        env["OPENBLAS_CORETYPE"] = core
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"the {spec['mode']} measurement (n={spec['n']}, d={spec['d']}) failed: {last}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["wall_s"] = time.perf_counter() - t0
    res["load_avg"] = [round(load0, 2), round(os.getloadavg()[0], 2)]
    return res


def make_row(spec: dict, res: dict, core: str | None) -> dict:
    row = {"n": spec["n"], "d": spec["d"], "mode": spec["mode"], "data": spec.get("data", "hier"), "k": spec["k"],
           "ratio": spec["ratio"], "total_s": round(res["total_s"], 3), "cpu_s": round(res["cpu_s"], 1)}
    for ph in PHASES:
        row[ph] = round(res[ph], 3) if ph in res else None
    row.update(peak_rss_mb=round(res["peak_rss_mb"], 1), rss_data_mb=res["rss_data_mb"],
               data_mb=round(spec["n"] * spec["d"] * 4 / 2**20, 1), knn_recall=res.get("knn_recall"),
               center_overlap=None, assignment_agreement=None, assignment_ari=None, quality_on=None,
               speedup_vs_bruteforce=None, threads=spec["threads"], openblas_coretype=core,
               load_avg=res["load_avg"])
    if "info" in res:
        row["info"] = {key: v for key, v in res["info"].items()}
    return row


def fmt(v, nd=1):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def table(rows: list[dict]) -> str:
    head = ("n", "d", "data", "mode", "total_s", "knn_s", "density_s", "delta_s", "assign_s", "peak_rss_mb",
            "knn_recall", "sample_recall", "center_overlap", "assignment_agreement", "assignment_ari", "x_brute", "load")
    lines = [" | ".join(head)]
    for r in rows:
        lines.append(" | ".join([
            str(r["n"]), str(r["d"]), r.get("data", "hier"),
            r["mode"] + ("" if r.get("openblas_coretype") else " (generic BLAS)"),
            fmt(r["total_s"]), fmt(r["knn_s"]), fmt(r["density_s"], 2), fmt(r["delta_s"]), fmt(r["assign_s"]),
            fmt(r["peak_rss_mb"], 0), fmt(r["knn_recall"], 4), fmt(r.get("sample_knn_recall"), 4), fmt(r["center_overlap"], 4),
            fmt(r["assignment_agreement"], 4), fmt(r["assignment_ari"], 4), fmt(r["speedup_vs_bruteforce"], 1),
            fmt(max(r.get("load_avg") or [0.0]), 1),
        ]))
    return "\n".join(lines)


def check_args(ap: argparse.ArgumentParser, args) -> None:
    """Reject impossible sizes before any child starts (argparse's one usage line, exit code 2)."""
    for name in ("sizes", "dims", "flat_sizes", "ivf_compare"):
        if any(v < 1 for v in getattr(args, name) or []):
            ap.error(f"--{name.replace('_', '-')} must be positive integers")
    for name in ("k", "threads", "sample", "recall_queries", "faiss_nprobe"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be a positive integer")
    if not 0 < args.ratio <= 1:
        ap.error(f"--ratio must be in (0, 1] (the share of tokens kept as interest centers), got {args.ratio}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="*", default=[10000, 100000, 1000000])
    ap.add_argument("--dims", type=int, nargs="+", default=[300, 512])
    ap.add_argument("--quick", action="store_true", help="smoke run: sizes 5000 20000, d 64, small samples")
    ap.add_argument("--ratio", type=float, default=0.5, help="interest_ratio (K = ceil(ratio * N)); props default")
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sample", type=int, default=100000, help="quality sample size for larger N")
    ap.add_argument("--exact-max", type=int, default=100000, help="largest N run in exact mode on all tokens")
    ap.add_argument("--brute-max", type=int, default=20000, help="largest N of the O(N^2) brute force")
    ap.add_argument("--recall-queries", type=int, default=1000)
    ap.add_argument("--refresh-n", type=int, default=None, help="N of the refresh experiment (default: largest)")
    ap.add_argument("--no-refresh", action="store_true")
    ap.add_argument("--flat-sizes", type=int, nargs="*", default=[1000000],
                    help="also run the approximate mode on 'flat' data (no structure between clusters) at these N "
                         "(first d only)")
    ap.add_argument("--ivf-compare", type=int, nargs="+", default=None, metavar="N",
                    help="only compare the hand-written IVF join with FAISS's IndexIVFFlat at these N (first d)")
    ap.add_argument("--faiss-nprobe", type=int, default=8, help="--ivf-compare: cells each FAISS query searches")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="JSON file (default: benchmarks/results/dpc_knn.json, "
                                                "dpc_knn_ivf.json with --ivf-compare)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(run_child(json.loads(args.child)), default=float))
        return 0
    check_args(ap, args)
    if args.quick:
        args.sizes, args.dims, args.sample, args.recall_queries = [5000, 20000], [64], 10000, 200
        args.exact_max, args.flat_sizes = 10000, [20000]
    from missrec_recbole.files import write_json  # after the child branch: children set threads before torch loads

    core = coretype()
    refresh_n = args.refresh_n or max(args.sizes, default=0)
    rows: list[dict] = []
    default_out = "dpc_knn_ivf.json" if args.ivf_compare else "dpc_knn.json"
    out = Path(args.out or ROOT / "benchmarks" / "results" / default_out)
    out.parent.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    print(f"python {platform.python_version()}, {os.cpu_count()} CPUs, OPENBLAS_CORETYPE for children: {core}",
          flush=True)

    def emit(row):
        rows.append(row)
        print(table([row]).splitlines()[1], f"  [{time.time() - t_start:.0f}s]", flush=True)
        write_json(out, rows)

    if args.ivf_compare:
        for n in args.ivf_compare:
            spec = {"n": n, "d": args.dims[0], "k": args.k, "ratio": args.ratio, "threads": args.threads,
                    "seed": args.seed, "recall_queries": args.recall_queries, "data": "hier", "mode": "ivf-compare",
                    "exact_max": args.exact_max, "faiss_nprobe": args.faiss_nprobe}
            res = child(spec, None)  # the library's default BLAS kernels, as in training (see the docstring)
            hand = {r["refresh"]: r["cpu_s"] for r in res["runs"] if r["variant"] == "handwritten"}
            for r in res["runs"]:
                row = {key: spec[key] for key in ("n", "d", "data", "k", "ratio", "threads")}
                row.update(mode=f"ivf-{r['variant']}-{r['refresh']}", **{key: (round(v, 3) if isinstance(v, float)
                                                                                  else v) for key, v in r.items()})
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

    with tempfile.TemporaryDirectory() as tmp:
        # flat data last: the pathological case (see the module docstring)
        configs = [(d, n, "hier") for d in args.dims for n in sorted(args.sizes)]
        configs += [(args.dims[0], n, "flat") for n in sorted(args.flat_sizes or [])]
        for d, n, data in configs:
            base = {"n": n, "d": d, "k": args.k, "ratio": args.ratio, "threads": args.threads,
                    "seed": args.seed, "recall_queries": args.recall_queries, "data": data}
            todo = []
            if data == "hier" and n <= args.brute_max:
                todo.append(("bruteforce", core))
            if n <= args.exact_max:
                todo.append(("exact", core))
                if data == "hier" and n == min(args.sizes) and d == args.dims[0] and core:
                    todo.append(("exact", None))  # the OPENBLAS_CORETYPE gain
            todo.append(("approx", core))
            saved, brute_total = {}, None
            for mode, cr in todo:
                spec = {**base, "mode": mode, "save": os.path.join(tmp, f"{mode}-{n}-{d}-{data}-{cr}.npz")}
                row = make_row(spec, child(spec, cr), cr)
                saved[(mode, cr)] = spec["save"]
                if mode == "bruteforce":
                    brute_total = row["total_s"]
                elif brute_total:
                    row["speedup_vs_bruteforce"] = round(brute_total / row["total_s"], 2)
                ref = None
                if mode == "exact" and ("bruteforce", core) in saved:
                    ref, row["quality_on"] = (saved[("bruteforce", core)], "all tokens, vs bruteforce (its float32 "
                                              "cdist rounding flips a few near-ties; the exact mode equals "
                                              "the float64 definition, see tests)")
                if mode == "approx" and ("exact", core) in saved:
                    ref, row["quality_on"] = saved[("exact", core)], "all tokens, vs exact"
                if ref is not None:
                    import numpy as np

                    row.update(quality(dict(np.load(ref)), dict(np.load(spec["save"]))))
                elif mode == "approx":
                    ns = min(args.sample, n)
                    sres = child({**base, "mode": "sample", "sample": ns}, core)
                    row.update({key: sres[key] for key in ("center_overlap", "assignment_agreement",
                                                            "assignment_ari", "sample_knn_recall")})
                    row["quality_on"] = f"random sample of {ns} tokens: exact vs approx on it"
                    row["sample_exact_s"] = round(sres["sample_exact_s"], 2)
                    row["sample_approx_s"] = round(sres["sample_approx_s"], 2)
                emit(row)
            if not args.no_refresh and data == "hier" and n == refresh_n and d == args.dims[0]:
                res = child({**base, "mode": "refresh"}, core)
                for name, r in res["runs"].items():
                    row = {"n": n, "d": d, "mode": f"approx-refresh-{name}", "data": data, "k": args.k,
                           "ratio": args.ratio, "total_s": round(r["total_s"], 3), "cpu_s": round(r["cpu_s"], 1),
                           **{ph: round(r[ph], 3) for ph in PHASES},
                           "kmeans_s": round(r["kmeans_s"], 3), "coarse_s": round(r["coarse_s"], 3),
                           "peak_rss_mb": round(res["peak_rss_mb"], 1), "rss_data_mb": res["rss_data_mb"],
                           "data_mb": round(n * d * 4 / 2**20, 1), "knn_recall": r.get("knn_recall"),
                           "center_overlap": None, "assignment_agreement": None, "assignment_ari": None,
                           "quality_on": None, "speedup_vs_bruteforce": None, "threads": args.threads,
                           "openblas_coretype": core, "load_avg": res["load_avg"], "info": r.get("info")}
                    if name in ("warm", "reuse"):
                        row.update(center_overlap=r["vs_cold_center_overlap"],
                                   assignment_agreement=r["vs_cold_assignment_agreement"],
                                   assignment_ari=r["vs_cold_assignment_ari"],
                                   quality_on="knn_recall: all tokens; overlap/agreement: vs the cold refresh")
                    elif name == "cold":
                        row["quality_on"] = "knn_recall: all tokens (after the drift)"
                    emit(row)
    print()
    print(table(rows))
    print(f"\nwrote {out} ({len(rows)} rows) in {time.time() - t_start:.0f}s")
    return 0


if __name__ == "__main__":
    if "--child" in sys.argv:  # a measurement child: torch must load after its thread settings; traceback to the log
        sys.exit(main())
    from missrec_recbole.command import run_command  # noqa: E402  (bad input: one error line, no traceback)

    sys.exit(run_command(main))
