"""Every workaround RecBole 1.2.1 needs on numpy 2, pandas 3 and torch >= 2.6, in one place.

:func:`apply` is called once when ``missrec_recbole`` is imported. Each fix is a small function
so that tests can show the failure without it (see ``tests/test_compat.py``). Nothing in
site-packages is edited; each fix below names the RecBole 1.2.1 file:line it works around.

Fixes:
1. numpy 2 removed ``np.float_``/``np.complex_``/``np.unicode_``/``np.bool8``, which
   ``Config.compatibility_settings`` (configurator.py:625) and ray read -> restore the aliases.
   (ray 2.6.3 also needs ``pkg_resources``: the package pins ``setuptools<81``.)
2. pandas 3 copy-on-write makes ``Dataset._fill_nan``'s chained ``fillna(inplace=True)``
   (dataset.py:648) a silent no-op -> assign the filled column instead.
3. pandas 3 rejects ``feat[field] = np.split(...)`` for ``token_seq`` fields in ``Dataset._remap``
   (dataset.py:1218), which breaks every pre-split ``item_id_list`` file -> assign an object Series.
3b. the same pandas 3 change makes ``Series.agg(len)`` return the Series' length instead of each
   row's: ``SequentialDataset._benchmark_presets`` (sequential_dataset.py:160) then gives every
   pre-split row ``item_length`` = number of rows -> compute the length per row.
4. torch >= 2.6 loads with ``weights_only=True``; RecBole pickles its ``Config`` into every
   checkpoint (trainer.py:299-308), so its own best-model reload (trainer.py:583) fails -> RecBole's stock
   ``Trainer._save_checkpoint`` becomes :class:`MISSRecTrainer`'s (named by :data:`CHECKPOINT_SAVER`): the config as
   plain types, written atomically, so ``weights_only=True`` stays on. Our trainers override the method themselves;
   this global fix is for RecBole's own trainers (``evaluation.TieRuleTrainer``, a user's SASRec) in the process.
5. ``sine.py:25`` turns on ``torch.autograd.set_detect_anomaly(True)`` globally on import
   (about a third of CPU time per batch) -> switch it off again.
6. ``ensure_dir`` (utils.py:51-52) checks ``os.path.exists`` and then calls ``os.makedirs``: when
   torchrun's processes start in a fresh folder, two of them create ``./log`` (logger.py:77) at once
   and one dies with FileExistsError -> ``os.makedirs(exist_ok=True)`` in every module that imported it.
7. the last chained ``df[field].fillna(value="", inplace=True)`` (dataset.py:501, ``Dataset._load_feat``)
   is a no-op under pandas 3 too: an empty ``token_seq`` cell stays NaN and crashes with ``'float' object
   has no attribute 'split'`` -> :func:`load_feat` fills the column by assignment.
9. ``recbole.quick_start.load_data_and_model`` (quick_start/quick_start.py:235-270) reads ``checkpoint["config"]``
   as a ``Config`` (``init_logger`` at utils/logger.py:80 fails on our plain dict with ``'dict' object has no
   attribute 'final_config_dict'``) and builds RecBole's dataset and a model looked up by name -> when that module is
   imported, its function is replaced by :data:`CHECKPOINT_LOADER`, which reads the file once (``weights_only=True``).
   RecBole's original reads no checkpoint on torch >= 2.6 (a pickled ``Config`` is refused, a plain one breaks
   ``init_logger``), so nothing is lost: any other file gets the loader's one-line error.
10. ``Config._init_device`` (configurator.py:476-493) ignores ``use_gpu`` (CUDA whenever present), always sets
   ``CUDA_VISIBLE_DEVICES`` to ``gpu_id`` (default "0": under torchrun every rank then sees one GPU and
   ``LOCAL_RANK`` 1 has none; a user's own setting is overwritten) and has no way to ask for a device ->
   :func:`init_device` chooses it with :func:`choose_device` from the ``device`` option.
8. ``Config._convert_config_dict`` (configurator.py:124) runs ``eval()`` on every string value of a
   ``config_dict``: a string is executed as Python code -> :func:`config_value` reads it as a Python
   literal instead (``ast.literal_eval``: same values for literals, no code runs); ``build_config``
   checks the options on these converted values.
11. ``evaluator/metrics.py:29-30`` imports scikit-learn (and with it scipy.stats) for three functions that only the
   AUC, MAE and RMSE metrics call: ~63 MiB of resident memory and ~1.3 s in every process that imports RecBole ->
   :func:`import_metrics_without_sklearn` imports that module against a stand-in whose functions import
   scikit-learn on their first call (the same functions, the same results; the stand-in is gone afterwards).
"""

