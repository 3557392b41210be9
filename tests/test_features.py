"""Feature extraction: alignment with item2index, dims, zero rows, corrupt images, resume.

The pipeline is tested with a small deterministic torch-only encoder (``make_encoder``); the
open_clip-backed encoder is tested with a tiny randomly initialised open_clip model where open_clip
can be imported (it needs a torchvision built for the installed torch), and skipped otherwise, unless
MISSREC_REQUIRE_OPEN_CLIP=1 is set (CI's second stage, in a venv with a matching torch/torchvision): then a
missing or unimportable open_clip fails the test instead.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from missrec_recbole.data import validate_dataset
from missrec_recbole.tools.features import (BrokenImageWarning, Encoder, FeatureExtractionError, extract_text_features,
                                            main, read_item_index)
from tests.conftest import write_dataset

DIM = 16


class HashEncoder:
    """Deterministic torch-only encoder: byte histogram / 8x8 thumbnail times fixed random matrices."""

    identity = "test-hash-encoder-v1"

    def __init__(self, fail_after: int | None = None):
        generator = torch.Generator().manual_seed(0)
        self.text_proj = torch.randn(64, DIM, generator=generator)
        self.image_proj = torch.randn(3 * 8 * 8, DIM, generator=generator)
        self.fail_after = fail_after
        self.texts_seen: list[str] = []
        self.images_seen = 0

    def encode_text(self, texts):
        if self.fail_after is not None and len(self.texts_seen) >= self.fail_after:
            raise KeyboardInterrupt("simulated interruption")
        self.texts_seen += list(texts)
        bag = torch.zeros(len(texts), 64)
        for row, text in enumerate(texts):
            for byte in text.encode():
                bag[row, byte % 64] += 1
        return (bag @ self.text_proj).numpy()

    def encode_images(self, images):
        self.images_seen += len(images)
        pixels = torch.stack([torch.from_numpy(np.asarray(im.resize((8, 8)), dtype=np.float32) / 255).flatten()
                              for im in images])
        return (pixels @ self.image_proj + 1.0).numpy()


def make_encoder():
    return HashEncoder()


def save_image(path: Path, seed: int, fmt: str = "PNG") -> Image.Image:
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 256, (10 + seed, 14, 3), dtype=np.uint8))
    image.save(path, format=fmt)
    return image


@pytest.fixture
def dataset(tmp_path):
    """Tiny dataset (12 items, ids ITEM0..ITEM11) without features, with texts and images:
    ITEM3 has no text line, ITEM4 an empty text; ITEM5 no image, ITEM6 a corrupt one, ITEM7 a truncated one."""
    n = 12
    folder = write_dataset(tmp_path, "Tiny", n_items=n, dim=DIM, missing_image=())
    for suffix in ("feat1CLS", "feat3CLS"):
        (folder / f"Tiny.{suffix}").unlink()
    texts = {f"ITEM{i}": f"item {i} text{'x' * i}" for i in range(n) if i != 3}
    texts["ITEM4"] = ""
    with open(folder / "Tiny.text", "w") as handle:
        handle.write("item_id:token\ttext:token_seq\n")
        for item in sorted(texts, reverse=True):  # file order differs from index order
            handle.write(f"{item}\t{texts[item]}\n")
    images = folder / "images"
    images.mkdir()
    pictures = {}
    for i in range(n):
        if i == 5:
            continue
        if i == 6:
            (images / "ITEM6.jpg").write_bytes(b"this is not a jpeg")
            continue
        pictures[f"ITEM{i}"] = save_image(images / f"ITEM{i}.{'jpg' if i % 2 else 'png'}", i,
                                          "JPEG" if i % 2 else "PNG")
    truncated = (images / "ITEM7.jpg").read_bytes()
    (images / "ITEM7.jpg").write_bytes(truncated[: len(truncated) // 2])
    del pictures["ITEM7"]
    (images / "notes.txt").write_text("not an image")
    (images / ".ITEM5.jpg").write_bytes(b"hidden files are ignored")
    return folder, texts, pictures


def test_cli_alignment_dims_zero_rows_and_corrupt_images(dataset, capsys):
    folder, texts, pictures = dataset
    argv = ["--text", str(folder / "Tiny.text"), "--images", str(folder / "images"), "-o", str(folder),
            "--encoder", "tests.test_features:make_encoder", "--batch_size", "5", "--quiet"]
    with pytest.warns(BrokenImageWarning) as caught:
        assert main(argv) == 0
    messages = sorted(str(w.message) for w in caught if issubclass(w.category, BrokenImageWarning))
    assert len(messages) == 2 and "ITEM6.jpg: cannot read image" in messages[0] and "ITEM7.jpg" in messages[1]
    assert "all-zero image row" in messages[0]
    printed = capsys.readouterr().out
    assert "text: wrote" in printed and "encoded 10, missing 2" in printed
    assert "encoded 9, missing 1, unreadable 2" in printed

    text = np.fromfile(folder / "Tiny.feat1CLS", dtype="<f4").reshape(-1, DIM)
    image = np.fromfile(folder / "Tiny.feat3CLS", dtype="<f4").reshape(-1, DIM)
    assert text.shape == image.shape == (12, DIM)
    encoder = HashEncoder()
    for i, item in enumerate(read_item_index(folder / "Tiny.item2index")):  # row i = item index i
        want = encoder.encode_text([texts[item]])[0] if texts.get(item) else np.zeros(DIM)
        np.testing.assert_allclose(text[i], want, rtol=1e-5, atol=1e-5)
        want = encoder.encode_images([pictures[item].convert("RGB")])[0] if item in pictures else np.zeros(DIM)
        if item in pictures and i % 2:  # JPEG is lossy: compare with the decoded file
            want = encoder.encode_images([Image.open(folder / "images" / f"{item}.jpg").convert("RGB")])[0]
        np.testing.assert_allclose(image[i], want, rtol=1e-5, atol=1e-5)
    assert not text[[3, 4]].any() and not image[[5, 6, 7]].any() and np.abs(image[[0, 1, 2]]).sum(1).all()
    assert not list(folder.glob("*.partial")) and not list(folder.glob("*.progress.json"))

    from missrec_recbole.quick_start import build_config  # the result loads like any dataset

    config = build_config("Tiny", config_dict={"data_path": str(folder.parent), "text_dim": DIM, "image_dim": DIM})
    assert validate_dataset(config).features["image"].shape == (12, DIM)

    # finished files are not recomputed
    assert main(argv) == 0
    assert "already complete" in capsys.readouterr().out


def test_resume_after_interruption(dataset, tmp_path):
    folder, texts, _ = dataset
    ids = read_item_index(folder / "Tiny.item2index")
    out = folder / "Tiny.feat1CLS"
    kwargs = dict(item2index_path=folder / "Tiny.item2index", text_path=folder / "Tiny.text", batch_size=3)
    with pytest.raises(KeyboardInterrupt):
        extract_text_features(HashEncoder(fail_after=4), ids, texts, out, **kwargs)
    partial, state = folder / "Tiny.feat1CLS.partial", folder / "Tiny.feat1CLS.progress.json"
    assert not out.exists() and partial.stat().st_size == 6 * DIM * 4  # two batches of 3 items
    assert json.loads(state.read_text())["rows"] == 6
    with open(partial, "ab") as handle:  # a crash after writing a block but before recording it
        handle.write(b"\x01" * (DIM * 4 + 3))

    class Other(HashEncoder):
        identity = "another-model"

    with pytest.raises(FeatureExtractionError, match="progress.json: an unfinished run with different settings.*--force"):
        extract_text_features(Other(), ids, texts, out, **kwargs)

    encoder = HashEncoder()
    result = extract_text_features(encoder, ids, texts, out, **kwargs)
    assert result.resumed_from == 6 and len(encoder.texts_seen) == sum(1 for i in ids[6:] if texts.get(i))
    assert not partial.exists() and not state.exists()
    reference = extract_text_features(HashEncoder(), ids, texts, tmp_path / "full.feat1CLS", batch_size=3)
    assert reference.resumed_from == 0
    assert out.read_bytes() == (tmp_path / "full.feat1CLS").read_bytes()

    again = HashEncoder()
    assert extract_text_features(again, ids, texts, out, **kwargs).skipped and not again.texts_seen
    assert extract_text_features(again, ids, texts, out, force=True, **kwargs).encoded == 10


def test_bad_inputs(dataset, capsys):
    folder, _, _ = dataset
    cases = [
        ([], "nothing to do"),
        (["--text", str(folder / "missing.text")], "missing.text: text file not found"),
        (["--images", str(folder / "nope")], "nope: image folder not found"),
        (["--text", str(folder / "Tiny.text"), "--item2index", str(folder / "Tiny.train.inter")],
         "Tiny.train.inter: line 1 is not 'original_id<TAB>index'"),
        (["--text", str(folder / "Tiny.text"), "--encoder", "tests.test_features:nothing"], "cannot import"),
    ]
    (folder / "gap.item2index").write_text("A\t0\nB\t2\n")
    cases.append((["--text", str(folder / "Tiny.text"), "--item2index", str(folder / "gap.item2index")],
                  "gap.item2index: the indices of its 2 items are not exactly 0..1"))
    (folder / "Bad.text").write_text("ITEM0\tno header\n")
    cases.append((["--text", str(folder / "Bad.text"), "--item2index", str(folder / "Tiny.item2index")],
                  "Bad.text: first line"))
    for extra, message in cases:
        argv = ["-o", str(folder), "--quiet"] + (extra if "--encoder" in extra else
                                                  extra + ["--encoder", "tests.test_features:make_encoder"])
        assert main(argv) == 1, extra
        assert message in capsys.readouterr().err, message
    assert not list(folder.glob("Tiny.feat*"))


def test_open_clip_missing_or_broken_gives_clear_error(dataset, capsys):
    if importlib.util.find_spec("open_clip") is not None:
        try:
            import open_clip  # noqa: F401
        except Exception:  # noqa: BLE001 - installed but not importable (torchvision mismatch)
            expected = "open_clip is installed but cannot be imported"
        else:
            pytest.skip("open_clip imports here: covered by test_open_clip_tiny_random_model")
    else:
        expected = 'pip install -e ".[features]"'
    folder, _, _ = dataset
    assert main(["--text", str(folder / "Tiny.text"), "-o", str(folder), "--quiet"]) == 1
    assert expected in capsys.readouterr().err
    assert not list(folder.glob("Tiny.feat*"))


def _open_clip_or_skip():
    """open_clip, or a skip; a failure instead of the skip when MISSREC_REQUIRE_OPEN_CLIP=1."""
    unavailable = pytest.fail if os.environ.get("MISSREC_REQUIRE_OPEN_CLIP") == "1" else pytest.skip
    if importlib.util.find_spec("open_clip") is None:
        unavailable("open_clip is not installed (optional extra [features])")
    try:
        import open_clip
    except Exception as error:  # noqa: BLE001
        unavailable(f"open_clip cannot be imported here: {error}")
    return open_clip


def test_open_clip_tiny_random_model(dataset, tmp_path, capsys):
    open_clip = _open_clip_or_skip()
    from missrec_recbole.tools.features import OpenClipEncoder

    config = tmp_path / "TinyCLIP-test.json"
    config.write_text(json.dumps({
        "embed_dim": 24,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}))
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="randomly initialised"):
        random_model = OpenClipEncoder(str(config), "none")
    assert isinstance(random_model, Encoder)
    weights = tmp_path / "tiny_weights.pt"
    torch.save(random_model.model.state_dict(), weights)

    folder, texts, _ = dataset
    argv = ["--text", str(folder / "Tiny.text"), "--images", str(folder / "images"), "-o", str(folder),
            "--model", str(config), "--pretrained", str(weights), "--batch_size", "4", "--quiet"]
    with pytest.warns(BrokenImageWarning):
        assert main(argv) == 0
    printed = capsys.readouterr().out  # any width runs without a --text_dim flag: no note about it any more
    assert "Tiny.feat1CLS (12 x 24)" in printed and "Tiny.feat3CLS (12 x 24)" in printed and "_dim" not in printed
    text = np.fromfile(folder / "Tiny.feat1CLS", dtype="<f4").reshape(-1, 24)
    image = np.fromfile(folder / "Tiny.feat3CLS", dtype="<f4").reshape(-1, 24)
    assert text.shape == image.shape == (12, 24)
    assert not text[[3, 4]].any() and not image[[5, 6, 7]].any()
    assert np.abs(text[[0, 1, 2, 5]]).sum(1).all() and np.abs(image[[0, 1, 2, 8]]).sum(1).all()
    loaded = OpenClipEncoder(str(config), str(weights))  # the local weights file reproduces the model
    ids = read_item_index(folder / "Tiny.item2index")
    np.testing.assert_allclose(text[9], loaded.encode_text([texts[ids[9]]])[0], rtol=1e-4, atol=1e-5)
    picture = Image.open(folder / "images" / f"{ids[8]}.png").convert("RGB")
    np.testing.assert_allclose(image[8], loaded.encode_images([picture])[0], rtol=1e-4, atol=1e-5)
    assert open_clip.__version__

    with pytest.raises(FeatureExtractionError, match="neither a file nor a known weights tag"):
        OpenClipEncoder("ViT-B-32", "no-such-tag")


# ----------------------------------------------------------------------------- WordLlama (real weights, offline)
@pytest.fixture(scope="module")
def wordllama_encoder():
    from missrec_recbole.tools.features import make_encoder

    return make_encoder("wordllama")  # the test extra installs wordllama: a missing package fails here


def _cosine(a, b):
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_wordllama_loads_offline_and_puts_similar_products_together(wordllama_encoder, monkeypatch, tmp_path):
    """Real packaged weights: titles of the same kind of product are nearer than unrelated ones."""
    monkeypatch.setenv("HOME", str(tmp_path))  # nothing may come from (or go to) a user cache
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from missrec_recbole.tools.features import make_encoder

    encoder = make_encoder("wordllama")
    assert encoder.identity.startswith("wordllama:") and not (tmp_path / ".cache").exists()
    pens, pens2, microscope, microscope2 = encoder.encode_text([
        "Pilot G2 retractable gel ink pens, fine point, black ink, 12 pack",
        "BIC Round Stic ballpoint pen, medium point, blue, box of 60",
        "AmScope compound microscope 40X-2000X with LED illumination and mechanical stage",
        "Glass microscope slides, pre-cleaned, 72 pieces, for laboratory use"])
    assert encoder.encode_text(["a"]).shape == (1, 256)
    assert _cosine(pens, pens2) > _cosine(pens, microscope) + 0.1
    assert _cosine(microscope, microscope2) > _cosine(microscope, pens2) + 0.1
    np.testing.assert_array_equal(encoder.encode_text(["same text"]), wordllama_encoder.encode_text(["same text"]))


def test_wordllama_is_text_only(wordllama_encoder):
    with pytest.raises(FeatureExtractionError, match="encodes text only"):
        wordllama_encoder.encode_images([Image.new("RGB", (8, 8))])


def test_unknown_encoder_name_lists_the_choices(dataset, capsys):
    folder, _, _ = dataset
    assert main(["--text", str(folder / "Tiny.text"), "-o", str(folder), "--encoder", "minilm", "--quiet"]) == 1
    assert "--encoder 'minilm': expected one of open_clip, wordllama or 'module:function'" in capsys.readouterr().err
