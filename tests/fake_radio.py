"""A stand-in SIRIUS radio for tests: a JSON-over-HTTP management endpoint on 127.0.0.1.

``FakeRadio(doc)`` serves ``doc`` (any JSON object) at ``GET /state`` and takes
``POST``/``PUT /mcs`` with a JSON body, which it merges into ``doc``. Every
request is recorded in ``calls`` as ``(method, path, body)``. ``delay_s``
stalls each answer (to trip client timeouts), ``status`` forces an HTTP error
code. The command-template fake is ``tests/fake_radioctl.py``.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FakeRadio:
    def __init__(self, doc: dict[str, Any] | None = None, delay_s: float = 0.0, status: int = 200):
        self.doc: dict[str, Any] = {"sinr_db": 20.0, "rsrp_dbm": -70.0, "cqi": 12} if doc is None else doc
        self.calls: list[tuple[str, str, Any]] = []
        self.delay_s = delay_s
        self.status = status
        radio = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                radio.calls.append((method, self.path, body))
                time.sleep(radio.delay_s)
                if radio.status != 200:
                    self.send_error(radio.status)
                    return
                if method == "GET" and self.path == "/state":
                    payload = json.dumps(radio.doc).encode()
                elif method in ("POST", "PUT") and self.path == "/mcs" and isinstance(body, dict):
                    radio.doc.update(body)
                    payload = b"{}"
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self) -> None:
                self._answer("GET")

            def do_POST(self) -> None:
                self._answer("POST")

            def do_PUT(self) -> None:
                self._answer("PUT")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.block_on_close = False
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.01},
                                        name="fake-radio", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> FakeRadio:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
