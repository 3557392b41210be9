"""Shared parts of the DPC-KNN benchmarks (``benchmarks/dpc_knn.py`` and its ``--ivf-compare`` job,
``benchmarks/dpc_knn_ivf.py``): the generated tokens, the quality measures and the measured child processes."""

from __future__ import annotations

import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENTRY = Path(__file__).with_name("dpc_knn.py")  # every measurement child runs ``dpc_knn.py --child SPEC``


# ----------------------------------------------------------------------------------------------
# data


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


# ----------------------------------------------------------------------------------------------
# quality


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
# processes


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


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
    proc = subprocess.run([sys.executable, str(ENTRY), "--child", json.dumps(spec)], env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"the {spec['mode']} measurement (n={spec['n']}, d={spec['d']}) failed: {last}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["wall_s"] = time.perf_counter() - t0
    res["load_avg"] = [round(load0, 2), round(os.getloadavg()[0], 2)]
    return res