from __future__ import annotations

import ast
import enum
import importlib
import importlib.abc
import importlib.util
import os
import sys
import types
import warnings

import numpy as np
import pandas as pd
import torch

_NUMPY_ALIASES = {"float_": np.float64, "complex_": np.complex128, "unicode_": np.str_, "bool8": np.bool_}
_applied = False
ORIGINALS: dict = {}  # RecBole's own functions, kept so tests can show what each fix changes


def restore_numpy_aliases() -> None:
    """Fix 1: give back the numpy 1.x aliases RecBole and ray still use."""
    for name, value in _NUMPY_ALIASES.items():
        if name not in np.__dict__:
            setattr(np, name, value)


def fill_nan(self) -> None:
    """Fix 2: ``Dataset._fill_nan`` without chained in-place assignment (pandas 3 safe)."""
    from recbole.utils import FeatureType

    for feat_name in self.feat_name_list:
        feat = getattr(self, feat_name)
        for field in feat:
            ftype = self.field2type[field]
            if ftype == FeatureType.TOKEN:
                feat[field] = feat[field].fillna(value=0)
            elif ftype == FeatureType.FLOAT:
                feat[field] = feat[field].fillna(value=feat[field].mean())
            else:
                dtype = np.int64 if ftype == FeatureType.TOKEN_SEQ else np.float64
                feat[field] = feat[field].apply(
                    lambda x: np.array([], dtype=dtype) if isinstance(x, float) else x
                )


def remap(self, remap_list) -> None:
    """Fix 3: ``Dataset._remap`` that assigns sequence fields as one object Series (pandas 3 safe)."""
    from recbole.utils import FeatureType

    if len(remap_list) == 0:
        return
    tokens, split_point = self._concat_remaped_tokens(remap_list)
    new_ids_list, mp = pd.factorize(tokens)
    new_ids_list = np.split(new_ids_list + 1, split_point)
    mp = np.array(["[PAD]"] + list(mp))
    token_id = {t: i for i, t in enumerate(mp)}
    for (feat, field, ftype), new_ids in zip(remap_list, new_ids_list):
        if field not in self.field2id_token:
            self.field2id_token[field] = mp
            self.field2token_id[field] = token_id
        if ftype == FeatureType.TOKEN:
            feat[field] = new_ids
        elif ftype == FeatureType.TOKEN_SEQ:
            seq_split = np.cumsum(feat[field].map(len).to_numpy())[:-1]
            feat[field] = pd.Series(np.split(new_ids, seq_split), index=feat.index, dtype=object)


def benchmark_presets(self) -> None:
    """Fix 3b: ``SequentialDataset._benchmark_presets`` with per-row history lengths."""
    from recbole.utils import FeatureSource, FeatureType

    list_suffix = self.config["LIST_SUFFIX"]
    for field in self.inter_feat:
        if field + list_suffix in self.inter_feat:
            setattr(self, f"{field}_list_field", field + list_suffix)
    self.set_field_property(self.item_list_length_field, FeatureType.TOKEN, FeatureSource.INTERACTION, 1)
    self.inter_feat[self.item_list_length_field] = self.inter_feat[self.item_id_list_field].map(len)


