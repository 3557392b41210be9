"""Item text and image features for MISSRec (``NAME.feat1CLS`` / ``NAME.feat3CLS``) with CLIP.

::

    python -m missrec_recbole.tools.features --text dataset/Office/Office.text --images dataset/Office/images/ \\
        --model ViT-B-32 --pretrained PATH_OR_TAG -o dataset/Office [--batch_size 64] [--device cpu]

* Output rows follow ``NAME.item2index`` (default ``<out>/NAME.item2index``, NAME = the text file's
  name without ``.text``): row i = item with index i, raw little-endian float32, the encoder's
  width (512 for ViT-B-32), not normalised (like the released MISSRec/UniSRec features).
* All-zero row = modality missing: an item without text, without an image file in ``--images``
  (``<image_stem(original_id)>.<jpg|png|...>``, as written by ``missrec_recbole.tools.images``), or
  whose image Pillow cannot read (skipped with a :class:`BrokenImageWarning`, never a crash).
* Batched and resumable: rows are appended to ``NAME.<suffix>.partial`` and the number of finished
  rows is recorded in ``NAME.<suffix>.progress.json`` after every batch; a rerun of the same command
  continues there (refusing if the model or item2index changed, unless ``--force``). The final file
  appears only when complete (rename). A finished file is not recomputed unless ``--force``.
* Encoders: :class:`OpenClipEncoder` (optional extra ``pip install -e ".[features]"``; ``--pretrained``
  is an open_clip tag such as ``openai`` / ``laion2b_s34b_b79k`` (downloaded, needs network), a local
  weights file (e.g. ``open_clip_pytorch_model.bin`` / ``.safetensors``), or ``none`` for random
  weights (tests only). ``--model`` is an open_clip model name, a model-config JSON file, or
  ``local-dir:PATH``. Any other model: ``--encoder module:function`` returning an object with
  ``identity``, ``encode_text(list[str])`` and ``encode_images(list[PIL.Image])`` (see :class:`Encoder`).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol, runtime_checkable

import numpy as np

from missrec_recbole.command import command_parser, run_command, watched
from missrec_recbole.files import write_json
from missrec_recbole.data.atomic_files import DatasetFormatError, item_ids_by_index, read_item_texts
from missrec_recbole.tools.images import find_images, image_stem

__all__ = ["Encoder", "OpenClipEncoder", "WordLlamaEncoder", "ENCODERS", "make_encoder", "FeatureExtractionError",
           "BrokenImageWarning", "ExtractionResult", "extract_text_features", "extract_image_features",
           "read_item_index", "load_image"]



class FeatureExtractionError(DatasetFormatError):
    """Feature extraction cannot run: the message names the file / option and what to do."""


class BrokenImageWarning(UserWarning):
    """An image file could not be read; the item gets an all-zero image row."""


@runtime_checkable
class Encoder(Protocol):
    """What feature extraction needs from a model. Outputs are float arrays ``[len(inputs), dim]``."""

    identity: str  # stored in progress files: a run only resumes with the same identity

    def encode_text(self, texts: list[str]) -> np.ndarray: ...

    def encode_images(self, images: list) -> np.ndarray: ...


# ----------------------------------------------------------------------------- open_clip
def _import_open_clip():
    try:
        import open_clip
    except ModuleNotFoundError as error:
        missing = error.name or "open_clip"
        raise FeatureExtractionError(
            f"--model: the Python module {missing!r} is not installed. Install the optional extra: "
            "pip install -e \".[features]\" (open_clip_torch; it needs a torchvision built for your torch)") from None
    except Exception as error:  # noqa: BLE001 - e.g. torchvision built for another torch
        raise FeatureExtractionError(
            f"--model: open_clip is installed but cannot be imported ({type(error).__name__}: {error}). "
            "This usually means torchvision does not match the installed torch (a CPU-only torch needs a "
            "torchvision of the same build). Install a matching torch/torchvision pair, then rerun.") from None
    return open_clip


def _file_identity(path: str) -> str:
    stat = os.stat(path)
    return f"{os.path.abspath(path)}:{stat.st_size}:{int(stat.st_mtime)}"


class OpenClipEncoder:
    """CLIP text/image encoder from open_clip (imported lazily, only when this class is used)."""

    def __init__(self, model: str = "ViT-B-32", pretrained: str | None = None, device: str = "cpu",
                 precision: str = "fp32"):
        open_clip = _import_open_clip()
        import torch

        self._torch = torch
        name = model
        if model.endswith(".json"):
            if not os.path.isfile(model):
                raise FeatureExtractionError(f"{model}: model config file not found. Pass an open_clip model name "
                                             "(e.g. ViT-B-32) or an existing config JSON.")
            open_clip.add_model_config(model)
            name = Path(model).stem
        elif not model.startswith(("local-dir:", "hf-hub:")) and name.replace("/", "-") not in open_clip.list_models():
            raise FeatureExtractionError(
                f"--model {model!r}: unknown open_clip model. Use one of open_clip.list_models() "
                "(e.g. ViT-B-32), a model config .json or local-dir:PATH.")
        if pretrained is None or str(pretrained).lower() in ("", "none", "random"):
            pretrained = None
            warnings.warn(f"{model}: no --pretrained weights, using a randomly initialised model "
                          "(features are only useful for testing)", stacklevel=2)
            weights = "random"
        elif os.path.isfile(pretrained):
            weights = _file_identity(pretrained)
        else:
            known = open_clip.list_pretrained_tags_by_model(name) if not name.startswith(("local-dir:", "hf-hub:")) \
                else []
            if pretrained not in known:
                raise FeatureExtractionError(
                    f"--pretrained {pretrained!r}: neither a file nor a known weights tag of {model} "
                    f"(tags: {', '.join(known) or 'none'}). Pass a local weights file.")
            weights = pretrained
        try:
            self.model, _, self.preprocess = open_clip.create_model_and_transforms(
                name, pretrained=pretrained, device=device, precision=precision)
        except Exception as error:  # noqa: BLE001
            raise FeatureExtractionError(
                f"--pretrained {pretrained}: could not load the {model} weights ({type(error).__name__}: {error}). "
                "Without network, download the open_clip weights file (e.g. open_clip_pytorch_model.bin) on "
                "another machine and pass its path; a local file must match the --model architecture.") from None
        self.model.eval()
        self.tokenizer = open_clip.get_tokenizer(name)
        self.device = device
        self.identity = f"open_clip:{model}:{weights}:{precision}"

    def _run(self, fn, batch) -> np.ndarray:
        with self._torch.no_grad():
            return fn(batch.to(self.device)).float().cpu().numpy()

    def encode_text(self, texts: list[str]) -> np.ndarray:
        return self._run(self.model.encode_text, self.tokenizer(list(texts)))

    def encode_images(self, images: list) -> np.ndarray:
        return self._run(self.model.encode_image, self._torch.stack([self.preprocess(im) for im in images]))


class WordLlamaEncoder:
    """WordLlama text encoder (static token embeddings, mean-pooled; 256-d): weights and tokenizer ship inside the
    ``wordllama`` wheel (optional extra ``.[text]``), so it runs offline, on the CPU, in about a second per 5,000
    items. Text only. Not normalised, like the CLIP features."""

    def __init__(self, dim: int = 256):
        try:
            import wordllama
        except ModuleNotFoundError:
            raise FeatureExtractionError(
                "--encoder wordllama: the Python module 'wordllama' is not installed. Install the "
                "optional extra: pip install -e \".[text]\"") from None
        # WordLlama.load() looks for the tokenizer in <package>/tokenizer/ (the wheel has tokenizers/) and then
        # downloads it; as cache_dir the package folder holds both files. Downloads stay disabled.
        folder = Path(wordllama.__file__).parent
        try:
            self.model = wordllama.WordLlama.load(cache_dir=folder, dim=dim, disable_download=True)
        except (FileNotFoundError, ValueError) as error:
            raise FeatureExtractionError(
                f"--encoder wordllama: cannot load the packaged weights ({error}). Reinstall the "
                "wordllama package.") from None
        self.identity = f"wordllama:{getattr(wordllama, '__version__', '?')}:l2_supercat:{dim}"

    def encode_text(self, texts: list[str]) -> np.ndarray:
        return np.asarray(self.model.embed(list(texts), norm=False), dtype=np.float32)

    def encode_images(self, images: list) -> np.ndarray:
        raise FeatureExtractionError(
            "--encoder wordllama encodes text only: leave out --images (or use open_clip for images).")


ENCODERS = {"wordllama": WordLlamaEncoder}  # named --encoder choices besides module:function; default open_clip


def make_encoder(spec: str | None = None, model: str = "ViT-B-32", pretrained: str | None = None,
                 device: str = "cpu", precision: str = "fp32") -> Encoder:
    """``spec``: a name of :data:`ENCODERS`, ``module:function`` returning an :class:`Encoder`, or None (open_clip)."""
    if spec is None or spec == "open_clip":
        return OpenClipEncoder(model, pretrained, device, precision)
    if spec in ENCODERS:
        return ENCODERS[spec]()
    return _load_encoder_factory(spec)()


# ----------------------------------------------------------------------------- inputs
def read_item_index(path: str | Path) -> list[str]:
    """Original ids in index order from ``NAME.item2index`` (checked by the data layer: indices 0..n-1)."""
    path = Path(path)
    if not path.is_file():
        raise FeatureExtractionError(f"{path}: item index not found. Pass --item2index, or create NAME.item2index "
                                     "(python -m missrec_recbole.tools.amazon writes it).")
    return item_ids_by_index(path)


def load_image(path: Path, item: str = ""):
    """RGB PIL image, or None (with a :class:`BrokenImageWarning`) if Pillow cannot read the file."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()
            return image.convert("RGB")
    except Exception as error:  # noqa: BLE001 - truncated / corrupt / unsupported: all mean "no image"
        warnings.warn(f"{path}: cannot read image ({type(error).__name__}: {error}); "
                      f"{item or 'the item'} gets an all-zero image row", BrokenImageWarning, stacklevel=2)
        return None


