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

``--ivf-compare N ...`` runs only the comparison of the hand-written IVF join with FAISS's ``IndexIVFFlat``
(``benchmarks/dpc_knn_ivf.py``; written to ``dpc_knn_ivf.json``).

``refresh`` rows (``--refresh-n``, first d): the incremental-refresh experiment -- approximate run,
then every token moves as after an epoch of adapter training (:func:`dpc_knn_common.drift`), then the
next refresh cold (no state), warm (``state=`` from the first run: coarse quantizer re-fitted with
3 Lloyd iterations) and reused as-is (0 iterations).

Data: a Gaussian mixture with ``0.02 * N`` clusters of log-normal sizes and varying spread,
rows L2-normalised like CLIP embeddings (:func:`dpc_knn_common.clustered`): ``hier`` (clusters grouped in
categories, as real item embeddings are; every row above) and, with ``--flat-sizes``, ``flat``
(independent cluster directions, all clusters nearly equidistant: the hard case for any IVF).
``OPENBLAS_CORETYPE`` (FAISS's bundled OpenBLAS picks
slow generic kernels on recent CPUs) is set for the child processes only, from /proc/cpuinfo;
the smallest size is also run in exact mode without it to show the gain.

Usage::

    nohup python benchmarks/dpc_knn.py > dpc_knn.log 2>&1 &      # full run, ~30-60 min on 2 cores
    python benchmarks/dpc_knn.py --quick                          # smoke test, ~1 min
    python benchmarks/dpc_knn.py --sizes 10000 100000 --dims 300
    nice -n 19 python benchmarks/dpc_knn.py --ivf-compare 100000 300000 --dims 512 --threads 1 --faiss-nprobe 4
    python benchmarks/dpc_knn.py --ivf-compare 2000 --dims 64 --threads 1  # smoke test of the comparison

Writes ``benchmarks/results/dpc_knn.json`` (a list of rows) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # the sibling modules below, also when this file is loaded by path
    sys.path.insert(0, str(HERE))

from dpc_knn_common import ROOT, child, clustered, coretype, drift, knn_recall, list_recall, quality, rss_mb  # noqa: E402

PHASES = ("knn_s", "density_s", "delta_s", "assign_s")


# ----------------------------------------------------------------------------------------------
# child side





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
        from dpc_knn_ivf import ivf_compare

        return {**out, **ivf_compare(x, kc, spec)}
    else:
        raise ValueError(mode)
    out["peak_rss_mb"] = rss_mb()
    if spec.get("recall_queries"):
        out["knn_recall"] = knn_recall(x, knn, spec["recall_queries"], spec["seed"])
    np.savez(spec["save"], centers=centers, assignment=assignment)
    return out








# ----------------------------------------------------------------------------------------------
# parent side




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
        from dpc_knn_ivf import compare

        return compare(args, out)

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