def load_feat(self, filepath, source):
    """Fix 7: ``Dataset._load_feat`` (RecBole 1.2.1, unchanged but for the NaN fill of sequence fields)."""
    from recbole.utils import FeatureSource, FeatureType, set_color

    self.logger.debug(set_color(f"Loading feature from [{filepath}] (source: [{source}]).", "green"))
    load_col, unload_col = self._get_load_and_unload_col(source)
    if load_col == set():
        return None
    field_separator = self.config["field_separator"]
    columns, usecols, dtype = [], [], {}
    encoding = self.config["encoding"]
    with open(filepath, "r", encoding=encoding) as f:
        head = f.readline()[:-1]
    for field_type in head.split(field_separator):
        field, ftype = field_type.split(":")
        try:
            ftype = FeatureType(ftype)
        except ValueError:
            raise ValueError(f"Type {ftype} from field {field} is not supported.")
        if load_col is not None and field not in load_col:
            continue
        if unload_col is not None and field in unload_col:
            continue
        if isinstance(source, FeatureSource) or source != "link":
            self.field2source[field] = source
            self.field2type[field] = ftype
            if not ftype.value.endswith("seq"):
                self.field2seqlen[field] = 1
            if "float" in ftype.value:
                self.field2bucketnum[field] = 2
        columns.append(field)
        usecols.append(field_type)
        dtype[field_type] = np.float64 if ftype == FeatureType.FLOAT else str
    if len(columns) == 0:
        self.logger.warning(f"No columns has been loaded from [{source}]")
        return None
    df = pd.read_csv(filepath, delimiter=field_separator, usecols=usecols, dtype=dtype, encoding=encoding,
                     engine="python")
    df.columns = columns
    seq_separator = self.config["seq_separator"]
    for field in columns:
        ftype = self.field2type[field]
        if not ftype.value.endswith("seq"):
            continue
        df[field] = df[field].fillna(value="")  # the fix: RecBole's chained inplace fillna is a no-op
        if ftype == FeatureType.TOKEN_SEQ:
            df[field] = [np.array(list(filter(None, _.split(seq_separator)))) for _ in df[field].values]
        elif ftype == FeatureType.FLOAT_SEQ:
            df[field] = [np.array(list(map(float, filter(None, _.split(seq_separator))))) for _ in df[field].values]
        max_seq_len = max(map(len, df[field].values))
        if self.config["seq_len"] and field in self.config["seq_len"]:
            seq_len = self.config["seq_len"][field]
            df[field] = [seq[:seq_len] if len(seq) > seq_len else seq for seq in df[field].values]
            self.field2seqlen[field] = min(seq_len, max_seq_len)
        else:
            self.field2seqlen[field] = max_seq_len
    return df


def config_value(param):
    """Fix 8: a ``config_dict`` value as RecBole reads it (strings holding Python literals become those
    values, "true"/"false" booleans), without ``eval``."""
    if not isinstance(param, str):
        return param
    try:
        value = ast.literal_eval(param)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return {"true": True, "false": False}.get(param.lower(), param)
    return value if value is None or isinstance(value, (str, int, float, list, tuple, dict, bool)) else param


def convert_config_dict(self, config_dict):
    """Fix 8: ``Config._convert_config_dict`` without ``eval``."""
    for key in config_dict:
        config_dict[key] = config_value(config_dict[key])
    return config_dict


def _launched_rank() -> str | None:
    """``LOCAL_RANK`` when started by torchrun with more than one process, else None."""
    return os.environ.get("LOCAL_RANK") if int(os.environ.get("WORLD_SIZE", "1")) > 1 else None


