"""What the web app needs around Gradio to keep patient data private and the disk bounded."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

UPLOAD_MARKER = b'filename="'  # starts each file's part in a multipart body


def private_folder(name: str) -> Path:
    """``<temp>/<name>-<uid>``, created readable by this user only (0700), and so made again
    if it was someone else's or open to others."""
    owner = os.getuid() if hasattr(os, "getuid") else os.getpid()
    folder = Path(tempfile.gettempdir()) / f"{name}-{owner}"
    folder.mkdir(mode=0o700, exist_ok=True)
    if folder.is_symlink() or folder.stat().st_uid != owner:
        raise RuntimeError(f"{folder} is not this user's own folder: remove it or set GRADIO_TEMP_DIR")
    folder.chmod(0o700)
    return folder


def private_gradio_temp() -> Path:
    """Gradio's temp folder (``GRADIO_TEMP_DIR``, read when gradio is imported: call this
    first), where it keeps uploads and every output file, the PDF report with the patient's
    name included: this user's own (0700), a private one of ours unless set."""
    if not os.environ.get("GRADIO_TEMP_DIR"):
        os.environ["GRADIO_TEMP_DIR"] = str(private_folder("boneage-gradio"))
    folder = Path(os.environ["GRADIO_TEMP_DIR"])
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    folder.chmod(0o700)
    return folder


class UploadRefused(Exception):
    pass


class UploadLimits:
    """ASGI middleware: a request to an ``/upload`` route carries at most ``max_files`` files
    and ``max_bytes`` bytes, counted as the body streams in (413 past either), so that no one
    who reaches the port can fill the disk with one request."""

    def __init__(self, app, max_bytes: int, max_files: int = 1):
        self.app, self.max_bytes, self.max_files = app, max_bytes, max_files

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST" or not scope["path"].endswith("/upload"):
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length", b"0")
        if length.isdigit() and int(length) > self.max_bytes:
            return await self._refuse(send, f"An upload may hold at most {self.max_bytes} bytes.")
        seen, files, tail, started = 0, 0, b"", False

        async def counted():
            nonlocal seen, files, tail
            message = await receive()
            body = message.get("body", b"")
            seen += len(body)
            window = tail + body
            files += window.count(UPLOAD_MARKER)
            tail = window[-(len(UPLOAD_MARKER) - 1) :]
            if seen > self.max_bytes:
                raise UploadRefused(f"An upload may hold at most {self.max_bytes} bytes.")
            if files > self.max_files:
                raise UploadRefused(f"An upload may hold at most {self.max_files} file(s).")
            return message

        async def watched(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except UploadRefused as refusal:
            if not started:
                await self._refuse(send, str(refusal))

    @staticmethod
    async def _refuse(send, text: str) -> None:
        body = text.encode()
        headers = [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(body)).encode()),
        ]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})
