"""Download item images from a URL list (``NAME.images``: ``original_id<TAB>url`` per line).

::

    python -m missrec_recbole.tools.images --urls dataset/Office/Office.images -o dataset/Office/images/ \\
        [--workers 8 --retries 3 --timeout 10]

* One file per item, ``<stem><ext>`` where ``stem = image_stem(original_id)`` (the id itself for
  ASIN-like ids, percent-quoted otherwise) and ``ext`` follows the downloaded image's format.
  :func:`find_images` maps stems back to files; feature extraction uses the same two functions.
* At most ``--workers`` downloads run at once. Connection errors, timeouts, HTTP 408/429/5xx and
  truncated bodies are retried ``--retries`` times with exponential back-off; 4xx answers, bodies
  that are not an image and bodies over ``--max_mb`` are not. ``--timeout`` bounds each attempt
  (connect + read, whole body).
* Resumable: items whose image file is already present and readable are skipped; a file that
  Pillow cannot read is downloaded again. Each image is written to a hidden temporary file and
  renamed, so an interrupted run leaves no partial image (a killed run's hidden ``.tmp-*`` files are
  removed on the next run).
* Failures are listed in ``<out>/download_failures.tsv`` (``original_id<TAB>url<TAB>reason``);
  items without an image get an all-zero image feature row, which MISSRec treats as "missing".
"""

from __future__ import annotations

import argparse
import http.client
import io
import socket
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from missrec_recbole.command import command_parser, run_command
from missrec_recbole.data.atomic_files import DatasetFormatError, tab_rows
from missrec_recbole.files import TEMP_PREFIX, atomic_write

__all__ = ["IMAGE_EXTENSIONS", "DownloadReport", "ImageListError", "download_images", "find_images", "image_stem",
           "read_url_list", "is_readable_image"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff")
_FORMAT_EXT = {"JPEG": ".jpg", "MPO": ".jpg", "PNG": ".png", "GIF": ".gif", "WEBP": ".webp", "BMP": ".bmp", "TIFF": ".tif"}
FAILURES_FILE = "download_failures.tsv"
USER_AGENT = "missrec-recbole-image-fetch/1.0"
_RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}


class ImageListError(DatasetFormatError):
    """Unusable URL list or output folder: the message names the file and what to do."""


def image_stem(item_id: str) -> str:
    """File name stem for an item id: unchanged for ``[A-Za-z0-9_-]`` ids, percent-quoted otherwise."""
    return urllib.parse.quote(item_id, safe="-_")


def find_images(folder: str | Path) -> dict[str, Path]:
    """``stem -> path`` of the image files in ``folder`` (hidden and non-image files ignored)."""
    found: dict[str, Path] = {}
    folder = Path(folder)
    if not folder.is_dir():
        return found
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.suffix.lower() not in IMAGE_EXTENSIONS or not path.is_file():
            continue
        found.setdefault(path.stem, path)
    return found


def is_readable_image(path: Path) -> bool:
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.verify()
        return True
    except Exception:  # noqa: BLE001 - any decoder error means "not a usable image"
        return False


def read_url_list(path: str | Path) -> list[tuple[str, str]]:
    """``[(original_id, url)]`` from an ``original_id<TAB>url`` file (first URL per id wins)."""
    path = Path(path)
    if not path.is_file():
        raise ImageListError(f"{path}: URL list not found. Create it with python -m missrec_recbole.tools.amazon "
                             "(NAME.images) or write 'original_id<TAB>url' lines.")
    entries, seen = [], set()
    for line_no, parts in tab_rows(path):
        if len(parts) != 2 or not parts[0] or not parts[1].strip():
            line = "\t".join(parts)
            raise ImageListError(f"{path}: line {line_no} is not 'original_id<TAB>url' ({line[:80]!r}). "
                                 "Fix or remove the line.")
        item_id, url = parts[0], parts[1].strip()
        if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
            raise ImageListError(f"{path}: line {line_no}: {url[:80]!r} is not an http(s) URL. "
                                 "Fix or remove the line.")
        if item_id not in seen:
            seen.add(item_id)
            entries.append((item_id, url))
    return entries