# ----------------------------------------------------------------------------- resumable writer
@dataclass
class ExtractionResult:
    path: Path
    rows: int
    dim: int
    encoded: int = 0
    missing: int = 0
    broken: int = 0
    resumed_from: int = 0
    skipped: bool = False

    def summary(self, kind: str) -> str:
        if self.skipped:
            return f"{kind}: {self.path} already complete ({self.rows} x {self.dim}); --force recomputes it"
        extra = f", unreadable {self.broken}" if kind == "image" else ""
        resumed = f", resumed at row {self.resumed_from}" if self.resumed_from else ""
        return (f"{kind}: wrote {self.path} ({self.rows} x {self.dim}): encoded {self.encoded}, "
                f"missing {self.missing}{extra} (all-zero rows){resumed}")


def _sha1(path: Path) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _run_resumable(out_path: Path, n_items: int, fingerprint: dict, compute: Callable[[int, int], np.ndarray],
                   batch_size: int, force: bool, progress: bool, desc: str, result: ExtractionResult):
    """Append ``compute(start, stop)`` blocks to ``out_path.partial`` and rename when all rows are done."""
    partial = out_path.with_name(out_path.name + ".partial")
    state_path = out_path.with_name(out_path.name + ".progress.json")
    if out_path.exists() and not force:
        size = out_path.stat().st_size
        if size and size % (4 * n_items) == 0:
            result.skipped, result.rows, result.dim = True, n_items, size // (4 * n_items)
            return result
        raise FeatureExtractionError(f"{out_path}: exists but its size ({size} bytes) does not fit {n_items} items. "
                                     "Pass --force to recompute it.")
    done, dim = 0, None
    if state_path.exists() and not force:
        try:
            state = json.loads(state_path.read_text(encoding="utf-8"))
        except ValueError:
            state = {}
        if state.get("fingerprint") != fingerprint:
            raise FeatureExtractionError(
                f"{state_path}: an unfinished run with different settings (model, item2index or text file) "
                f"is recorded here ({state.get('fingerprint', {}).get('encoder', '?')}). Rerun with the same "
                "settings to continue it, or pass --force to start over.")
        dim = int(state["dim"]) if state.get("dim") else None
        done = int(state.get("rows", 0)) if dim else 0
        if done and (not partial.exists() or partial.stat().st_size < done * dim * 4):
            done = partial.stat().st_size // (dim * 4) if partial.exists() else 0
    if not done:
        partial.unlink(missing_ok=True)
    elif partial.stat().st_size != done * dim * 4:  # rows written after the last recorded batch
        with open(partial, "r+b") as handle:
            handle.truncate(done * dim * 4)
    result.resumed_from = done
    from tqdm import tqdm

    with tqdm(total=n_items, initial=done, desc=desc, unit="item", disable=not progress, file=sys.stderr,
              leave=False) as bar, open(partial, "ab") as handle:
        for start in range(done, n_items, batch_size):
            stop = min(start + batch_size, n_items)
            block = np.ascontiguousarray(compute(start, stop), dtype="<f4")
            if block.ndim != 2 or block.shape[0] != stop - start or (dim is not None and block.shape[1] != dim):
                raise FeatureExtractionError(
                    f"{out_path}: the encoder returned shape {block.shape} for rows {start}-{stop} "
                    f"(expected ({stop - start}, {dim or 'dim'})). Check the --encoder.")
            if not np.isfinite(block).all():
                raise FeatureExtractionError(f"{out_path}: the encoder returned NaN/inf for rows {start}-{stop}. "
                                             "Check the model weights (or use --precision fp32).")
            dim = block.shape[1]
            handle.write(block.tobytes())
            handle.flush()
            os.fsync(handle.fileno())
            write_json(state_path, {"fingerprint": fingerprint, "dim": dim, "rows": stop, "items": n_items})
            bar.update(stop - start)
    os.replace(partial, out_path)
    state_path.unlink(missing_ok=True)
    result.rows, result.dim = n_items, dim
    return result


