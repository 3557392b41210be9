"""Bad input of every kind: one clear message naming the file or option, no traceback, nothing written.

The command line runs in-process (``run_missrec.run``, exactly what ``__main__`` calls) in a fresh
working folder, so RecBole's ``saved/``, ``log/`` and ``log_tensorboard/`` would appear there.
A generated fuzz set corrupts each input file of a small demo dataset in seeded ways and gives every
option of the schema a wrong type and an out-of-range value.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import run_missrec
from missrec_recbole import quick_start
from missrec_recbole.config_schema import OPTIONS, ConfigError, check_options, describe
from missrec_recbole.data import DatasetFormatError, validate_dataset
from missrec_recbole.tools.demo import generate_demo_dataset
from missrec_recbole.tools.inspect import main as inspect_main
from missrec_recbole.inference import FeatureError, ItemIdError, MISSRecPredictor
from missrec_recbole.trainer import CheckpointError, read_checkpoint
from tests.conftest import tiny_overrides, write_dataset

DIM = 16
NAME = "Fuzz"
SMALL_MODEL = ["--hidden_size=32", "--inner_size=64", "--n_heads=2", "--train_batch_size=256",
               "--eval_batch_size=256", "--faiss_threads=1", "--state=ERROR", "--dpc_k=3"]


# ---------------------------------------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def fuzz_source(tmp_path_factory):
    """A generated demo domain (16-d features) renamed to a non-demo name, so no run regenerates it."""
    root = tmp_path_factory.mktemp("fuzz-source")
    generate_demo_dataset(root, ["Demo-A"], feature_dim=DIM)
    folder = root / NAME
    folder.mkdir()
    for path in (root / "Demo-A").iterdir():
        if path.name.startswith("Demo-A."):
            shutil.copy(path, folder / path.name.replace("Demo-A", NAME, 1))
    return folder


@pytest.fixture
def fuzz_data(fuzz_source, tmp_path):
    """A fresh copy of the fuzz dataset: (data_path, folder)."""
    root = tmp_path / "data"
    shutil.copytree(fuzz_source, root / NAME)
    return root, root / NAME


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """An empty working folder: RecBole writes saved/, log/, log_tensorboard/ relative to it."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


def files_under(folder: Path) -> set:
    return {p.relative_to(folder) for p in Path(folder).rglob("*") if p.is_file()}


