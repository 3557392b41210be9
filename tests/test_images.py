"""Image download helper against a local HTTP server on 127.0.0.1 (nothing else is contacted)."""

from __future__ import annotations

import io
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from missrec_recbole.tools.images import (FAILURES_FILE, ImageListError, download_images, find_images, image_stem,
                                          main, read_url_list)


def image_bytes(seed: int, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (12, 9), (seed * 40 % 256, 90, 200 - seed)).save(buffer, format=fmt)
    return buffer.getvalue()


class Server:
    """Routes: /png/N, /jpg/N (images), /missing/* (404), /flaky/N (503 once), /slow/N (answers late
    while ``slow`` is set), /html (not an image)."""

    def __init__(self):
        self.requests = Counter()
        self.slow = threading.Event()
        self.slow.set()
        self.release = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                server.requests[self.path] += 1
                kind, _, arg = self.path.strip("/").partition("/")
                if kind in ("png", "jpg") or (kind == "flaky" and server.requests[self.path] > 1):
                    self._send(200, image_bytes(int(arg), "JPEG" if kind == "jpg" else "PNG"), f"image/{kind}")
                elif kind == "flaky":
                    self._send(503, b"busy", "text/plain")
                elif kind == "slow":
                    if server.slow.is_set():
                        server.release.wait(3)
                    self._send(200, image_bytes(int(arg)), "image/png")
                elif kind == "html":
                    self._send(200, b"<html>no image here</html>", "text/html")
                else:
                    self._send(404, b"not found", "text/plain")

            def _send(self, code, body, ctype):
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", ctype)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:  # the client gave up (timeout test)
                    pass

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(monkeypatch):
    for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "*")
    with Server() as running:
        yield running


def test_download_retries_timeouts_and_resume(server, tmp_path):
    s = server.url
    entries = [("B01", f"{s}/png/1"), ("B02", f"{s}/jpg/2"), ("B03", f"{s}/flaky/3"), ("B04", f"{s}/missing/4"),
               ("B05", f"{s}/slow/5"), ("B06", f"{s}/html"), ("id with/slash", f"{s}/png/7")]
    out = tmp_path / "images"
    out.mkdir()
    (out / ".tmp-B01.png-killed").write_bytes(b"\x89PNG half")  # left by a killed run
    report = download_images(entries, out, workers=3, retries=2, timeout=0.4, backoff=0.0, proxies={})
    assert report.downloaded == 4 and report.skipped == 0
    assert {k: v[1].split(":")[0] for k, v in report.failed.items()} == {
        "B04": "HTTP 404", "B05": "timeout", "B06": "not an image"}
    files = find_images(out)
    assert files["B01"].name == "B01.png" and files["B02"].name == "B02.jpg"
    assert files["B01"].read_bytes() == image_bytes(1) and files["B03"].read_bytes() == image_bytes(3)
    assert files[image_stem("id with/slash")].name == "id%20with%2Fslash.png"
    assert server.requests["/flaky/3"] == 2  # retried after 503
    assert server.requests["/missing/4"] == 1  # 404 is not retried
    assert server.requests["/slow/5"] == 3  # timed out: first attempt + 2 retries
    assert not list(out.glob(".tmp-*"))  # no partial files, the killed run's one removed
    failures = (out / FAILURES_FILE).read_text().splitlines()
    assert [line.split("\t")[0] for line in failures] == ["B04", "B05", "B06"]

    # rerun: present files are skipped, a corrupt one is fetched again, failures are retried
    files["B02"].write_bytes(b"\xff\xd8 truncated jpeg")
    server.slow.clear()
    before = server.requests.copy()
    report = download_images(entries, out, workers=2, retries=1, timeout=2, backoff=0.0, proxies={})
    assert report.skipped == 4 - 1 and report.downloaded == 2 and set(report.failed) == {"B04", "B06"}
    assert server.requests["/png/1"] == before["/png/1"] and server.requests["/jpg/2"] == before["/jpg/2"] + 1
    assert find_images(out)["B02"].read_bytes() == image_bytes(2, "JPEG")


def test_cli_reads_url_list(server, tmp_path, capsys):
    urls = tmp_path / "X.images"
    urls.write_text(f"A1\t{server.url}/png/1\nA2\t{server.url}/missing\n\nA1\t{server.url}/png/9\n")
    assert read_url_list(urls) == [("A1", f"{server.url}/png/1"), ("A2", f"{server.url}/missing")]
    out = tmp_path / "img"
    assert main(["--urls", str(urls), "-o", str(out), "--workers", "2", "--timeout", "5", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "downloaded 1, already present 0, failed 1 (HTTP 404: 1)" in printed and FAILURES_FILE in printed
    assert sorted(p.name for p in out.iterdir()) == ["A1.png", FAILURES_FILE]
    urls.write_text(f"A2\t{server.url}/missing\n")
    assert main(["--urls", str(urls), "-o", str(tmp_path / "none"), "--quiet"]) == 1
    assert "all 1 downloads failed" in capsys.readouterr().err


@pytest.mark.parametrize("content, problem", [("A1 http://x/y.jpg\n", "line 1 is not"),
                                              ("A1\tfile:///etc/passwd\n", "not an http"),
                                              ("A1\thttp://x\textra\n", "line 1 is not")])
def test_bad_url_list(tmp_path, content, problem, capsys):
    urls = tmp_path / "bad.images"
    urls.write_text(content)
    with pytest.raises(ImageListError, match=problem):
        read_url_list(urls)
    assert main(["--urls", str(urls), "-o", str(tmp_path / "o")]) == 1
    assert "bad.images: line 1" in capsys.readouterr().err and not (tmp_path / "o").exists()