def _zero_fill(n: int, index: list[int], encoded: np.ndarray | None, dim: int | None) -> np.ndarray:
    if encoded is None:
        return np.zeros((n, dim), dtype=np.float32)
    encoded = np.asarray(encoded, dtype=np.float32)
    if encoded.ndim != 2 or encoded.shape[0] != len(index):
        raise FeatureExtractionError(
            f"the encoder returned shape {encoded.shape} for {len(index)} inputs. Check the --encoder.")
    block = np.zeros((n, encoded.shape[1]), dtype=np.float32)
    block[index] = encoded
    return block


def _probe_dim(encode, sample) -> int:
    return int(np.asarray(encode([sample])).shape[1])


def extract_text_features(encoder: Encoder, item_ids: list[str], texts: dict[str, str], out_path,
                          item2index_path=None, text_path=None, batch_size: int = 64, force: bool = False,
                          progress: bool = False) -> ExtractionResult:
    """Encode ``texts[item_ids[i]]`` into row i of ``out_path``; items without text get zero rows."""
    out_path = Path(out_path)
    result = ExtractionResult(out_path, len(item_ids), 0)
    fingerprint = {"kind": "text", "encoder": encoder.identity, "items": len(item_ids),
                   "item2index": _sha1(Path(item2index_path)) if item2index_path else None,
                   "source": _sha1(Path(text_path)) if text_path else None}
    dim: list[int] = []

    def compute(start, stop):
        batch = [texts.get(item, "") for item in item_ids[start:stop]]
        index = [i for i, text in enumerate(batch) if text]
        result.encoded += len(index)
        result.missing += len(batch) - len(index)
        if not index and not dim:
            dim.append(_probe_dim(encoder.encode_text, "a"))
        encoded = encoder.encode_text([batch[i] for i in index]) if index else None
        block = _zero_fill(len(batch), index, encoded, dim[0] if dim else None)
        dim[:] = [block.shape[1]]
        return block

    return _run_resumable(out_path, len(item_ids), fingerprint, compute, batch_size, force, progress, "text", result)