def cli(argv, capsys) -> tuple[int, str]:
    """``python run_missrec.py ARGV`` in-process: (exit code, stdout + stderr)."""
    code = run_missrec.run([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out + out.err


def assert_rejected(code, output, names, workdir, before=frozenset()):
    """Exit code != 0, no traceback, one final 'error:' line naming ``names``, no file written."""
    assert code != 0, output[-2000:]
    assert "Traceback" not in output, output[-3000:]
    last = output.strip().splitlines()[-1]
    assert "error:" in last, output[-2000:]
    assert names in last, (names, last)
    assert files_under(workdir) == set(before), files_under(workdir) - set(before)


def fuzz_args(root):
    return ["-d", NAME, f"--data_path={root}", f"--text_dim={DIM}", f"--image_dim={DIM}", "--epochs=1"] + SMALL_MODEL


# ---------------------------------------------------------------------------------------------- options
def bad_values(option) -> list:
    """A value of the wrong type and (where the option has a range or choices) one outside it."""
    wrong_type = {int: "abc", float: "abc", bool: "maybe", str: [1, 2], list: 5, dict: 5}[option.kind]
    values = [("wrong type", wrong_type)]
    if option.kind is list:
        values.append(("out of range", ["foo"] if option.choices else []))
    elif option.choices:
        values.append(("out of range", "foo"))
    elif option.low is not None:
        values.append(("out of range", option.low if option.low_open else option.low - 1))
    elif option.high is not None:
        values.append(("out of range", option.high if option.high_open else option.high + 1))
    return values


OPTION_CASES = [(key, how, value) for key, option in sorted(OPTIONS.items()) for how, value in bad_values(option)]


@pytest.mark.parametrize("key, how, value", OPTION_CASES, ids=[f"{k}-{h}" for k, h, _ in OPTION_CASES])
def test_every_option_wrong_type_and_out_of_range(key, how, value, fuzz_source, workdir, capsys):
    code, output = cli(fuzz_args(fuzz_source.parent) + [f"--{key}={json.dumps(value)}"], capsys)
    assert_rejected(code, output, key, workdir)


@pytest.mark.parametrize("args, names", [
    (["--epochs=0"], "option 'epochs': got 0, must be an integer >= 1"),
    (["--epochs=-1"], "option 'epochs': got -1"),
    (["--learning_rate=abc"], "option 'learning_rate': got 'abc', must be a number > 0"),
    (["--text_dim=abc"], "option 'text_dim': got 'abc', must be an integer >= 1 or null"),
    (["--train_batch_size=0"], "option 'train_batch_size': got 0"),
    (["--epochz=1"], "unknown option 'epochz': did you mean 'epochs'?"),
    (["--hidden_size=30", "--n_heads=4"], "hidden_size must be a multiple of n_heads"),
    (["--modalities=[]"], "option 'modalities'"),
    (["--n_layers=1"], "option 'n_layers': got 1, must be an integer >= 2 (MISSRec: Transformer layers: the "
                       "interest encoder has n_layers // 2, the item decoder the rest, and each needs one)."),
    (["--item_fusion=sum"], "option 'item_fusion': got 'sum', must be one of add, stack"),
    (["--dpc_mode=fast"], "option 'dpc_mode': got 'fast', must be one of auto, exact, approx"),
    (["--memory_chunk_rows=~"], "option 'memory_chunk_rows': got None, must be an integer >= 0"),
    (["--mode=foo"], "--mode: invalid choice: 'foo'"),
    (["--unfreeze=[decoder]"], "unfreeze: 'decoder' is not a module of MISSRec that fine-tuning can unfreeze"),
    (["--unfreeze=[item_decoder]"], "unfreeze: ['item_decoder'] adds modules to adapters-only fine-tuning, but "
                                    "this run trains every weight"),
    (["--topk=[10,100000]"], "option 'topk'=[10, 100000]: dataset Fuzz has only"),  # found before training
])
def test_named_option_errors(args, names, fuzz_source, workdir, capsys):
    code, output = cli(fuzz_args(fuzz_source.parent) + args, capsys)
    assert_rejected(code, output, names, workdir)


def test_options_in_yaml_files(fuzz_source, workdir, capsys):
    config = workdir.parent / "bad.yaml"
    for text, names in [("mode: foo\n", "option 'mode' (in "), ("epochz: 3\n", "did you mean 'epochs'?"),
                        ("mode: [unclosed\n", "not valid YAML (line"), ("- a\n- b\n", "must be a mapping")]:
        config.write_text(text)
        code, output = cli(fuzz_args(fuzz_source.parent) + [f"--config_files={config}"], capsys)
        assert_rejected(code, output, names, workdir)
        assert str(config) in output


def test_options_in_a_config_dict(fuzz_source):
    """The Python route gets the same checks (before RecBole's Config, before any data is read)."""
    with pytest.raises(ConfigError, match="option 'learning_rate': got 'abc'"):
        quick_start.build_config(NAME, config_dict={"data_path": str(fuzz_source.parent), "learning_rate": "abc"})
    with pytest.raises(ConfigError, match="unknown option 'hiden_size'.*did you mean 'hidden_size'"):
        quick_start.build_config(NAME, config_dict={"hiden_size": 64})


def test_per_model_limits():
    """The schema holds each model's own limits: MISSRec's encoder + decoder need n_layers >= 2, UniSRec's one
    Transformer takes 1."""
    assert check_options([("", {"n_layers": 1})], "UniSRec")["n_layers"] == 1
    with pytest.raises(ConfigError, match=r"option 'n_layers' \(in x.yaml\): got 1, must be an integer >= 2 \(MISSRec"):
        check_options([("x.yaml", {"n_layers": 1})], "MISSRec")
    with pytest.raises(ConfigError, match="option 'n_layers': got 1, must be an integer >= 2"):
        quick_start.build_config(NAME, config_dict={"n_layers": 1})  # MISSRec by default
    assert "n_layers (MISSRec)" in describe()


def test_a_config_built_by_recbole_itself_meets_the_schema(fuzz_source):
    """RecBole's own route (``Config(model=MISSRec, ...)`` with the props files, docs/training.md) skips
    build_config: the dataset checks the built Config with the same schema and messages, before reading a file."""
    from recbole.config import Config

    from missrec_recbole.config import props_files, without_argv
    from missrec_recbole.data import MISSRecDataset
    from missrec_recbole.model import MISSRec

    props = [str(path) for path in props_files("MISSRec", "finetune")]
    for bad, message in [({"item_fusion": "sum"}, "option 'item_fusion': got 'sum'"),
                         ({"n_layers": 1}, r"option 'n_layers': got 1, must be an integer >= 2 \(MISSRec"),
                         ({"modalities": ["audio"]}, r"option 'modalities': got \['audio'\]")]:
        with without_argv():
            config = Config(model=MISSRec, dataset=NAME, config_file_list=props,
                            config_dict={"data_path": str(fuzz_source.parent), **bad})
        with pytest.raises(ConfigError, match=message):
            MISSRecDataset(config)


def test_recbole_keys_stay_valid_and_values_are_read_like_recbole():
    merged = check_options([("", {"loss_type": "CE", "seq_len": None, "user_inter_num_interval": "[0,inf)",
                                  "learning_rate": 1e-3, "topk": [10, 50], "metrics": "NDCG", "gpu_id": 0})])
    assert merged["loss_type"] == "CE"
    assert quick_start.parse_overrides(["--learning_rate=1e-3", "--topk=[5,10]"]) == {"learning_rate": 0.001,
                                                                                        "topk": [5, 10]}
    for props in (quick_start.PROPS).glob("*.yaml"):  # our own defaults pass the schema (bench.yaml: not a config)
        if props.name == "bench.yaml":
            continue
        from missrec_recbole.config_schema import read_config_file

        check_options([(str(props), read_config_file(props))])


# ---------------------------------------------------------------------------------------------- files
def _cut_mid_field(path: Path, rng, field: int) -> None:
    """Truncate inside field ``field`` of a seeded data line: the line loses its later fields."""
    lines = path.read_bytes().split(b"\n")
    number = int(rng.integers(1, len(lines) - 1))
    start = sum(len(line) + 1 for line in lines[:number])
    fields = lines[number].split(b"\t")
    offset = sum(len(f) + 1 for f in fields[:field]) + max(1, len(fields[field]) // 2)
    path.write_bytes(path.read_bytes()[:start + min(offset, len(lines[number]) - 1)])


def _swap_columns(path: Path, first: int, second: int, keep_header: bool) -> None:
    lines = path.read_text().splitlines()
    swapped = []
    for number, line in enumerate(lines):
        fields = line.split("\t")
        if number or not keep_header:
            fields[first], fields[second] = fields[second], fields[first]
        swapped.append("\t".join(fields))
    path.write_text("\n".join(swapped) + "\n")


def corrupt(path: Path, how: str, seed: int) -> None:
    """Damage one input file in a seeded way."""
    rng = np.random.default_rng(seed)
    data = path.read_bytes()
    inter, binary = path.suffix == ".inter", path.suffix.endswith("CLS")
    if how == "truncated":
        if binary:
            path.write_bytes(data[: int(rng.integers(1, len(data) // 4)) * 4 + 1])
        else:
            _cut_mid_field(path, rng, field=1 if inter else 0)
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "header only":
        path.write_bytes(data.split(b"\n", 1)[0] + b"\n")
    elif how == "random bytes":
        at = int(rng.integers(len(data) // 4, len(data) // 2))
        noise = rng.integers(0x80, 0x100, 7, dtype=np.uint8).tobytes()  # not UTF-8, not a float32 row
        path.write_bytes(data[:at] + noise + data[at:])
    elif how == "NaN row":
        matrix = np.fromfile(path, dtype="<f4").reshape(-1, DIM)
        matrix[int(rng.integers(0, len(matrix)))] = np.nan
        matrix.tofile(path)
    elif how == "swapped columns":
        _swap_columns(path, 1, 2, keep_header=True) if inter else _swap_columns(path, 0, 1, keep_header=False)
    elif how == "duplicated header":
        first, rest = data.split(b"\n", 1)
        path.write_bytes(first + b"\n" + first + b"\n" + rest)
    elif how == "wrong encoding":
        path.write_bytes(data.decode("utf-8").encode("utf-16"))


TEXT_WAYS = ("truncated", "empty", "random bytes", "swapped columns", "duplicated header", "wrong encoding")
FILE_CASES = ([(f"{NAME}.{split}.inter", how) for split in ("train", "valid", "test")
               for how in TEXT_WAYS + ("header only",)]
              + [(f"{NAME}.item2index", how) for how in TEXT_WAYS]
              + [(f"{NAME}.{suffix}", how) for suffix in ("feat1CLS", "feat3CLS")
                 for how in ("truncated", "empty", "random bytes", "NaN row")])


@pytest.mark.parametrize("file, how", FILE_CASES, ids=[f"{f}-{h}" for f, h in FILE_CASES])
def test_every_input_file_corrupted(file, how, fuzz_data, workdir, capsys):
    root, folder = fuzz_data
    corrupt(folder / file, how, seed=sum(map(ord, file + how)))
    code, output = cli(fuzz_args(root), capsys)
    assert_rejected(code, output, file, workdir)
    assert inspect_main(["-d", NAME, "--data_path", str(root), f"--text_dim={DIM}", f"--image_dim={DIM}"]) == 1
    assert file in capsys.readouterr().err


@pytest.mark.parametrize("split", ["train", "valid", "test"])
def test_header_only_split(split, fuzz_data):
    root, folder = fuzz_data
    corrupt(folder / f"{NAME}.{split}.inter", "header only", seed=0)
    config = quick_start.build_config(NAME, config_dict={"data_path": str(root), "text_dim": DIM, "image_dim": DIM})
    with pytest.raises(DatasetFormatError, match=rf"{NAME}\.{split}\.inter: has a header but no data lines"):
        validate_dataset(config)


def test_line_that_is_not_tab_separated(fuzz_data):
    root, folder = fuzz_data
    path = folder / f"{NAME}.valid.inter"
    lines = path.read_text().splitlines()
    lines[3] = lines[3].replace("\t", " ")
    path.write_text("\n".join(lines) + "\n")
    config = quick_start.build_config(NAME, config_dict={"data_path": str(root), "text_dim": DIM, "image_dim": DIM})
    with pytest.raises(DatasetFormatError, match=r"line 4 has 1 tab-separated field\(s\), the header has 3"):
        validate_dataset(config)


# ---------------------------------------------------------------------------------------------- resume
@pytest.fixture
def tiny_runs(tmp_path):
    """Three tiny datasets: Tiny, Twin (same shape and counts, other content), Small (other item count)."""
    root = tmp_path / "data"
    write_dataset(root, "Tiny", seed=0)
    write_dataset(root, "Twin", seed=1)
    write_dataset(root, "Small", n_items=30, seed=0)
    return root


def tiny_args(root, name="Tiny", *extra):
    return ["-d", name, f"--data_path={root}", f"--text_dim={DIM}", f"--image_dim={DIM}", "--stopping_step=5",
            "--topk=[5,10]"] + SMALL_MODEL + list(extra)


def _train_one_epoch(root, capsys, *extra) -> Path:
    code, output = cli(tiny_args(root, "Tiny", "--epochs=1", *extra), capsys)
    assert code == 0, output[-3000:]
    (resume_file,) = Path("saved").glob("*-resume.pth")
    return resume_file.resolve()


@pytest.mark.parametrize("other, differs", [
    (("Twin",), "data_fingerprint"),
    (("Tiny", "--mode=inductive"), "mode 'transductive' there, 'inductive' here"),
    (("Small",), "items 40 there, 30 here"),
    (("Tiny", "--hidden_size=64"), "hidden_size 32 there, 64 here"),
    (("Tiny", "--adapters_only=true"), "adapters_only None there, True here"),  # other weights, other optimizer
])
@pytest.mark.slow
def test_resume_refuses_another_run(other, differs, tiny_runs, workdir, capsys):
    resume_file = _train_one_epoch(tiny_runs, capsys)
    before, original = files_under(workdir), resume_file.read_bytes()
    code, output = cli(tiny_args(tiny_runs, *other, "--epochs=2", f"--resume={resume_file}"), capsys)
    assert_rejected(code, output, "belongs to another run", workdir, before)
    assert differs in output and "load_state_dict" not in output
    assert resume_file.read_bytes() == original  # another run's file is never overwritten


def test_resumed_run_keeps_writing_its_resume_file(tiny_runs, workdir, capsys, monkeypatch, caplog):
    resume_file = _train_one_epoch(tiny_runs, capsys)
    caplog.set_level(logging.INFO)
    clock = iter([100.0, 112.0])  # finetune's start and end: 12 s for the one epoch this process trains
    monkeypatch.setattr(quick_start, "time", SimpleNamespace(time=lambda: next(clock)))
    result = quick_start.finetune("Tiny", config_dict=tiny_overrides(
        DIM, data_path=str(tiny_runs), epochs=2, stopping_step=5, checkpoint_dir="saved", state="INFO"),
        resume=str(resume_file))
    assert result["resume_file"] == str(resume_file) and result["epochs"] == 2
    assert result["seconds_per_epoch"] == 12.0  # not 12 / 2: the first epoch ran in another process
    assert [p.resolve() for p in Path("saved").glob("*-resume.pth")] == [resume_file]
    assert read_checkpoint(resume_file)["next_epoch"] == 2
    assert f"Resume file (rewritten every epoch): {resume_file}" in caplog.text


def test_finetuning_takes_the_pretrained_network_from_the_checkpoint(tiny_runs, workdir, capsys):
    """`-d NAME -p CHECKPOINT` alone fine-tunes the network that was pre-trained: the options that define it come
    from the checkpoint unless the run gives them, and a given one that disagrees is refused by name."""
    pretrain = tiny_args(tiny_runs, "Tiny", "--stage=pretrain", "--epochs=1", "--mode=inductive",
                         "--item_adapter=moe", "--n_exps=3", "--hidden_size=16", "--inner_size=24")
    assert cli(pretrain, capsys)[0] == 0
    (checkpoint,) = Path("saved").glob("*-epoch1.pth")
    finetune = ["-d", "Tiny", f"--data_path={tiny_runs}", "-p", checkpoint, "--epochs=1", "--topk=[5,10]",
                "--train_batch_size=256", "--eval_batch_size=256", "--faiss_threads=1", "--state=ERROR"]
    code, output = cli(finetune + [f"--result_json={workdir / 'result.json'}"], capsys)
    assert code == 0, output[-3000:]
    trained = read_checkpoint(json.loads((workdir / "result.json").read_text())["model_file"])["config"]
    assert {key: trained[key] for key in ("item_adapter", "n_exps", "hidden_size", "inner_size", "n_heads")} == {
        "item_adapter": "moe", "n_exps": 3, "hidden_size": 16, "inner_size": 24, "n_heads": 2}
    adapters_only = json.loads((workdir / "result.json").read_text())["trainable_parameters"]
    code, output = cli(finetune + [f"--result_json={workdir / 'result.json'}", "--unfreeze=[item_decoder]"], capsys)
    assert code == 0, output[-3000:]
    assert json.loads((workdir / "result.json").read_text())["trainable_parameters"] > adapters_only
    before = files_under(workdir)
    code, output = cli(finetune + ["--item_adapter=linear"], capsys)
    assert_rejected(code, output, "item_adapter='moe' but this run has item_adapter='linear'; leave item_adapter "
                    "out to take it from the checkpoint", workdir, before)


def test_missing_and_garbage_checkpoints(tiny_runs, workdir, capsys):
    garbage = workdir.parent / "garbage.pth"
    garbage.write_bytes(b"PK\x03\x04 not a checkpoint" * 10)
    for flag, names, hint in [("--resume", "nope-resume.pth", "named in the log of the interrupted run"),
                              ("-p", "nope.pth", "written by --stage=pretrain")]:
        code, output = cli(tiny_args(tiny_runs, "Tiny", f"{flag}={workdir.parent / names}"), capsys)
        assert_rejected(code, output, hint, workdir)
    for flag in ("--resume", "-p"):
        code, output = cli(tiny_args(tiny_runs, "Tiny", f"{flag}={garbage}"), capsys)
        assert_rejected(code, output, "not a readable MISSRec checkpoint", workdir)
        assert "weights_only" not in output
    with pytest.raises(CheckpointError) as error:
        read_checkpoint(garbage)
    assert "weights_only" not in str(error.value)


def test_pretraining_never_overwrites_another_runs_checkpoints(tiny_runs, workdir, capsys):
    args = tiny_args(tiny_runs, "Tiny", "--stage=pretrain", "--epochs=1", "--mode=inductive")
    assert cli(args, capsys)[0] == 0
    first = {p: p.read_bytes() for p in Path("saved").glob("*-epoch1.pth")}
    assert [p.name for p in first] == ["MISSRec-Tiny-inductive-epoch1.pth"]
    code, output = cli(args, capsys)
    assert code == 0, output[-2000:]
    assert all(p.read_bytes() == data for p, data in first.items())
    assert len(list(Path("saved").glob("*-epoch1.pth"))) == 2


# ---------------------------------------------------------------------------------------------- CLI
def test_no_traceback_unless_debug(fuzz_source, workdir, capsys, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("something unexpected\nsecond line")

    monkeypatch.setattr(quick_start, "validate_dataset", broken)
    code, output = cli(fuzz_args(fuzz_source.parent), capsys)
    assert_rejected(code, output, "error: RuntimeError: something unexpected second line (run again with --debug",
                    workdir)
    code, output = cli(fuzz_args(fuzz_source.parent) + ["--debug"], capsys)
    assert code == 1 and "Traceback" in output and "RuntimeError" in output


def test_recommend_commands_give_one_error_line(tiny_runs, workdir, capsys):
    from missrec_recbole.cli import recommend

    missing = workdir.parent / "model.pth"
    for command in (lambda argv: run_missrec.run(["recommend"] + argv), recommend):
        code = command(["-p", str(missing), "--history", "A"])
        output = capsys.readouterr().err
        assert code == 1 and "Traceback" not in output and output.strip().startswith(f"error: {missing}")


def test_data_tools_give_one_error_line(workdir, capsys):
    from missrec_recbole.command import run_command
    from missrec_recbole.tools import merge

    code = run_command(merge.main, ["Nope1", "Nope2", "-o", "X", f"--data_path={workdir}"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err and "Nope1" in err


@pytest.mark.slow
@pytest.mark.parametrize("script", ["cold_start.py", "interest_stats.py", "python -m missrec_recbole.bench"])
def test_benchmark_scripts_give_one_error_line(script, tmp_path):
    """The benchmark entry points a user runs on their own data end a bad dataset in one line, as the tools do."""
    import subprocess
    import sys

    if script.startswith("python -m"):
        entry, output = script.split()[1:], f"--out_dir={tmp_path / 'out'}"
    else:
        entry, output = [str(Path(__file__).resolve().parents[1] / "benchmarks" / script)], f"--out={tmp_path / 'out.json'}"
    result = subprocess.run([sys.executable, *entry, "-d", "Nope", f"--data_path={tmp_path}", output],
                            capture_output=True, text=True, cwd=tmp_path, timeout=300)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[-1].startswith("error: ") and "Nope" in lines[-1]
    assert not (tmp_path / "out.json").exists() and not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.parametrize("script, args, code, expected", [
    ("dpc_knn.py", ["--dims", "0"], 2, "--dims must be positive"),
    ("dpc_knn.py", ["--ratio", "1.5"], 2, "--ratio must be in (0, 1]"),
    ("pretrain_scaling.py", ["--epochs", "0"], 2, "--epochs must be a positive integer"),
    ("pretrain_scaling.py", ["--quick", "--cache", "{tmp}/a-file/cache"], 1, "a-file"),
])
def test_generated_data_benchmarks_give_one_error_line(script, args, code, expected, tmp_path):
    """The benchmarks that make their own data (and run measured child processes) end bad options in one line too."""
    import subprocess
    import sys

    (tmp_path / "a-file").write_text("not a folder")
    entry = str(Path(__file__).resolve().parents[1] / "benchmarks" / script)
    argv = [arg.format(tmp=tmp_path) for arg in args] + [f"--out={tmp_path / 'out.json'}"]
    result = subprocess.run([sys.executable, entry, *argv], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == code and "Traceback" not in result.stderr, result.stderr
    assert expected in result.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "out.json").exists()


# ---------------------------------------------------------------------------------------------- add_items
@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    from tests.inference_helpers import _untrained_checkpoint

    root = tmp_path_factory.mktemp("add-items")
    write_dataset(root, dim=DIM)
    return MISSRecPredictor.load(_untrained_checkpoint(root, "Tiny", "inductive"), data_path=root)


@pytest.mark.parametrize("features", [[["a"] * DIM], [[1.0] * (DIM - 1) + ["x"]], [object()], "text"])
def test_add_items_non_numeric_features(predictor, features):
    with pytest.raises(FeatureError, match="text_features must be numbers"):
        predictor.add_items(["NEW"], text_features=features)


@pytest.mark.parametrize("item", ["", "  ", "a\tb", "a\nb", "a\r"])
def test_add_items_rejects_unusable_ids(predictor, item):
    with pytest.raises(ItemIdError, match="empty or contains a tab or line break"):
        predictor.add_items([item], text_features=np.ones((1, DIM), np.float32))
    assert item not in predictor.item_ids