def choose_device(requested=None, use_gpu: bool = True, gpu_id: str = "0") -> torch.device:
    """Fix 10: the device of a run. ``requested`` (the ``device`` option): None/``auto`` = CUDA when PyTorch sees
    a GPU and ``use_gpu``, else the CPU; ``cpu``; ``cuda`` or ``cuda:N``. Under torchrun, CUDA means
    ``cuda:LOCAL_RANK`` (one GPU per local process). ``gpu_id`` keeps RecBole's meaning (``CUDA_VISIBLE_DEVICES``)
    for one process, unless that variable is already set."""
    from missrec_recbole.config_schema import ConfigError  # same layer; imported late to keep compat light

    requested = "auto" if requested is None else str(requested)
    local_rank = _launched_rank()
    if requested == "cpu" or (requested == "auto" and (not use_gpu or gpu_id == "")):
        return torch.device("cpu")
    if local_rank is None and gpu_id and "CUDA_VISIBLE_DEVICES" not in os.environ:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu_id  # before CUDA starts (torch.cuda.is_available below)
    if not torch.cuda.is_available():
        if requested == "auto":
            return torch.device("cpu")
        raise ConfigError(f"device: {requested!r} but PyTorch sees no CUDA GPU (torch {torch.__version__}, CUDA build "
                          f"{torch.version.cuda}); use device: auto or cpu, or install a CUDA build of PyTorch.")
    device = torch.device("cuda" if requested == "auto" else requested)
    if device.index is None and local_rank is not None:
        device = torch.device("cuda", int(local_rank))
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"device: {str(device)!r} but only {torch.cuda.device_count()} GPU(s) are visible "
                          f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}); pick another.")
    return device


def init_device(self) -> None:
    """Fix 10: ``Config._init_device`` choosing the device with :func:`choose_device`."""
    final = self.final_config_dict
    gpu_id = final.get("gpu_id")
    final["gpu_id"] = ",".join(map(str, gpu_id)) if isinstance(gpu_id, (tuple, list)) else str(gpu_id or "")
    if "local_rank" in final:  # RecBole's own multi-GPU route (nproc/ip/port), unused here: left as it was
        return ORIGINALS["init_device"](self)
    final["single_spec"] = True
    final["local_rank"] = 0
    final["device"] = choose_device(final.get("device"), final.get("use_gpu", True), final["gpu_id"])


def plain(value):
    """Turn a config value into types ``torch.load(weights_only=True)`` accepts."""
    if isinstance(value, np.generic):  # before the float check: np.float64 subclasses float
        return value.item()
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, enum.Enum):
        return value.name
    return str(value)


# What fixes 4 and 9 hand RecBole's calls to, named rather than imported: compat is the bottom layer and must not
# import the trainer or the pipeline.
CHECKPOINT_SAVER = "missrec_recbole.trainer.trainer:MISSRecTrainer._save_checkpoint"
CHECKPOINT_LOADER = "missrec_recbole.quick_start:load_data_and_model"


def _named(target: str):
    module, names = target.split(":")
    value = importlib.import_module(module)
    for name in names.split("."):
        value = getattr(value, name)
    return value


def save_checkpoint(self, epoch, verbose=True, **kwargs) -> None:
    """Fix 4: RecBole's ``Trainer._save_checkpoint`` written as :class:`MISSRecTrainer` writes it."""
    return _named(CHECKPOINT_SAVER)(self, epoch, verbose, **kwargs)


def disable_anomaly_detection() -> None:
    """Fix 5: import RecBole's sequential models (which switch anomaly mode on), then switch it off."""
    import recbole.model.sequential_recommender  # noqa: F401

    torch.autograd.set_detect_anomaly(False)


_ENSURE_DIR_USERS = ("recbole.utils.utils", "recbole.utils", "recbole.utils.logger", "recbole.trainer.trainer",
                     "recbole.data.dataset.dataset", "recbole.data.utils")


def ensure_dir(dir_path) -> None:
    """Fix 6: create ``dir_path`` (and parents) unless it exists, safe when processes race to create it."""
    os.makedirs(dir_path, exist_ok=True)


def patch_ensure_dir() -> None:
    """Fix 6: RecBole's modules imported ``ensure_dir`` by name, so each module's reference is replaced."""
    for name in _ENSURE_DIR_USERS:
        setattr(importlib.import_module(name), "ensure_dir", ensure_dir)


SKLEARN_METRICS = "sklearn.metrics"
RECBOLE_METRICS = "recbole.evaluator.metrics"
_SKLEARN_FUNCTIONS = ("auc", "mean_absolute_error", "mean_squared_error")


def _sklearn_on_first_call(name: str):
    def function(*args, **kwargs):
        return getattr(importlib.import_module(SKLEARN_METRICS), name)(*args, **kwargs)

    function.__name__ = function.__qualname__ = name
    return function


