"""A ready GPU check: one command on a machine with one CUDA GPU, PyTorch installed and no network.

    python benchmarks/gpu_check.py                  # < 8 min on one GPU; JSON: benchmarks/results/gpu_check.json
    python benchmarks/gpu_check.py --allow-cpu      # no GPU: the same steps on the CPU (to test the script)

Steps, each recorded in the JSON:

1. environment: PyTorch, CUDA, GPU name and memory, TF32 flags;
2. the tests marked ``gpu`` (``python -m pytest -m gpu``): fine-tuning and pre-training on CUDA, checkpoints written
   on GPU loaded on CPU and the reverse, inference and export on CUDA, mixed precision (bf16, fp16), CPU-vs-GPU
   agreement;
3. seconds per epoch (whole epoch: interest refresh, training, full-ranking validation; and the training part
   alone) of MISSRec, UniSRec and RecBole's SASRec fine-tuning on the generated demo domain Demo-D, and on
   Scientific-mm when ``../shared/datasets/Scientific-mm`` (relative to the repository) exists (skipped otherwise);
4. pre-training throughput: MISSRec on Demo-A (rows per second of the training epoch);
5. CPU-vs-GPU agreement of a short run: the same one-epoch MISSRec fine-tuning (no dropout, so the only randomness, the
   seeded initialisation and data order, is drawn on the host) on both devices: every valid/test metric within
   ``AGREEMENT_TOLERANCE`` (0.01 absolute); and the CPU-trained model evaluated on the GPU: within
   ``EVALUATION_TOLERANCE`` (0.001; same weights, only float rounding differs).

Without CUDA it prints one line saying so and exits with status 2 (``--allow-cpu`` runs everything on the CPU,
comparing the CPU with itself). Exit status 1 when a test or an agreement check fails.

Nothing is downloaded: the demo data is generated locally. Python packages needed beyond PyTorch (bring them as
wheels): this package (``pip install --no-deps -e .``) and its requirements -- recbole==1.2.1 with its own
(colorama, colorlog, numpy, pandas, plotly, psutil, pyyaml, ray, scikit-learn, scipy, tabulate, tensorboard,
texttable, thop, tqdm), faiss-cpu, setuptools<81 (ray imports pkg_resources) -- and pytest>=8 for step 2.
``pip download -d wheels "recbole==1.2.1" faiss-cpu "setuptools<81" "pytest>=8" "numpy>=2" pandas`` on a machine
with network, then ``pip install --no-index --find-links wheels ...`` on the GPU machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
SCIENTIFIC = ROOT.parent / "shared" / "datasets" / "Scientific-mm"
AGREEMENT_TOLERANCE = 0.01  # |metric on GPU - metric on CPU| after the same short training run
EVALUATION_TOLERANCE = 0.001  # the same weights evaluated on both devices
MODELS = ("missrec", "unisrec", "sasrec")
NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attn_dropout_prob": 0.0, "adaptor_dropout_prob": 0.0}
QUICK = {"hidden_size": 32, "inner_size": 64, "n_heads": 2, "topk": [10]}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--allow-cpu", action="store_true", help="without CUDA, run every step on the CPU")
    parser.add_argument("--quick", action="store_true", help="tiny models and one epoch (a test of the script)")
    parser.add_argument("--no-tests", action="store_true", help="skip step 2 (the gpu-marked tests)")
    parser.add_argument("--datasets", default="Demo-D,Scientific-mm",
                        help="fine-tuning datasets of step 3 (Scientific-mm: when ../shared has it)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per timed fine-tuning run (default 2)")
    parser.add_argument("--data_path", type=Path, help="folder with the datasets (default: the demo domains, "
                                                      "generated into the work folder)")
    parser.add_argument("--pretrain_dataset", default="Demo-A", help="dataset of step 4 (default Demo-A)")
    parser.add_argument("--agreement_dataset", default="Demo-D", help="dataset of step 5 (default Demo-D)")
    parser.add_argument("--work_dir", type=Path, help="demo data and checkpoints (default: a temporary folder)")
    parser.add_argument("--out", type=Path, help="JSON file (default benchmarks/results/gpu_check[_cpu].json)")
    return parser.parse_args(argv)


def environment(device: torch.device) -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda_build": torch.version.cuda,
            "device": str(device), "cpus": os.cpu_count(), "load_average": os.getloadavg()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gb=round(props.total_memory / 2**30, 1),
                    tf32_matmul=torch.backends.cuda.matmul.allow_tf32, tf32_cudnn=torch.backends.cudnn.allow_tf32)
    return info


def run_gpu_tests() -> dict:
    """``pytest -m gpu`` in a subprocess: counts of passed/failed/skipped and the summary line."""
    start = time.time()
    out = subprocess.run([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-rfEs", "-p", "no:cacheprovider"],
                         cwd=ROOT, capture_output=True, text=True)
    lines = out.stdout.strip().splitlines()
    return {"returncode": out.returncode, "summary": lines[-1] if lines else out.stderr[-500:],
            "failures": [line for line in lines if line.startswith(("FAILED", "ERROR"))],
            "seconds": round(time.time() - start, 1), "ok": out.returncode == 0}


def spec(kind: str, dataset: str, options: dict) -> dict:
    """A bench worker spec (missrec_recbole.bench.worker): one fine-tuning run from scratch."""
    return {"kind": kind, "dataset": dataset, "config_files": [], "config_dict": options, "show_progress": False,
            "pretrained": None, "mode": options.get("mode", "transductive")}


def epoch_seconds(kind: str, dataset: str, options: dict) -> dict:
    from missrec_recbole.bench.worker import RUN_KINDS

    if kind == "unisrec":
        options = {**options, "modalities": ["text"]}
    result, recorder = RUN_KINDS[kind].finetune(spec(kind, dataset, options))
    return {"seconds_per_epoch": round(result["seconds_per_epoch"], 3),
            "train_seconds_per_epoch": round(sum(recorder.train_epoch_seconds) / len(recorder.train_epoch_seconds), 3),
            "epochs": result["epochs"], "valid_ndcg@10": result["valid"]["ndcg@10"]}


def pretrain_throughput(dataset: str, options: dict) -> dict:
    from missrec_recbole.bench.worker import RecordingTrainer, recording
    from missrec_recbole.quick_start import pretrain
    from missrec_recbole.trainer import MISSRecTrainer

    pretrain([dataset], config_dict={**options, "epochs": 1, "save_step": 1},
             trainer_class=recording(MISSRecTrainer))
    rows = sum(1 for _ in open(Path(options["data_path"]) / dataset / f"{dataset}.train.inter")) - 1
    seconds = RecordingTrainer.last.train_epoch_seconds[0]
    return {"dataset": dataset, "rows": rows, "epoch_seconds": round(seconds, 3), "rows_per_second": round(rows / seconds, 1)}


def _metric_gap(first: dict, second: dict) -> float:
    return max(abs(float(first[key]) - float(second[key])) for key in first)


def agreement(data_path, work, epochs: int = 2, options=None, gpu: str = "cuda", dataset: str = "Demo-D") -> dict:
    """The same short MISSRec run on the CPU and on ``gpu``; and the CPU-trained model evaluated on ``gpu``."""
    from missrec_recbole.quick_start import finetune, load_data_and_model
    from missrec_recbole.trainer import MISSRecTrainer

    runs = {}
    for device in ("cpu", gpu):
        config = {"data_path": str(data_path), "checkpoint_dir": str(Path(work) / f"agreement-{device}"),
                  "device": device, "epochs": epochs, "seed": 2026, "state": "ERROR", **NO_DROPOUT, **(options or {})}
        runs[device] = finetune(dataset, config_dict=config)
    config, model, _, _, _, test_data = load_data_and_model(runs["cpu"]["model_file"], config_dict={"device": gpu})
    evaluated = MISSRecTrainer(config, model).evaluate(test_data, load_best_model=False)
    training_gap = max(_metric_gap(runs["cpu"][split], runs[gpu][split]) for split in ("valid", "test"))
    evaluation_gap = _metric_gap(runs["cpu"]["test"], {key: evaluated[key] for key in runs["cpu"]["test"]})
    return {"cpu": {s: dict(runs["cpu"][s]) for s in ("valid", "test")},
            "gpu": {s: dict(runs[gpu][s]) for s in ("valid", "test")},
            "training_gap": training_gap, "training_tolerance": AGREEMENT_TOLERANCE,
            "evaluation_gap": evaluation_gap, "evaluation_tolerance": EVALUATION_TOLERANCE,
            "agrees": training_gap <= AGREEMENT_TOLERANCE and evaluation_gap <= EVALUATION_TOLERANCE}


def timed_step(report: dict, name: str, action):
    start = time.time()
    report[name] = action()
    print(f"{name}: done in {time.time() - start:.0f}s", flush=True)


def run_checks(args, device: torch.device, work: Path) -> dict:
    from missrec_recbole.tools.demo import DEMO_DOMAINS, ensure_demo_dataset

    data = args.data_path or work / "data"
    names = [name for name in args.datasets.split(",") if name]
    ensure_demo_dataset(data, sorted({args.pretrain_dataset, args.agreement_dataset, *names} & set(DEMO_DOMAINS)))
    size = QUICK if args.quick else {}
    epochs = 1 if args.quick else args.epochs
    base = {"device": str(device), "epochs": epochs, "stopping_step": epochs + 1, "state": "ERROR", **size}
    report = {"environment": environment(device), "quick": args.quick}
    if not args.no_tests:
        timed_step(report, "gpu_tests", run_gpu_tests)
    speed = {}
    for dataset in names:
        folder = SCIENTIFIC.parent if dataset == SCIENTIFIC.name else data
        if not (folder / dataset).is_dir():
            speed[dataset] = {"skipped": f"{folder / dataset} not found"}
            continue
        options = {**base, "data_path": str(folder), "checkpoint_dir": str(work / "saved")}
        timed_step(speed, dataset, lambda: {kind: epoch_seconds(kind, dataset, options) for kind in MODELS})
    report["seconds_per_epoch"] = speed
    pretrain_options = {**base, "data_path": str(data), "checkpoint_dir": str(work / "pretrain")}
    timed_step(report, "pretrain", lambda: pretrain_throughput(args.pretrain_dataset, pretrain_options))
    agreement_options = QUICK if args.quick else {"hidden_size": 64, "inner_size": 128}
    timed_step(report, "agreement", lambda: agreement(data, work, 1, agreement_options, str(device),
                                                      args.agreement_dataset))
    report["ok"] = report["agreement"]["agrees"] and report.get("gpu_tests", {}).get("ok", True)
    return report


def main(argv=None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available() and not args.allow_cpu:
        print(f"gpu_check: no CUDA GPU visible to PyTorch {torch.__version__} (CUDA build {torch.version.cuda}); "
              f"nothing checked. Run on a GPU machine, or pass --allow-cpu to run the steps on the CPU.")
        return 2
    from missrec_recbole.files import write_json

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    out = args.out or RESULTS / ("gpu_check.json" if device.type == "cuda" else "gpu_check_cpu.json")
    start = time.time()
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as temp:
        report = run_checks(args, device, args.work_dir or Path(temp))
    report["seconds"] = round(time.time() - start, 1)
    write_json(out, report)
    print(f"gpu_check: {'OK' if report['ok'] else 'FAILED'} in {report['seconds']:.0f}s on {device}; wrote {out}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
