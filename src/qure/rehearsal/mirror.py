"""A loopback HTTP mirror: a folder served on 127.0.0.1 (any free port) with Range support.

The offline rehearsal and the tests point ``data.real.base_url`` / ``--base-url`` at it::

    with LoopbackMirror(folder) as mirror:
        download(mirror.url("fashioniq/captions/cap.dress.val.json"), dest)

It is bounded: it serves only files inside ``root`` (no listings, no ``..``), keeps the
last ``max_log`` requests, and shuts itself down after ``lifetime`` seconds even if the
``with`` block never ends (a hung caller cannot leave it running). ``faults`` injects
one-shot failures per path for tests: ``"404"``, ``"500"``, ``"drop:N"`` (send N bytes,
then close), ``"corrupt"`` (flip one byte), ``"ignore-range"`` (answer 200 to a Range).
"""

from __future__ import annotations

import logging
import socket
import sys
import threading
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

log = logging.getLogger(__name__)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        # A client that gives up early (a size mismatch, a test's fault) is expected.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class LoopbackMirror:
    """Serve ``root`` on ``http://127.0.0.1:<port>`` while the context is open."""

    def __init__(self, root: str | Path, *, lifetime: float = 3600.0, max_log: int = 100_000):
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root}: no folder to serve")
        self.lifetime = float(lifetime)
        self.requests: deque[dict] = deque(maxlen=max_log)
        self.faults: dict[str, list[str]] = {}
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self._closed = threading.Event()
        self.server = _Server(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,),
                                       name="qure-loopback-mirror", daemon=True)

    # --- the handler ----------------------------------------------------------------------

    def _file(self, rel: str) -> Path | None:
        path = (self.root / rel).resolve()
        if path != self.root and self.root not in path.parents:
            return None
        return path if path.is_file() else None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        mirror = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # the request log is mirror.requests
                pass

            def do_GET(self):
                rel = unquote(urlsplit(self.path).path).lstrip("/")
                wanted = self.headers.get("Range")
                with mirror._lock:
                    mirror.requests.append({"path": rel, "range": wanted})
                    queue = mirror.faults.get(rel) or []
                    fault = queue.pop(0) if queue else None
                if fault in ("404", "500"):
                    self.send_error(int(fault))
                    return
                file = mirror._file(rel)
                if file is None:
                    self.send_error(404)
                    return
                data = file.read_bytes()
                if fault == "corrupt" and data:
                    middle = len(data) // 2
                    data = data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1:]
                start = 0
                if wanted and fault != "ignore-range" and wanted.startswith("bytes="):
                    try:
                        start = int(wanted.removeprefix("bytes=").split("-")[0])
                    except ValueError:
                        start = 0
                if start:
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range",
                                     f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if fault and fault.startswith("drop:"):
                    self.wfile.write(body[: int(fault.split(":")[1])])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(body)

        return Handler

    # --- addresses and the request log -------------------------------------------------------

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, rel: str) -> str:
        return f"{self.base}/{quote(rel)}"

    def gets(self, rel: str) -> list[dict]:
        with self._lock:
            return [r for r in self.requests if r["path"] == rel]

    def paths(self) -> list[str]:
        with self._lock:
            return [r["path"] for r in self.requests]

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> LoopbackMirror:
        self.thread.start()
        self._timer = threading.Timer(self.lifetime, self._expire)
        self._timer.daemon = True
        self._timer.start()
        log.info("serving %s at %s (for at most %.0f s)", self.root, self.base, self.lifetime)
        return self

    def _expire(self) -> None:
        log.warning("loopback mirror %s: lifetime of %.0f s reached; shutting down", self.base,
                    self.lifetime)
        self.stop()

    def stop(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        if self._timer is not None:
            self._timer.cancel()
        if self.thread.is_alive():
            self.server.shutdown()
        self.server.server_close()

    @property
    def running(self) -> bool:
        return self.thread.is_alive() and not self._closed.is_set()

    def __enter__(self) -> LoopbackMirror:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