def import_metrics_without_sklearn() -> None:
    """Fix 11: import RecBole's metrics module with ``sklearn.metrics`` stood in for by functions that import it on
    first call. Python takes a module found in ``sys.modules`` without importing its parent package, so scikit-learn
    is not imported; the stand-in is removed right after, so a later ``import sklearn.metrics`` gets the real one."""
    if RECBOLE_METRICS in sys.modules or SKLEARN_METRICS in sys.modules:
        return
    stand_in = types.ModuleType(SKLEARN_METRICS)
    for name in _SKLEARN_FUNCTIONS:
        setattr(stand_in, name, _sklearn_on_first_call(name))
    sys.modules[SKLEARN_METRICS] = stand_in
    try:
        importlib.import_module(RECBOLE_METRICS)
    finally:
        if sys.modules.get(SKLEARN_METRICS) is stand_in:
            del sys.modules[SKLEARN_METRICS]


RECBOLE_QUICK_START = "recbole.quick_start.quick_start"


def load_data_and_model(model_file):
    """Fix 9: RecBole's ``load_data_and_model``, done by this package's (one read, ``weights_only=True``)."""
    return _named(CHECKPOINT_LOADER)(model_file)


def patch_load_data_and_model(module) -> None:
    if module.load_data_and_model is not load_data_and_model:
        ORIGINALS["load_data_and_model"] = module.load_data_and_model
        module.load_data_and_model = load_data_and_model


class _PatchOnImport(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Patches RecBole's quick_start module right after it is first imported: importing it eagerly would import
    ray (seconds) in every process that only imports this package."""

    def find_spec(self, fullname, path, target=None):
        if fullname != RECBOLE_QUICK_START:
            return None
        sys.meta_path.remove(self)  # find the real module with the other finders
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            sys.meta_path.insert(0, self)
        self.loader = spec.loader
        spec.loader = self
        return spec

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        self.loader.exec_module(module)
        patch_load_data_and_model(module)


def patch_recbole_quick_start() -> None:
    if RECBOLE_QUICK_START in sys.modules:
        patch_load_data_and_model(sys.modules[RECBOLE_QUICK_START])
        package = sys.modules.get("recbole.quick_start")
        if package is not None:
            package.load_data_and_model = load_data_and_model
    elif not any(isinstance(finder, _PatchOnImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _PatchOnImport())


def apply() -> None:
    """Apply all fixes (idempotent)."""
    global _applied
    if _applied:
        return
    restore_numpy_aliases()
    import_metrics_without_sklearn()
    from recbole.config import Config
    from recbole.data.dataset import Dataset, SequentialDataset
    from recbole.trainer import Trainer
    from recbole.utils import utils as recbole_utils

    ORIGINALS.update(fill_nan=Dataset._fill_nan, remap=Dataset._remap, save_checkpoint=Trainer._save_checkpoint,
                     benchmark_presets=SequentialDataset._benchmark_presets, ensure_dir=recbole_utils.ensure_dir,
                     load_feat=Dataset._load_feat, convert_config_dict=Config._convert_config_dict,
                     init_device=Config._init_device)
    Config._convert_config_dict = convert_config_dict
    Config._init_device = init_device
    Dataset._fill_nan = fill_nan
    Dataset._load_feat = load_feat
    Dataset._remap = remap
    SequentialDataset._benchmark_presets = benchmark_presets
    Trainer._save_checkpoint = save_checkpoint
    disable_anomaly_detection()
    patch_ensure_dir()
    patch_recbole_quick_start()
    # RecBole's non-writable-array warning is harmless.
    warnings.filterwarnings("ignore", category=pd.errors.ChainedAssignmentError, module=r"recbole\.")
    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
    # trainer.py:235 builds torch.cuda.amp.GradScaler every epoch (disabled on CPU); torch >= 2.4 warns.
    warnings.filterwarnings("ignore", message=r"`torch\.cuda\.amp\.GradScaler\(args\.\.\.\)` is deprecated",
                            category=FutureWarning)
    _applied = True
