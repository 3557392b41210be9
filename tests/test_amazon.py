"""Raw Amazon reviews + metadata -> atomic files, on small generated raw files (no real data shipped)."""

from __future__ import annotations

import gzip
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from missrec_recbole.tools.amazon import RawDataError, clean_text, convert_amazon, image_url, item_text, main
from missrec_recbole.data.dataset import validate_dataset

HEADER = "user_id:token\titem_id_list:token_seq\titem_id:token"


def make_raw(seed: int = 0, n_users: int = 60, n_items: int = 25):
    """Reviews and metadata records with the quirks of the real dumps."""
    rng = np.random.default_rng(seed)
    items = [f"B{i:09d}" for i in range(n_items)]
    reviews = []
    for u in range(n_users):
        n = int(rng.integers(1, 12))
        for item in rng.choice(items, size=n, replace=False):
            day = int(rng.integers(0, 40))  # few distinct days -> many timestamp ties
            reviews.append({"overall": 5.0, "verified": True, "reviewTime": "01 2, 2015", "reviewerID": f"A{u:05d}X",
                            "asin": str(item), "unixReviewTime": 1_400_000_000 + 86_400 * day,
                            "reviewText": "fine", "summary": "ok"})
    reviews += [dict(reviews[3]), dict(reviews[10])]  # exact duplicates
    later = dict(reviews[5], unixReviewTime=reviews[5]["unixReviewTime"] + 10**7)
    reviews.append(later)  # same user-item pair later: the earliest one is kept
    no_unix = dict(reviews[7])
    del no_unix["unixReviewTime"]
    no_unix["reviewTime"] = "03 15, 2016"
    no_unix["asin"] = items[1]
    reviews.append(no_unix)  # time from reviewTime
    reviews.append({"reviewerID": "A99999X", "overall": 1.0})  # no asin / time -> skipped
    meta = []
    for i, asin in enumerate(items):
        record = {"asin": asin, "title": f"Widget &amp; Co <b>{i}</b>\n  deluxe", "brand": f"Brand{i % 4}",
                  "category": ["Office Products", "Office &amp; School Supplies", f"Kind {i % 3}", "</span>"],
                  "imageURLHighRes": [f"https://example.invalid/images/I/{asin}.jpg"],
                  "imageURL": [f"https://example.invalid/images/I/{asin}._SS40_.jpg"]}
        if i % 5 == 1:
            del record["imageURLHighRes"]  # thumbnail URL only
        if i % 7 == 2:
            record.pop("imageURLHighRes", None)
            record.pop("imageURL")  # no image at all
        if i == 4:
            record = {"asin": asin, "title": "", "category": []}  # no text -> dropped
        if i == 6:
            continue  # no metadata -> dropped
        meta.append(record)
    meta.append({"asin": items[0], "title": "duplicate record"})  # first record wins
    meta.append({"asin": "B999999999", "title": "never reviewed"})
    return reviews, meta


def write_lines(path: Path, records, literal: bool = False, gz: bool = True) -> Path:
    text = "".join((repr(r) if literal else json.dumps(r)) + "\n" for r in records)
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as handle:
            handle.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def reference(reviews, meta, kcore=5):
    """Independent, slow re-implementation of the documented rules (user -> item sequence)."""
    has_text = {m["asin"] for m in meta if item_text(m)}
    first = {}
    for r in reviews:
        if "asin" not in r:
            continue
        t = r.get("unixReviewTime")
        if t is None:
            from datetime import datetime, timezone

            t = int(datetime.strptime(r["reviewTime"], "%m %d, %Y").replace(tzinfo=timezone.utc).timestamp())
        key = (r["reviewerID"], r["asin"])
        if r["asin"] in has_text and (key not in first or t < first[key]):
            first[key] = t
    pairs = dict(first)
    while True:
        users = Counter(u for u, _ in pairs)
        items = Counter(i for _, i in pairs)
        drop = [p for p in pairs if users[p[0]] < max(kcore, 3) or items[p[1]] < kcore]
        if not drop:
            break
        for p in drop:
            del pairs[p]
    seqs = {}
    for (u, i), t in pairs.items():
        seqs.setdefault(u, []).append((t, i))
    return {u: [i for _, i in sorted(v)] for u, v in sorted(seqs.items())}


def read_rows(folder: Path, name: str, split: str):
    lines = (folder / f"{name}.{split}.inter").read_text().splitlines()
    assert lines[0] == HEADER
    return [(int(u), [int(x) for x in h.split()], int(t)) for u, h, t in (line.split("\t") for line in lines[1:])]