def extract_image_features(encoder: Encoder, item_ids: list[str], image_dir, out_path, item2index_path=None,
                           batch_size: int = 64, force: bool = False, progress: bool = False) -> ExtractionResult:
    """Encode the image of ``item_ids[i]`` (found in ``image_dir``) into row i; missing/unreadable -> zero row."""
    out_path = Path(out_path)
    image_dir = Path(image_dir)
    if not image_dir.is_dir():
        raise FeatureExtractionError(f"{image_dir}: image folder not found. Download the images first "
                                     "(python -m missrec_recbole.tools.images) or leave out --images.")
    files = find_images(image_dir)
    result = ExtractionResult(out_path, len(item_ids), 0)
    fingerprint = {"kind": "image", "encoder": encoder.identity, "items": len(item_ids),
                   "item2index": _sha1(Path(item2index_path)) if item2index_path else None,
                   "source": None}
    dim: list[int] = []

    def compute(start, stop):
        images, index = [], []
        for offset, item in enumerate(item_ids[start:stop]):
            path = files.get(image_stem(item))
            if path is None:
                result.missing += 1
                continue
            image = load_image(path, f"item {item!r} (index {start + offset})")
            if image is None:
                result.broken += 1
                continue
            images.append(image)
            index.append(offset)
        result.encoded += len(index)
        if not index and not dim:
            from PIL import Image

            dim.append(_probe_dim(encoder.encode_images, Image.new("RGB", (32, 32))))
        encoded = encoder.encode_images(images) if images else None
        block = _zero_fill(stop - start, index, encoded, dim[0] if dim else None)
        dim[:] = [block.shape[1]]
        return block

    return _run_resumable(out_path, len(item_ids), fingerprint, compute, batch_size, force, progress, "images",
                          result)


