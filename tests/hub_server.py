"""A tiny HTTP server on 127.0.0.1 that speaks the Hugging Face Hub download protocol.

It serves one folder as ``{repo_id}`` at any revision: ``HEAD``/``GET
/{repo_id}/resolve/{revision}/{filename}`` with the headers huggingface_hub needs
(``X-Repo-Commit``, ``ETag``, ``Content-Length``), and a 404 with
``X-Error-Code: EntryNotFound`` for missing files. ``requests`` records every path.
"""

from __future__ import annotations

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class HubServer:
    def __init__(self, repo_id: str, folder: Path):
        self.repo_id, self.folder = repo_id, Path(folder)
        self.requests: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _resolve(self) -> Path | None:
                path = unquote(self.path.split("?")[0])
                prefix = f"/{server.repo_id}/resolve/"
                if not path.startswith(prefix):
                    return None
                _, _, filename = path[len(prefix) :].partition("/")
                target = (server.folder / filename).resolve()
                return target if target.is_file() and server.folder.resolve() in target.parents else None

            def _headers(self, target: Path | None) -> bytes:
                server.requests.append(f"{self.command} {self.path}")
                if target is None:
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.send_header("X-Repo-Commit", COMMIT)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return b""
                body = target.read_bytes()
                self.send_response(200)
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", f'"{hashlib.sha256(body).hexdigest()}"')
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Content-Type", "application/octet-stream")
                self.end_headers()
                return body

            def do_HEAD(self):
                self._headers(self._resolve())

            def do_GET(self):
                body = self._headers(self._resolve())
                if body:
                    self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> HubServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