@dataclass
class DownloadReport:
    downloaded: int = 0
    skipped: int = 0
    failed: dict[str, tuple[str, str]] = field(default_factory=dict)  # id -> (url, reason)
    attempts: int = 0

    def summary(self) -> str:
        reasons: dict[str, int] = {}
        for _, reason in self.failed.values():
            key = reason.split(":")[0]
            reasons[key] = reasons.get(key, 0) + 1
        detail = ", ".join(f"{k}: {v}" for k, v in sorted(reasons.items()))
        return (f"downloaded {self.downloaded}, already present {self.skipped}, failed {len(self.failed)}"
                + (f" ({detail})" if detail else ""))


class _Permanent(Exception):
    pass


class _Transient(Exception):
    pass


def _fetch(opener, url: str, timeout: float, max_bytes: int) -> bytes:
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    deadline = time.monotonic() + timeout
    try:
        with opener.open(request, timeout=timeout) as response:
            declared = response.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > max_bytes:
                raise _Permanent(f"too large: {declared} bytes")
            chunks, size = [], 0
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise _Transient(f"timeout: body not complete after {timeout:g} s")
                chunk = response.read(64 * 1024)
                if not chunk:
                    break
                size += len(chunk)
                if size > max_bytes:
                    raise _Permanent(f"too large: over {max_bytes} bytes")
                chunks.append(chunk)
            return b"".join(chunks)
    except urllib.error.HTTPError as error:
        reason = f"HTTP {error.code}: {error.reason}"
        raise (_Transient if error.code in _RETRY_STATUS else _Permanent)(reason) from None
    except (TimeoutError, socket.timeout) as error:
        raise _Transient(f"timeout: {error or 'no answer'} (limit {timeout:g} s)") from None
    except urllib.error.URLError as error:
        if isinstance(error.reason, (TimeoutError, socket.timeout)):
            raise _Transient(f"timeout: connect (limit {timeout:g} s)") from None
        raise _Transient(f"connection: {error.reason}") from None
    except http.client.InvalidURL as error:
        raise _Permanent(f"bad URL: {error}") from None
    except (http.client.HTTPException, ConnectionError, OSError) as error:
        raise _Transient(f"connection: {type(error).__name__}: {error}") from None
    except ValueError as error:
        raise _Permanent(f"bad URL: {error}") from None


def _image_extension(data: bytes) -> str:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
            fmt = image.format
    except Exception as error:  # noqa: BLE001
        raise _Permanent(f"not an image: {type(error).__name__}") from None
    return _FORMAT_EXT.get(fmt or "", ".jpg")  # Pillow reads by content, so the extension is only a hint


def _save(out_dir: Path, stem: str, data: bytes, ext: str, existing: Path | None) -> Path:
    target = out_dir / f"{stem}{ext}"
    if existing is not None and existing != target:  # unreadable (why it is downloaded again), other extension:
        existing.unlink(missing_ok=True)  # two files for one stem would be ambiguous
    atomic_write(target, lambda handle: handle.write(data))
    return target


def _download_one(opener, out_dir, item_id, url, existing, retries, timeout, backoff, max_bytes, counter):
    last = "unknown"
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        counter()
        try:
            data = _fetch(opener, url, timeout, max_bytes)
            if not data:
                raise _Transient("empty body")
            _save(out_dir, image_stem(item_id), data, _image_extension(data), existing)
            return None
        except _Permanent as error:
            return str(error)
        except _Transient as error:
            last = str(error)
    return last