# ----------------------------------------------------------------------------- CLI
def _load_encoder_factory(spec: str):
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise FeatureExtractionError(f"--encoder {spec!r}: expected one of {', '.join(['open_clip', *ENCODERS])} "
                                     "or 'module:function'.")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as error:
        raise FeatureExtractionError(f"--encoder {spec!r}: cannot import it ({error}).") from None
    return factory


PROG = "python -m missrec_recbole.tools.features"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = "Write CLIP text/image features (NAME.feat1CLS / NAME.feat3CLS)."
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__
    parser.add_argument("--text", help="NAME.text file (item texts); leave out to skip text features")
    parser.add_argument("--images", help="folder of item images; leave out to skip image features")
    parser.add_argument("-o", "--out", required=True, help="dataset folder that receives NAME.feat1CLS / feat3CLS")
    parser.add_argument("--name", help="dataset name (default: from --text NAME.text, else the output folder)")
    parser.add_argument("--item2index", help="item index file (default: <out>/NAME.item2index)")
    parser.add_argument("--model", default="ViT-B-32", help="open_clip model name, config .json or local-dir:PATH")
    parser.add_argument("--pretrained", help="open_clip weights: local file or tag (tags need network); "
                                             "'none' = random weights, for testing only")
    parser.add_argument("--encoder", help=f"{' | '.join(['open_clip', *ENCODERS])} (default open_clip) or "
                                          "module:function returning an Encoder")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", help="open_clip precision (fp32, bf16, fp16 on GPU)")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--text_suffix", default="feat1CLS")
    parser.add_argument("--image_suffix", default="feat3CLS")
    parser.add_argument("--force", action="store_true", help="recompute finished files / discard unfinished runs")
    parser.add_argument("--quiet", action="store_true", help="no progress bars (shown only when stderr is a terminal)")


def main(argv=None, parser=None) -> int:
    args = command_parser(add_arguments, parser, PROG).parse_args(argv)
    saved_format = warnings.formatwarning
    warnings.formatwarning = lambda message, category, *rest, **kw: f"warning: {message}\n"
    try:
        return _run_cli(args)
    finally:
        warnings.formatwarning = saved_format


def _run_cli(args) -> int:
    start = time.perf_counter()
    try:
        if not args.text and not args.images:
            raise FeatureExtractionError("nothing to do: pass --text NAME.text and/or --images FOLDER.")
        if args.batch_size < 1:
            raise FeatureExtractionError(f"--batch_size {args.batch_size}: must be at least 1.")
        out = Path(args.out)
        if not out.is_dir():
            raise FeatureExtractionError(
                f"{out}: output folder not found. Pass the dataset folder that holds NAME.item2index.")
        name = args.name or (Path(args.text).name.removesuffix(".text") if args.text else out.resolve().name)
        item2index = Path(args.item2index) if args.item2index else out / f"{name}.item2index"
        texts = read_item_texts(args.text) if args.text else None
        item_ids = read_item_index(item2index)
        if texts is not None and not set(texts) & set(item_ids):
            raise FeatureExtractionError(f"{args.text}: none of its item ids is in {item2index}. "
                                         "Pass the text file of the same dataset.")
        if args.images and not Path(args.images).is_dir():
            raise FeatureExtractionError(f"{args.images}: image folder not found. Download the images first "
                                         "(python -m missrec_recbole.tools.images) or leave out --images.")
        encoder = make_encoder(args.encoder, args.model, args.pretrained, args.device, args.precision)
        results = []
        if texts is not None:
            results.append(("text", extract_text_features(
                encoder, item_ids, texts, out / f"{name}.{args.text_suffix}", item2index, args.text,
                args.batch_size, args.force, watched() and not args.quiet)))
        if args.images:
            results.append(("image", extract_image_features(
                encoder, item_ids, args.images, out / f"{name}.{args.image_suffix}", item2index, args.batch_size,
                args.force, watched() and not args.quiet)))
    except DatasetFormatError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for kind, result in results:
        print(result.summary(kind))
    print(f"done in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main))
