"""Generated demo domains on disk: written atomically in the atomic file format, with a marker that says which
generator version, seed and width made them (a domain with another marker is generated again)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from missrec_recbole.data.atomic_files import MAX_HISTORY, SPLITS, inter_path, write_feature_file, write_sequences
from missrec_recbole.files import atomic_directory
from missrec_recbole.tools.demo.settings import (DEMO_DOMAINS, GENERATOR, GENERATOR_VERSION, IMAGE_SUFFIX, MARKER_FILE,
                                                 TEXT_SUFFIX)
from missrec_recbole.tools.demo.simulate import DemoDomain, simulate_domain
from missrec_recbole.tools.demo.world import World


def write_domain(folder: Path, name: str, domain: DemoDomain, meta: dict) -> None:
    """The domain's atomic files and feature files, then the marker (last: it certifies a complete domain)."""
    write_sequences(folder, name, domain.user_ids, domain.item_ids, [seq.tolist() for seq in domain.seqs],
                    dict(zip(domain.item_ids, domain.texts)), max_len=MAX_HISTORY)
    write_feature_file(folder / f"{name}.{TEXT_SUFFIX}", domain.text_feat)
    write_feature_file(folder / f"{name}.{IMAGE_SUFFIX}", domain.image_feat)
    with open(folder / MARKER_FILE, "w", encoding="utf-8", newline="\n") as handle:
        json.dump(meta, handle, sort_keys=True, indent=1)
        handle.write("\n")


def _expected_files(name: str) -> list[str]:
    return [*(inter_path("", name, split).name for split in SPLITS), f"{name}.item2index", f"{name}.user2index",
            f"{name}.text", f"{name}.{TEXT_SUFFIX}", f"{name}.{IMAGE_SUFFIX}", MARKER_FILE]


def _meta(name: str, seed: int, feature_dim: int) -> dict:
    return {"generator": GENERATOR, "version": GENERATOR_VERSION, "domain": name, "seed": int(seed),
            "feature_dim": int(feature_dim)}


def is_demo_domain_complete(data_path: str | Path, name: str, seed: int = 2023, feature_dim: int = 512) -> bool:
    """True if ``data_path/name`` holds a complete domain of this generator version/seed/dim."""
    folder = Path(data_path) / name
    try:
        meta = json.loads((folder / MARKER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return meta == _meta(name, seed, feature_dim) and all((folder / f).is_file() for f in _expected_files(name))


def generate_demo_dataset(out_dir: str | Path, domains: Iterable[str] = DEMO_DOMAINS, seed: int = 2023,
                          feature_dim: int = 512) -> list[Path]:
    """Generate the demo domains into ``out_dir/<name>/`` (overwriting them); return the folders.

    Each domain is written atomically (temp folder + rename). Output is byte-identical for the same
    ``seed``/``feature_dim``/generator version, independently of which other domains are generated in the same call.
    """
    return _generate(Path(out_dir), list(domains), seed, feature_dim, overwrite=True)


def ensure_demo_dataset(data_path: str | Path, domains: Iterable[str] = DEMO_DOMAINS, seed: int = 2023,
                        feature_dim: int = 512) -> None:
    """Generate only the demo domains that are missing, incomplete or from another generator version (checked
    through the marker file). Cheap and write-free when everything is present."""
    data_path = Path(data_path)
    missing = [d for d in domains if not is_demo_domain_complete(data_path, d, seed, feature_dim)]
    if missing:
        _generate(data_path, missing, seed, feature_dim, overwrite=False)


def _generate(out_dir: Path, domains: list[str], seed: int, feature_dim: int, overwrite: bool) -> list[Path]:
    """Each domain through :func:`~missrec_recbole.files.atomic_directory`: an interrupted run never leaves a
    half-written domain. With ``overwrite=False`` a complete domain that appeared meanwhile (e.g. written by a
    concurrent process) is kept and the fresh copy discarded."""
    out_dir.mkdir(parents=True, exist_ok=True)
    world = World(seed, feature_dim) if domains else None
    for name in domains:
        def complete_one_kept(name=name) -> bool:
            return not overwrite and is_demo_domain_complete(out_dir, name, seed, feature_dim)

        with atomic_directory(out_dir / name, keep_existing=complete_one_kept) as tmp:
            write_domain(tmp, name, simulate_domain(name, seed, world, feature_dim), _meta(name, seed, feature_dim))
    return [out_dir / name for name in domains]