def download_images(entries, out_dir, workers: int = 8, retries: int = 3, timeout: float = 10.0,
                    backoff: float = 0.5, max_bytes: int = 20 * 2**20, proxies: dict | None = None,
                    progress: bool = False) -> DownloadReport:
    """Download ``[(original_id, url)]`` into ``out_dir``; see the module docstring.

    ``proxies=None`` uses the environment's proxy settings; ``{}`` connects directly.
    """
    if workers < 1 or retries < 0 or timeout <= 0:
        raise ImageListError(f"--workers {workers} / --retries {retries} / --timeout {timeout}: "
                             "need workers >= 1, retries >= 0, timeout > 0.")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ImageListError(f"{out_dir}: exists and is not a folder. Choose another -o.")
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob(f"{TEMP_PREFIX}*"):  # temp files of a killed run
        stale.unlink(missing_ok=True)
    present = find_images(out_dir)
    report = DownloadReport()
    todo = []
    for item_id, url in entries:
        existing = present.get(image_stem(item_id))
        if existing is not None and is_readable_image(existing):
            report.skipped += 1
        else:
            todo.append((item_id, url, existing))

    lock = threading.Lock()

    def count_attempt():
        with lock:
            report.attempts += 1

    opener = urllib.request.build_opener(urllib.request.ProxyHandler(proxies))
    from tqdm import tqdm

    bar = tqdm(total=len(todo), desc="images", unit="img", disable=not progress, file=sys.stderr, leave=False)
    pending: dict = {}
    queue = iter(todo)
    executor = ThreadPoolExecutor(max_workers=workers)
    try:
        while True:
            while len(pending) < 4 * workers:
                job = next(queue, None)
                if job is None:
                    break
                item_id, url, existing = job
                future = executor.submit(_download_one, opener, out_dir, item_id, url, existing, retries, timeout,
                                         backoff, max_bytes, count_attempt)
                pending[future] = (item_id, url)
            if not pending:
                break
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                item_id, url = pending.pop(future)
                error = future.result()
                if error is None:
                    report.downloaded += 1
                else:
                    report.failed[item_id] = (url, error)
                bar.update(1)
                bar.set_postfix(ok=report.downloaded, failed=len(report.failed), refresh=False)
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
        bar.close()
    _write_failures(out_dir, report)
    return report


def _write_failures(out_dir: Path, report: DownloadReport) -> None:
    path = out_dir / FAILURES_FILE
    if not report.failed:
        path.unlink(missing_ok=True)
        return
    lines = "".join(f"{item_id}\t{url}\t{' '.join(reason.split())}\n"
                    for item_id, (url, reason) in sorted(report.failed.items()))
    atomic_write(path, lambda handle: handle.write(lines.encode("utf-8")))


PROG = "python -m missrec_recbole.tools.images"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = "Download item images listed in NAME.images (original_id<TAB>url)."
    parser.add_argument("--urls", required=True, help="URL list, e.g. dataset/Office/Office.images")
    parser.add_argument("-o", "--out", required=True, help="image folder, e.g. dataset/Office/images/")
    parser.add_argument("--workers", type=int, default=8, help="parallel downloads (default 8)")
    parser.add_argument("--retries", type=int, default=3, help="retries after a transient failure (default 3)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per attempt (default 10)")
    parser.add_argument("--backoff", type=float, default=0.5, help="first retry delay in seconds, doubled each time")
    parser.add_argument("--max_mb", type=float, default=20.0, help="largest accepted image in MiB (default 20)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def main(argv=None, parser=None) -> int:
    args = command_parser(add_arguments, parser, PROG).parse_args(argv)
    try:
        entries = read_url_list(args.urls)
        report = download_images(entries, args.out, args.workers, args.retries, args.timeout, args.backoff,
                                 int(args.max_mb * 2**20), progress=not args.quiet)
    except ImageListError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(report.summary())
    if report.failed:
        print(f"failures listed in {Path(args.out) / FAILURES_FILE}; rerun the same command to retry them "
              "(items without an image get an all-zero image feature)")
    if report.failed and not report.downloaded and not report.skipped:
        print(f"error: all {len(report.failed)} downloads failed; check the network / proxy settings "
              f"(first failure: {next(iter(report.failed.values()))[1]})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main))
