"""One schema for every option, however it is given (``--key=value``, a YAML file, a Python ``config_dict``).

:data:`OPTIONS` gives each option MISSRec or the training loop reads its type, range or choices and a
one-line description (:data:`MODEL_OPTIONS`: a model's stricter limits); :func:`check_options` checks the layers
of a configuration before RecBole's ``Config`` is built (hence before any data is read or any file is written) and
raises one :class:`ConfigError` naming the option and what to do; :func:`check_config` checks a ``Config`` built
by RecBole's own route the same way. The models read the values as given. Keys are valid if they are in
:data:`OPTIONS` or are one of RecBole's own (its default YAML files in ``recbole/properties/``); anything else
is rejected with a "did you mean" suggestion.

``python -m missrec_recbole.config_schema`` prints the table.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import yaml

from missrec_recbole.errors import InputError


class ConfigError(InputError):
    """A bad option or config file: the message names the option (and file) and what to do."""


@dataclass(frozen=True)
class Option:
    """Allowed values of one option: ``kind`` (int, float, bool, str, list, dict), an inclusive range
    [``low``, ``high``] (``low_open``/``high_open`` make an end exclusive), ``choices`` (of the value,
    or of each item of a list), ``null`` (None allowed) and a one-line ``help``."""

    kind: type
    help: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple = ()
    null: bool = False
    also: tuple = ()  # further accepted types (e.g. gpu_id: str or int)

    def expected(self) -> str:
        """The allowed values in words, e.g. ``an integer >= 1``."""
        if self.choices and self.kind is not list:
            text = "one of " + ", ".join(map(str, self.choices))
        else:
            text = {int: "an integer", float: "a number", bool: "true or false", str: "a string",
                    list: "a non-empty list", dict: "a mapping"}[self.kind]
            if self.kind is list and self.choices:
                text = "a non-empty subset of [" + ", ".join(map(str, self.choices)) + "]"
            text += self._range()
        text += "".join(f" or {_KIND_NAMES[t]}" for t in self.also)
        return text + (" or null" if self.null else "")

    def _range(self) -> str:
        if self.low is not None and self.high is not None:
            return f" in {'(' if self.low_open else '['}{_num(self.low)}, {_num(self.high)}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f" {'>' if self.low_open else '>='} {_num(self.low)}"
        if self.high is not None:
            return f" {'<' if self.high_open else '<='} {_num(self.high)}"
        return ""

    def accepts(self, value) -> bool:
        if value is None:
            return self.null
        if list in self.also and isinstance(value, list):  # e.g. topk: 10 or [10, 50]
            return bool(value) and all(self._accepts_one(v) for v in value)
        return any(_is(value, kind) for kind in self.also) or self._accepts_one(value)

    def _accepts_one(self, value) -> bool:
        if not _is(value, self.kind):
            return False
        if self.kind is list:
            return bool(value) and (not self.choices or all(v in self.choices for v in value))
        if self.choices:
            return value in self.choices
        return self._in_range(value)

    def _in_range(self, value) -> bool:
        if self.kind not in (int, float):
            return True
        if value != value:  # NaN
            return False
        low_ok = self.low is None or (value > self.low if self.low_open else value >= self.low)
        high_ok = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return low_ok and high_ok


_KIND_NAMES = {int: "an integer", float: "a number", str: "a string", list: "a list of them", dict: "a mapping"}


def _num(x) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _is(value, kind) -> bool:
    """Type test where bool is not an int and an int is a float."""
    if kind in (int, float) and isinstance(value, bool):
        return False
    if kind is float:
        return isinstance(value, (int, float))
    return isinstance(value, kind)


def _int(help, low=None, high=None, **kw):
    return Option(int, help, low=low, high=high, **kw)


def _float(help, low=None, high=None, **kw):
    return Option(float, help, low=low, high=high, **kw)


def _prob(help):
    return Option(float, help, low=0, high=1, high_open=True)


def _bool(help, **kw):
    return Option(bool, help, **kw)


def _str(help, **kw):
    return Option(str, help, **kw)


def _choice(help, *choices, **kw):
    return Option(str, help, choices=choices, **kw)


LOG_LEVELS = ("INFO", "DEBUG", "WARNING", "ERROR", "CRITICAL", "info", "debug", "warning", "error", "critical")

OPTIONS: dict[str, Option] = {
    # data
    "data_path": _str("folder that contains <dataset>/"),
    "benchmark_filename": Option(list, "suffixes of the pre-split .inter files", choices=("train", "valid", "test")),
    "MAX_ITEM_LIST_LENGTH": _int("longest history the model reads (older items are cut)", 1),
    "modalities": Option(list, "modalities used; null: those whose feature file exists", choices=("text", "image"),
                         null=True),
    "text_suffix": _str("suffix of the text feature file NAME.<text_suffix>"),
    "image_suffix": _str("suffix of the image feature file NAME.<image_suffix>"),
    "text_dim": _int("width of the text features; null: derived from the feature file", 1, null=True),
    "image_dim": _int("width of the image features; null: derived from the feature file", 1, null=True),
    "USER_ID_FIELD": _str("user id column of the .inter files"),
    "ITEM_ID_FIELD": _str("target item column of the .inter files"),
    "LIST_SUFFIX": _str("suffix of the history column (item_id + LIST_SUFFIX)"),
    "load_col": Option(dict, "columns RecBole loads per atomic file", null=True),
    "alias_of_item_id": Option(list, "columns sharing the item id vocabulary", null=True),
    "field_separator": _str("column separator of the atomic files"),
    "seq_separator": _str("separator inside a sequence column"),
    "encoding": _str("text encoding of the atomic files"),
    # model
    "mode": _choice("inductive: item features only; transductive: features + item ID embedding",
                    "inductive", "transductive"),
    "item_adapter": _choice("MISSRec's adapter per modality: linear (paper) or moe (UniSRec's whitening experts)",
                            "linear", "moe"),
    "item_fusion": _choice("add: sum of modality embeddings; stack: one token per modality", "add", "stack"),
    "n_layers": _int("Transformer layers", 1),
    "n_heads": _int("attention heads (must divide hidden_size)", 1),
    "hidden_size": _int("width of the model", 1),
    "inner_size": _int("width of the feed-forward layers", 1),
    "hidden_dropout_prob": _prob("dropout in the Transformer"),
    "attn_dropout_prob": _prob("attention dropout (UniSRec)"),
    "adaptor_dropout_prob": _prob("dropout on the frozen features before the adapters"),
    "hidden_act": _choice("activation of the feed-forward layers", "gelu", "relu"),
    "layer_norm_eps": _float("LayerNorm epsilon", 0, low_open=True),
    "initializer_range": _float("std of the weight initialisation", 0),
    "temperature": _float("softmax temperature of the contrastive losses", 0, low_open=True),
    "fusion_beta": _float("initial value of the learnable fusion factor beta"),
    "lambda": _float("weight of the sequence-sequence loss L_ss (pre-training)", 0),
    "gamma": _float("weight of the interest regulariser L_reg (pre-training)", 0),
    "item_drop_ratio": _prob("share of items dropped in the L_ss views"),
    "item_drop_coefficient": _float("share of L_ss views made by item drop (UniSRec)", 0, 1),
    "loss_candidates": _choice("sequence-item loss negatives: all items or in-batch targets", "all", "batch"),
    "n_exps": _int("experts of the MoE adapter (UniSRec; MISSRec with item_adapter: moe)", 1),
    "gating_noise": _bool("noisy gating of the MoE adapter (UniSRec; MISSRec with item_adapter: moe)"),
    "memory_chunk_rows": _int("recompute activations this many sequences at a time (0: off)", 0),
    "shared_item_tokens": _bool("MISSRec: run the adapters once per training step and share their outputs (one "
                                "dropout draw per item and step; approximate, faster)"),
    "length_buckets": _int("length groups per batch (speed only)", 1),
    # interests
    "interest_ratio": _float("interests per item token (K = ceil(ratio * tokens))", 0, 1, low_open=True),
    "dpc_k": _int("neighbours of the DPC-KNN density", 1),
    "faiss_threads": _int("DPC-KNN threads; null: torch.get_num_threads()", 1, null=True),
    "dpc_mode": _choice("DPC-KNN: exact, approximate, or auto by token count", "auto", "exact", "approx"),
    "dpc_exact_max_tokens": _int("largest token count dpc_mode auto runs exactly", 0),
    "dpc_warm_start": _bool("approximate DPC-KNN: warm-start from the previous refresh"),
    # training
    "stage": _choice("pretrain or finetune", "pretrain", "finetune"),
    "adapters_only": _bool("train only adapters/beta/LayerNorm/ID embedding; null: when fine-tuning from -p",
                           null=True),
    "unfreeze": Option(list, "with adapters_only: also train these modules (MISSRec: position_embedding, "
                             "interest_encoder, item_decoder; UniSRec: position_embedding, trm_encoder, LayerNorm)", null=True),
    "epochs": _int("training epochs", 1),
    "train_batch_size": _int("sequences per training batch", 1),
    "eval_batch_size": _int("users per evaluation batch", 1),
    "learner": _choice("optimizer", "adam", "adamw", "sgd", "adagrad", "rmsprop", "sparse_adam"),
    "learning_rate": _float("learning rate", 0, low_open=True),
    "weight_decay": _float("L2 penalty of the optimizer", 0),
    "stopping_step": _int("stop after this many evaluations without improvement", 1),
    "eval_step": _int("epochs between evaluations (0: none)", 0),
    "save_step": _int("pre-training: checkpoint every save_step epochs", 1),
    "clip_grad_norm": Option(dict, "arguments of clip_grad_norm_", null=True),
    "train_neg_sample_args": Option(dict, "negative sampling (null: none, as MISSRec needs)", null=True),
    "seed": _int("random seed"),
    "reproducibility": _bool("deterministic CUDA kernels"),
    "shuffle": _bool("shuffle the training data every epoch"),
    "worker": _int("data loader worker processes", 0),
    "use_gpu": _bool("use a GPU if there is one (device: auto)"),
    "device": _str("where to run: auto (CUDA when present and use_gpu; under torchrun cuda:LOCAL_RANK), cpu, cuda "
                   "or cuda:N", null=True),
    "mixed_precision": _choice("training steps under torch.autocast: bf16 (CPU or GPU) or fp16 (GPU, with loss "
                               "scaling); null: float32. Evaluation and interest refresh stay float32",
                               "bf16", "fp16", null=True),
    "gpu_id": _str("GPU id(s)", also=(int,)),
    "checkpoint_dir": _str("folder for checkpoints and resume files", null=True),
    "enable_amp": _bool("mixed precision"),
    "enable_scaler": _bool("GradScaler with mixed precision"),
    "require_pow": _bool("power operation in EmbLoss (RecBole)"),
    "transform": _str("batch transform (RecBole)", null=True),
    "loss_decimal_place": _int("decimals of the logged loss", 0),
    # evaluation
    "eval_args": Option(dict, "RecBole's split/order/mode/group_by (the split comes from benchmark_filename)"),
    "metrics": Option(list, "evaluation metrics", also=(str,)),
    "topk": _int("cut-off(s) of the top-k metrics", 1, also=(list,)),
    "valid_metric": _str("metric for early stopping and model selection, e.g. NDCG@10"),
    "valid_metric_bigger": _bool("a bigger valid_metric is better"),
    "metric_decimal_place": _int("decimals of the logged metrics", 0),
    "repeatable": _bool("repeatable recommendation scene (RecBole)"),
    "tie_rule": _choice("pessimistic: a target ranks after every item scoring >= it; none: torch.topk",
                        "pessimistic", "none"),
    # output
    "state": _choice("log level", *LOG_LEVELS),
    "show_progress": _bool("progress bars per epoch"),
    "log_wandb": _bool("log to Weights & Biases"),
    "wandb_project": _str("Weights & Biases project"),
    "save_dataset": _bool("save the filtered dataset (RecBole)"),
    "dataset_save_path": _str("where to save the dataset (RecBole)", null=True),
    "save_dataloaders": _bool("save the data loaders (RecBole)"),
    "dataloaders_save_path": _str("where to save the data loaders (RecBole)", null=True),
}

# Per-model limits, replacing the entry of OPTIONS for that model.
MODEL_OPTIONS: dict[str, dict[str, Option]] = {
    "MISSRec": {"n_layers": _int("Transformer layers: the interest encoder has n_layers // 2, the item decoder the "
                                 "rest, and each needs one", 2)},
}

# Keys RecBole or this package set at run time (not in RecBole's YAML files).
RUNTIME_KEYS = ("model", "dataset", "config_files", "single_spec", "local_rank", "world_size", "nproc",
                "offset", "ip", "port", "backend", "verbose", "MODEL_TYPE", "MODEL_INPUT_TYPE", "eval_type")


@lru_cache(maxsize=1)
def recbole_keys() -> frozenset:
    """Every key of RecBole's own default YAML files (recbole/properties/**.yaml)."""
    import recbole

    keys = set()
    for path in (Path(recbole.__file__).parent / "properties").rglob("*.yaml"):
        with open(path, encoding="utf-8") as handle:
            keys.update(yaml.load(handle, Loader=YamlLoader) or {})
    return frozenset(keys)