def read_map(path: Path):
    return [line.split("\t") for line in path.read_text().splitlines()]


@pytest.fixture
def raw(tmp_path):
    reviews, meta = make_raw()
    return (write_lines(tmp_path / "reviews.json.gz", reviews), write_lines(tmp_path / "meta.json.gz", meta),
            reviews, meta)


def test_convert_matches_reference_and_format(raw, tmp_path, capsys):
    reviews_path, meta_path, reviews, meta = raw
    out = tmp_path / "data" / "Office"
    assert main(["--reviews", str(reviews_path), "--meta", str(meta_path), "-o", str(out), "--kcore", "3"]) == 0
    assert "users" in capsys.readouterr().out
    expected = reference(reviews, meta, kcore=3)
    items = read_map(out / "Office.item2index")
    users = read_map(out / "Office.user2index")
    assert [int(i) for _, i in items] == list(range(len(items)))
    assert [u for u, _ in users] == sorted(expected) and [int(i) for _, i in users] == list(range(len(users)))
    asin = [a for a, _ in items]
    rows = {s: read_rows(out, "Office", s) for s in ("train", "valid", "test")}
    assert len(rows["valid"]) == len(rows["test"]) == len(users)
    first_seen = []
    for (u, hist_t, target_t), (u2, hist_v, target_v) in zip(rows["test"], rows["valid"]):
        seq = [asin[i] for i in hist_t + [target_t]]
        assert u == u2 and seq == expected[users[u][0]]  # chronological, ties by asin, dedup, k-core
        assert hist_t == hist_v + [target_v]  # leave-one-out
        first_seen += [i for i in hist_t + [target_t] if i not in first_seen]
    assert first_seen == list(range(len(items)))  # item indices follow first appearance
    train = Counter(u for u, _, _ in rows["train"])
    for u, hist, target in rows["test"]:
        assert train[u] == len(hist) - 2
    for u, hist, target in rows["train"]:
        full = rows["test"][u][1] + [rows["test"][u][2]]
        assert full[:len(hist) + 1] == hist + [target]
    # text and image URLs
    text = read_map(out / "Office.text")
    assert text[0] == ["item_id:token", "text:token_seq"] and [t[0] for t in text[1:]] == asin
    assert "B000000000" in asin
    assert dict(text[1:])["B000000000"] == "Widget & Co 0 deluxe. Office Products Office & School Supplies Kind 0. Brand0."
    assert "B000000004" not in asin and "B000000006" not in asin  # no text / no metadata
    urls = dict(read_map(out / "Office.images"))
    assert urls["B000000000"] == "https://example.invalid/images/I/B000000000.jpg"
    assert urls["B000000001"] == "https://example.invalid/images/I/B000000001.jpg"
    assert "B000000002" not in urls and set(urls) <= set(asin)
    assert not list(out.parent.glob(".tmp-*"))  # nothing left behind

    # with feature files the output is a valid MISSRec dataset (the loader's own check)
    rng = np.random.default_rng(0)
    rng.normal(size=(len(items), 8)).astype("<f4").tofile(out / "Office.feat1CLS")
    rng.normal(size=(len(items), 8)).astype("<f4").tofile(out / "Office.feat3CLS")
    from missrec_recbole.quick_start import build_config

    config = build_config("Office", config_dict={"data_path": str(out.parent), "text_dim": 8, "image_dim": 8})
    assert validate_dataset(config).n_items == len(items)


def test_python_literal_plain_files_give_identical_output(raw, tmp_path):
    reviews_path, meta_path, reviews, meta = raw
    convert_amazon(reviews_path, meta_path, tmp_path / "a" / "X", kcore=3)
    literal_reviews = write_lines(tmp_path / "reviews_old.json", reviews, literal=True, gz=False)
    literal_meta = write_lines(tmp_path / "meta_old.json.gz", meta, literal=True)
    convert_amazon(literal_reviews, literal_meta, tmp_path / "b" / "X", kcore=3)
    for path in sorted((tmp_path / "a" / "X").iterdir()):
        assert path.read_bytes() == (tmp_path / "b" / "X" / path.name).read_bytes(), path.name


