"""The report: results.md (mean ± std over seeds, costs, targets) and longtail.png."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from missrec_recbole.bench.rows import suite_rows
from missrec_recbole.bench.settings import MODES, SASREC_SETTINGS, TABLES
from missrec_recbole.bench.store import Results
from missrec_recbole.bench.worker import RUN_KINDS
from missrec_recbole.files import atomic_write
from missrec_recbole.data.atomic_files import tab_rows
from missrec_recbole.data.dataset import dataset_item_ids
from missrec_recbole.evaluation import case_ndcg


def _mean_std(values, digits=4) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{np.mean(values):.{digits}f} ± {np.std(values, ddof=1):.{digits}f}"


def _suite_by_name() -> dict:
    return {(row.table, row.name): row for row in suite_rows(tuple(TABLES))}


def group_runs(data: dict) -> dict:
    """``{table: {label: [runs]}}`` in suite order. A model run with several option sets (``--key``, ``--MODEL.key``,
    ``--STAGE.key``) gives one line per row and set, labelled with the options that tell the model's sets apart
    (the set without them keeps the row's plain name), so that each pre-trained line meets the scratch line of its
    own options. Within a set only the runs with the config hash of its latest run count: props/ or the data
    changed since the older ones, which stay in results.json."""
    suite = _suite_by_name()
    by_row, option_sets = {}, {}
    for run in data["runs"]:
        options = _command_line_options(run, suite.get((run["table"], run["row"])))
        by_row.setdefault((run["table"], run["row"]), {}).setdefault(_key(options), []).append(run)
        option_sets.setdefault((run["table"], run.get("kind")), []).append(options)
    differing = {key: _differing_options(sets) for key, sets in option_sets.items()}
    order = list(suite) + [key for key in by_row if key not in suite]  # rows this version of the suite no longer has
    groups = {}
    for table, name in order:
        rows = groups.setdefault(table, {})
        variants = by_row.get((table, name), {})
        if not variants:
            rows[name] = []
        for key, runs in variants.items():
            latest = max(runs, key=lambda r: r["date"])["config_hash"]
            label = name + variant_suffix(json.loads(key), differing[(table, runs[0].get("kind"))])
            rows[label] = [r for r in runs if r["config_hash"] == latest]
    return groups


def shared_options(data: dict) -> dict:
    """``{model label: options}`` every run of a model was given on top of props/ (beyond the row's own and the
    protocol's SASRec settings), which no line label shows since they do not tell runs apart."""
    suite = _suite_by_name()
    shared = {}
    for run in data["runs"]:
        options = _command_line_options(run, suite.get((run["table"], run["row"])))
        if run.get("kind") == "sasrec":
            options = {k: v for k, v in options.items() if SASREC_SETTINGS.get(k, object()) != v}
        kind = RUN_KINDS[run["kind"]].label if run.get("kind") in RUN_KINDS else run["row"].split()[0]
        common = shared.setdefault(kind, options)
        shared[kind] = {k: v for k, v in common.items() if _key(options.get(k)) == _key(v)}
    return {kind: options for kind, options in shared.items() if options}


def _command_line_options(run: dict, row) -> dict:
    """A run's options without those its row sets itself (:attr:`Row.own_settings`)."""
    own = row.own_settings if row is not None else {}
    return {key: value for key, value in run.get("settings", {}).items() if key not in own}


def _key(options: dict) -> str:
    return json.dumps(options, sort_keys=True, default=str)


def _differing_options(option_sets: list[dict]) -> list[str]:
    """The options whose value is not the same in every set (absent counts as a value)."""
    keys = sorted({key for options in option_sets for key in options})
    return [key for key in keys if len({_key(options.get(key)) for options in option_sets}) > 1]


def variant_suffix(options: dict, differing: list[str]) -> str:
    """`` (item_adapter=moe)``: the options of ``differing`` this set gives (nothing for props/ defaults)."""
    given = [f"{key}={options[key]}" for key in differing if key in options]
    return f" ({', '.join(given)})" if given else ""


COLUMNS = (
    ("test Recall@10", lambda r: r["test"]["recall@10"], 4),
    ("test NDCG@10", lambda r: r["test"]["ndcg@10"], 4),
    ("test Recall@50", lambda r: r["test"]["recall@50"], 4),
    ("test NDCG@50", lambda r: r["test"]["ndcg@50"], 4),
    ("valid NDCG@10", lambda r: r["valid"]["ndcg@10"], 4),
    ("best epoch", lambda r: r.get("best_epoch"), 1),
    ("train s/epoch", lambda r: r.get("train_seconds_per_epoch"), 1),
    ("interest refresh s", lambda r: r.get("interest_refresh_seconds"), 2),
    ("trainable params", lambda r: r.get("trainable_parameters"), 0),
    ("peak RSS GB", lambda r: r["peak_rss_bytes"] / 2**30, 2),
)


def _table_lines(rows: dict) -> list[str]:
    lines = ["| model | seeds | " + " | ".join(c[0] for c in COLUMNS) + " | config |",
             "|---|---|" + "---|" * (len(COLUMNS) + 1)]
    for name, runs in rows.items():
        ok = [r for r in runs if r["status"] == "ok"]
        if ok:
            cells = [_mean_std([get(r) for r in ok], digits) for _, get, digits in COLUMNS]
            lines.append(f"| {name} | {len(ok)} | " + " | ".join(cells) + f" | {ok[0]['config_hash']} |")
        elif runs:
            lines.append(f"| {name} | 0 | {runs[-1]['status']}: {runs[-1]['message'].splitlines()[0]} |")
    return lines


def _mean_of(runs, get):
    ok = [get(r) for r in runs if r["status"] == "ok"]
    return float(np.mean(ok)) if ok and None not in ok else None


def sasrec_line(rows: dict) -> str | None:
    """The SASRec line other rows are measured against: the plain one (props/ options), else the first with runs
    (every SASRec run was given options that its other runs do not share)."""
    if rows.get("SASRec"):
        return "SASRec"
    return next((label for label, runs in rows.items() if label.startswith("SASRec (") and runs), None)


def _cost_lines(groups: dict) -> list[str]:
    keys = ("train_seconds_per_epoch", "train_cpu_seconds_per_epoch", "seconds_per_epoch")
    lines = []
    for table, rows in groups.items():
        sasrec = [_mean_of(rows.get(sasrec_line(rows), []), lambda r, k=k: r.get(k)) for k in keys]
        for name, runs in rows.items():
            ours = [_mean_of(runs, lambda r, k=k: r.get(k)) for k in keys]
            if name.startswith("MISSRec") and None not in ours + sasrec:
                lines.append(f"| {table} | {name} | {ours[0]:.2f} | {sasrec[0]:.2f} | "
                             + " | ".join(f"{a / b:.2f}x" for a, b in zip(ours, sasrec)) + " |")
    if not lines:
        return []
    return ["## Cost: MISSRec vs SASRec seconds per fine-tune epoch (same run, same data and batch size)", "",
            "Training pass of an epoch (MISSRec's includes the interest refresh): wall-clock seconds and their "
            "ratio, the ratio of process CPU seconds (less sensitive to other jobs on a shared machine) and the "
            "wall-clock ratio of whole epochs including validation. Target: at most 1.5x.", "",
            "| table | MISSRec row | MISSRec s/epoch | SASRec s/epoch | ratio | CPU ratio | whole-epoch ratio |",
            "|---|---|---|---|---|---|---|", *lines, ""]


def _comparison_row(table: str, ours: tuple[str, list], theirs: tuple[str, list], needed_gain: float,
                    ranks: Results | None) -> str:
    """A target table's row: our line and the line it is compared with (label, runs), the relative gain of the
    seed means of test NDCG@10, whether it is met and the gain's 95% interval over test users."""
    ours_value, theirs_value = (_mean_of(runs, lambda r: r["test"]["ndcg@10"]) for _, runs in (ours, theirs))
    gain = ours_value / theirs_value - 1 if theirs_value else float("nan")
    interval = gain_interval(ours[1], theirs[1], ranks)
    shown = f"[{interval[0]:+.1%}, {interval[1]:+.1%}]" if interval else "–"
    return (f"| {table} | {ours[0]} {ours_value:.4f} | {theirs[0]} {theirs_value:.4f} | {gain:+.1%} | "
            f"{'yes' if gain >= needed_gain else 'no'} | {shown} |")


def seed_mean_cases(runs: list, ranks: Results) -> dict | None:
    """Per test case, averaged over the line's seeds: ``recall@10`` and ``ndcg@10``, with the cases' target items
    (``item``) and the number of ``seeds``; None unless every run has ranks on the same cases."""
    cases = [ranks.cases(r["key"]) for r in runs if r["status"] == "ok"]
    if not cases or any(c is None for c in cases) or any(not np.array_equal(c["item"], cases[0]["item"])
                                                       for c in cases):
        return None
    return {"item": cases[0]["item"], "recall@10": np.mean([c["rank"] <= 10 for c in cases], axis=0),
            "ndcg@10": np.mean([case_ndcg(c["rank"], 10) for c in cases], axis=0), "seeds": len(cases)}


def gain_interval(ours: list, theirs: list, ranks: Results | None) -> tuple[float, float] | None:
    """:func:`bootstrap_gain` of two lines' (runs) seed-averaged per-case NDCG@10; None without both lines' ranks
    on the same cases."""
    pair = [seed_mean_cases(runs, ranks) for runs in (ours, theirs)] if ranks is not None else [None]
    if None in pair or not np.array_equal(pair[0]["item"], pair[1]["item"]):
        return None
    return bootstrap_gain(pair[0]["ndcg@10"], pair[1]["ndcg@10"])


def bootstrap_gain(ours: np.ndarray, theirs: np.ndarray, resamples: int = 1000,
                   seed: int = 0) -> tuple[float, float]:
    """95% paired-bootstrap interval of the relative gain mean(ours) / mean(theirs) - 1 over test cases (users):
    how much the gain could move with another sample of test users (not with other training seeds: that is the
    table's ±). Unbounded (inf) where ``theirs`` has no hit in a resample."""
    rng = np.random.default_rng(seed)
    gains = []
    for _ in range(max(1, resamples // 100)):  # 100 resamples at a time keeps memory at 100 x cases
        index = rng.integers(0, len(ours), size=(100, len(ours)))
        a, b = ours[index].mean(axis=1), theirs[index].mean(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            gains.append(np.where(b > 0, a / b - 1, np.where(a > 0, np.inf, 0.0)))
    with np.errstate(invalid="ignore"):  # interpolating between two inf: nan, i.e. unbounded
        low, high = np.nan_to_num(np.percentile(np.concatenate(gains), [2.5, 97.5]), nan=np.inf, posinf=np.inf)
    return float(low), float(high)


def _comparison_section(title: str, columns: tuple[str, str], lines: list[str]) -> list[str]:
    if not lines:
        return []
    return [f"## {title}", "", f"| table | {columns[0]} | {columns[1]} | gain | met | 95% interval of the gain "
            "(test users) |", "|---|---|---|---|---|---|", *lines, ""]


def _target_lines(groups: dict, ranks: Results | None) -> list[str]:
    lines = []
    for table, rows in groups.items():
        means = {name: _mean_of(runs, lambda r: r["test"]["ndcg@10"]) for name, runs in rows.items()}
        ours = {n: v for n, v in means.items() if n.startswith("MISSRec") and v is not None}
        others = {n: v for n, v in means.items() if not n.startswith("MISSRec") and v is not None}
        if ours and others:
            best, rival = max(ours, key=ours.get), max(others, key=others.get)
            lines.append(_comparison_row(table, (best, rows[best]), (rival, rows[rival]), 0.05, ranks))
    return _comparison_section("Quality target: best MISSRec test NDCG@10 >= 1.05 x best of SASRec/UniSRec "
                               "(mean over seeds)", ("best MISSRec", "best baseline"), lines)


def _pretraining_lines(groups: dict, ranks: Results | None) -> list[str]:
    """Does pre-training pay? Each pre-trained MISSRec row against MISSRec from scratch in the same mode."""
    lines = []
    for table, rows in groups.items():
        for mode in MODES:
            for start in ("pre-trained", "pre-trained (all weights)"):
                prefix = f"MISSRec {start} {mode}"
                for label in [label for label in rows if label.startswith(prefix)]:
                    variant = label[len(prefix):]  # compared with scratch under the same options
                    scratch = rows.get(f"MISSRec scratch {mode}{variant}", [])
                    if _mean_of(scratch, lambda r: r["test"]["ndcg@10"]) and _mean_of(
                            rows[label], lambda r: r["test"]["ndcg@10"]) is not None:
                        lines.append(_comparison_row(table, (label, rows[label]), ("scratch", scratch), 0.0, ranks))
    return _comparison_section("Transfer target: pre-trained MISSRec test NDCG@10 >= MISSRec from scratch "
                               "(mean over seeds)", ("pre-trained", "scratch"), lines)


def _split_note(split: dict | None) -> str:
    if not split:
        return ""
    return (f"; user split seed {split['seed']} ({split['users']['pre']} pre-training / {split['users']['eval']} "
            "evaluation users)")


def results_markdown(data: dict, ranks: Results | None = None) -> str:
    """results.md; with ``ranks`` (ranks.npz) the target tables give each gain's interval over test users."""
    groups = group_runs(data)
    names = data["datasets"]
    shown = [r for rows in groups.values() for runs in rows.values() for r in runs]
    commands = sorted({r["command"] for r in shown}) or [data["command"]]
    dates = sorted(r["date"] for r in shown) or [data["updated"]]
    machines = {json.dumps(r["machine"], sort_keys=True) for r in shown} or {json.dumps(data["machine"])}
    lines = [f"# Benchmark on {data['dataset']}", "",
             *[f"Command: `{c}`  " for c in commands], f"Date: {dates[0]} to {dates[-1]}  ",
             *["Machine: " + ", ".join(f"{k} {v}" for k, v in json.loads(m).items()) + "  " for m in sorted(machines)],
             "Code: git " + ", ".join(sorted({str(r.get("code")) for r in shown} or {str(data["code"])})) + "  ",
             f"Seeds: {sorted({r['seed'] for r in shown}) or data['seeds']}" + _split_note(data.get("split")),
             "", data["protocol"], ""]
    shared = shared_options(data)
    if shared:
        lines += ["Options beyond props/ given to every run of a model: " + "; ".join(
            f"{kind} {', '.join(f'{k}={v}' for k, v in sorted(options.items()))}" for kind, options in shared.items())
            + ".", ""]
    for table, rows in groups.items():
        if not any(rows.values()):
            continue
        lines += [f"## {TABLES[table].format(**names)}", "", *_table_lines(rows), ""]
    lines += _cost_lines(groups) + _target_lines(groups, ranks) + _pretraining_lines(groups, ranks)
    lines += ["Mean ± sample std over seeds. `train s/epoch`: the training pass of one epoch (MISSRec: with the "
              "interest refresh), `interest refresh s`: DPC-KNN refresh per epoch, `peak RSS`: the run's own "
              "process (each run is a separate process). Per-run numbers: results.json; per-test-case ranks: "
              "ranks.npz; long tail: longtail.png.", ""]
    return "\n".join(lines)


def train_frequency(folder: Path, name: str) -> dict:
    """How often each item index is a target in ``NAME.train.inter`` (original item ids counted by their index)."""
    counts = {}
    item_ids = dataset_item_ids(folder, name)
    for number, fields in tab_rows(folder / f"{name}.train.inter"):
        if number > 1:
            item = item_ids[fields[-1]] if item_ids else int(fields[-1])
            counts[item] = counts.get(item, 0) + 1
    return counts


def longtail_buckets(frequency: np.ndarray, n_buckets: int = 5) -> tuple[np.ndarray, list[str]]:
    """Quantile buckets of the test cases' target training frequencies: (bucket per case, labels)."""
    edges = np.unique(np.quantile(frequency, np.linspace(0, 1, n_buckets + 1)))
    bucket = np.searchsorted(edges[1:-1], frequency, side="right")
    labels = []
    for b in range(len(edges) - 1):
        members = frequency[bucket == b]
        labels.append(f"{members.min()}-{members.max()}" if members.size else "")
    return bucket, labels


def longtail_series(data: dict, ranks: Results, table: str, n_buckets: int = 5):
    """Per bucket: test cases and each row's Recall@10 relative to SASRec's (means over seeds), and which SASRec
    line that is."""
    info = data["datasets_paths"][table]
    frequency_of = train_frequency(Path(info["path"]) / info["name"], info["name"])
    per_row = {}
    items = None
    lines = group_runs(data).get(table, {})  # the lines of the results table
    reference = sasrec_line(lines)
    for label, runs in lines.items():
        for run in runs:
            cases = ranks.cases(run["key"]) if run["status"] == "ok" else None
            if cases is not None:
                items = cases["item"] if items is None else items
                per_row.setdefault(label, []).append(cases["rank"] <= 10)
    if items is None or reference not in per_row:
        return None
    frequency = np.array([frequency_of.get(int(i), 0) for i in items])
    bucket, labels = longtail_buckets(frequency, n_buckets)
    counts = np.bincount(bucket, minlength=len(labels))

    def recall(hits):
        mean_hits = np.mean(hits, axis=0)
        return np.array([mean_hits[bucket == b].mean() if counts[b] else np.nan for b in range(len(labels))])

    base = recall(per_row[reference])
    with np.errstate(divide="ignore", invalid="ignore"):  # SASRec at 0 in a bucket: no ratio (nan)
        relative = {row: np.where(base > 0, recall(hits) / base, np.nan) for row, hits in per_row.items()
                    if row != reference}
    return labels, counts, relative, reference


def plot_longtail(data: dict, ranks: Results, path: Path) -> str:
    """``longtail.png`` like the MISSRec paper's Figure 4; returns a message."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "longtail.png skipped: matplotlib is not installed (pip install -e .[plot])"
    series = {t: longtail_series(data, ranks, t) for t in TABLES if t in data["datasets_paths"]}
    series = {t: s for t, s in series.items() if s is not None}
    if not series:
        return "longtail.png skipped: no SASRec run with per-case ranks yet"
    fig, axes = plt.subplots(1, len(series), figsize=(7 * len(series), 6), squeeze=False)
    for ax, (table, (labels, counts, relative, reference)) in zip(axes[0], series.items()):
        x = np.arange(len(labels))
        ax.bar(x, counts, color="#d9d9d9", label="test cases")
        ax.set_xticks(x, labels)
        ax.set_xlabel("target item's training frequency (quantile buckets)")
        ax.set_ylabel("test cases")
        ax.set_title(TABLES[table].split(":")[0] + f": {data['datasets_paths'][table]['name']}")
        right = ax.twinx()
        for row, values in relative.items():
            right.plot(x, values, marker="o", label=row)
        right.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
        finite = [v for values in relative.values() for v in values if np.isfinite(v) and v > 0]
        if finite and max(finite) / min(finite) > 20:
            right.set_yscale("log")
        right.set_ylabel(f"Recall@10 relative to {reference}")
        if relative:
            right.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2)
    fig.tight_layout()
    atomic_write(path, lambda h: fig.savefig(h, format="png", dpi=110))
    plt.close(fig)
    return f"written: {path}"


def write_report(data: dict, ranks: Results, out_dir: Path) -> list[str]:
    md = out_dir / "results.md"
    atomic_write(md, lambda h: h.write(results_markdown(data, ranks).encode("utf-8")))
    return [f"written: {md}", plot_longtail(data, ranks, out_dir / "longtail.png")]