def known_keys() -> frozenset:
    return frozenset(OPTIONS) | recbole_keys() | frozenset(RUNTIME_KEYS)


class YamlLoader(yaml.SafeLoader):
    """YAML as RecBole reads it: ``1e-3`` is a float (plain YAML 1.1 would read a string)."""


YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                  |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                  |\.[0-9_]+(?:[eE][-+][0-9]+)?
                  |[-+]?\.(?:inf|Inf|INF)
                  |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def read_value(text: str):
    """A ``--key=value`` value, read as YAML like the config files (``abc`` stays a string)."""
    try:
        return yaml.load(text, Loader=YamlLoader)
    except yaml.YAMLError:
        return text  # e.g. "a: b: c" - the schema then says what is expected


def read_config_file(path) -> dict:
    """One YAML config file as a dict; unreadable or non-mapping files raise :class:`ConfigError`."""
    try:
        with open(path, encoding="utf-8") as handle:
            content = yaml.load(handle, Loader=YamlLoader)
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: cannot read the config file ({error}).") from None
    except yaml.YAMLError as error:
        where = getattr(error, "problem_mark", None)
        line = f" (line {where.line + 1})" if where else ""
        raise ConfigError(f"{path}: not valid YAML{line}. Write one `key: value` per line.") from None
    if content is None:
        return {}
    if not isinstance(content, dict):
        raise ConfigError(f"{path}: a config file must be a mapping of `key: value` lines, not "
                          f"{type(content).__name__}.")
    return content