def test_kcore_is_iterative_and_max_len_truncates(tmp_path):
    # users U1..U5 review a..e (U1..U4 also g); U6 reviews a, b, f
    reviews = [{"reviewerID": f"U{u}", "asin": a, "unixReviewTime": 100 * u + k}
               for u in range(1, 6) for k, a in enumerate("abcdeg") if (u, a) != (5, "g")]
    reviews += [{"reviewerID": "U6", "asin": a, "unixReviewTime": k} for k, a in enumerate("abf")]
    meta = [{"asin": a, "title": a.upper()} for a in "abcdefg"]
    stats = convert_amazon(write_lines(tmp_path / "r.json.gz", reviews), write_lines(tmp_path / "m.json.gz", meta),
                           tmp_path / "K", kcore=5, max_len=2)
    # g has 4 reviews -> removed; f has 1 -> removed; U6 then has 2 < 5 -> removed; a, b drop to 5 -> kept
    assert stats.users == 5 and stats.items == 5 and stats.interactions == 25
    assert [u for u, _ in read_map(tmp_path / "K" / "K.user2index")] == [f"U{u}" for u in range(1, 6)]
    for split in ("train", "valid", "test"):
        assert all(len(h) <= 2 for _, h, _ in read_rows(tmp_path / "K", "K", split))
    assert read_rows(tmp_path / "K", "K", "test")[0] == (0, [2, 3], 4)  # last two items of a b c d e


def test_ties_broken_by_asin_not_file_order(tmp_path):
    reviews = [{"reviewerID": "U", "asin": a, "unixReviewTime": 5} for a in "cab"]
    meta = [{"asin": a, "title": a} for a in "abc"]
    convert_amazon(write_lines(tmp_path / "r.json.gz", reviews), write_lines(tmp_path / "m.json.gz", meta),
                   tmp_path / "T", kcore=1)
    assert [a for a, _ in read_map(tmp_path / "T" / "T.item2index")] == ["a", "b", "c"]
    assert read_rows(tmp_path / "T", "T", "test") == [(0, [0, 1], 2)]


def test_text_and_image_helpers():
    assert clean_text("A &amp;amp; B<br/>\t<i>c</i>\n") == "A & B c"
    assert item_text({"title": "T", "categories": [["X", "Y"], ["X", "Z"]], "brand": "by\n    \n    Acme"}) == \
        "T. X Y Z. Acme."
    assert item_text({"title": None, "brand": "", "category": "</span>"}) == ""
    assert image_url({"imageURL": ["https://h/images/I/41a._SS40_.jpg"]}) == "https://h/images/I/41a.jpg"
    assert image_url({"imUrl": "http://h/x.jpg"}) == "http://h/x.jpg"
    assert image_url({"imageURLHighRes": ["ftp://h/x.jpg"], "imageURL": []}) is None


def test_bad_inputs_name_the_file_and_leave_nothing(raw, tmp_path, capsys):
    reviews_path, meta_path, reviews, meta = raw
    truncated = tmp_path / "truncated.json.gz"
    truncated.write_bytes(reviews_path.read_bytes()[:200])
    with pytest.raises(RawDataError, match="truncated.json.gz: corrupt or truncated gzip.*Re-download"):
        convert_amazon(truncated, meta_path, tmp_path / "O1")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(reviews[0]) + "\n{not json at all\n" + json.dumps(reviews[1]) + "\n")
    with pytest.raises(RawDataError, match=r"bad.json: line 2 .*--skip_bad_lines"):
        convert_amazon(bad, meta_path, tmp_path / "O2")
    with pytest.raises(RawDataError, match="no user is left"):  # skipped bad line, then too little data
        convert_amazon(bad, meta_path, tmp_path / "O2", skip_bad_lines=True)
    with pytest.raises(RawDataError, match="missing.json.gz: file not found"):
        convert_amazon(tmp_path / "missing.json.gz", meta_path, tmp_path / "O3")
    with pytest.raises(RawDataError, match="none of its .* records has the asin"):
        convert_amazon(reviews_path, write_lines(tmp_path / "other.json.gz", [{"asin": "Z1", "title": "z"}]),
                       tmp_path / "O4")
    assert main(["--reviews", str(meta_path), "--meta", str(meta_path), "-o", str(tmp_path / "O5")]) == 1
    assert "no usable review" in capsys.readouterr().err
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(("O", ".tmp"))]

    out = tmp_path / "Office"
    convert_amazon(reviews_path, meta_path, out, kcore=3)
    (out / "images").mkdir()
    (out / "images" / "B000000000.jpg").write_bytes(b"x")
    (out / "Office.feat1CLS").write_bytes(b"old")
    with pytest.raises(RawDataError, match="already holds files.*--force"):
        convert_amazon(reviews_path, meta_path, out, kcore=3)
    convert_amazon(reviews_path, meta_path, out, kcore=4, force=True)
    assert (out / "images" / "B000000000.jpg").read_bytes() == b"x"  # sub-folders are carried over
    assert not (out / "Office.feat1CLS").exists()  # stale features (old item index) are gone
    assert not list(tmp_path.glob(".tmp-*"))