def _where(source: str) -> str:
    return f" (in {source})" if source else ""


def unknown_key_message(key, source: str = "") -> str:
    close = difflib.get_close_matches(str(key), sorted(known_keys()), n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}?" if close else "see `python -m missrec_recbole.config_schema` for the options."
    return f"unknown option {key!r}{_where(source)}: {hint}"


def option_of(key: str, model: str | None = None) -> Option | None:
    """The schema of option ``key`` for ``model`` (a class name: its :data:`MODEL_OPTIONS` entry if it has one);
    None for keys the schema leaves to RecBole."""
    return MODEL_OPTIONS.get(model, {}).get(key) or OPTIONS.get(key)


def check_value(key: str, value, source: str = "", model: str | None = None) -> None:
    """Raise :class:`ConfigError` if ``value`` is not allowed for option ``key`` (unchecked if not in the schema)."""
    option = option_of(key, model)
    if option is not None and not option.accepts(value):
        limit = f"{model}: " if key in MODEL_OPTIONS.get(model, {}) else ""
        raise ConfigError(f"option {key!r}{_where(source)}: got {value!r}, must be {option.expected()} "
                          f"({limit}{option.help}).")


def check_options(layers, model: str | None = None) -> dict:
    """Check ``layers`` = [(source, dict)], later layers overriding earlier ones, for ``model`` (a class name, for
    its :data:`MODEL_OPTIONS`); returns the merged values.

    Raises :class:`ConfigError` for an unknown key, a value outside its schema, or options that
    contradict each other."""
    known = known_keys()
    merged, sources = {}, {}
    for source, values in layers:
        for key, value in (values or {}).items():
            if key not in known:
                raise ConfigError(unknown_key_message(key, source))
            merged[key], sources[key] = value, source
    for key, value in merged.items():
        check_value(key, value, sources[key], model)
    _check_together(merged)
    return merged


# options RecBole's Config turns into another form after reading them (``device``: a torch.device)
REWRITTEN_BY_RECBOLE = ("device",)


def check_config(config) -> None:
    """Check the schema's options in a built RecBole ``Config`` (or a dict), for the model it names: the route
    that builds ``Config(...)`` directly instead of through ``missrec_recbole.config.build_config`` gets the same
    checks and messages. Keys outside the schema (RecBole's own) are not checked here."""
    values = getattr(config, "final_config_dict", config)
    model = values.get("model")
    model = getattr(model, "__name__", model)
    for key, value in values.items():
        if key not in REWRITTEN_BY_RECBOLE:
            check_value(key, value, model=model)
    _check_together({key: value for key, value in values.items() if key not in REWRITTEN_BY_RECBOLE})


DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")


def _check_together(values: dict) -> None:
    hidden, heads = values.get("hidden_size"), values.get("n_heads")
    if hidden is not None and heads is not None and hidden % heads:
        raise ConfigError(f"options 'hidden_size'={hidden} and 'n_heads'={heads}: hidden_size must be a multiple "
                          f"of n_heads.")
    device = values.get("device")
    if device is not None and not DEVICE_PATTERN.fullmatch(str(device)):
        raise ConfigError(f"option 'device': got {device!r}, must be auto, cpu, cuda or cuda:N (e.g. cuda:0).")
    if values.get("shared_item_tokens") and values.get("memory_chunk_rows"):
        raise ConfigError("options 'shared_item_tokens' and 'memory_chunk_rows': the recomputed chunks would not see "
                          "the step's shared item tokens; use one of the two.")
    if values.get("mixed_precision") == "fp16" and values.get("clip_grad_norm"):
        raise ConfigError("options 'mixed_precision'=fp16 and 'clip_grad_norm': RecBole's training step clips the "
                          "scaled gradients; use mixed_precision: bf16, or leave clip_grad_norm out.")


def describe() -> str:
    """The schema as a table: option, allowed values, description (per-model limits after the option)."""
    rows = list(OPTIONS.items())
    rows += [(f"{key} ({model})", option) for model, limits in MODEL_OPTIONS.items() for key, option in limits.items()]
    width = max(len(key) for key, _ in rows)
    return "\n".join(f"{key:<{width}}  {option.expected()}: {option.help}" for key, option in sorted(rows))


if __name__ == "__main__":
    print(describe())
