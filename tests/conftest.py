"""Shared fixtures: the real RSNA radiographs, the predictor, a running app."""

from __future__ import annotations

import contextlib
import csv
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("BONEAGE_DATA_DIR") or ROOT.parent / "shared" / "data" / "rsna-boneage")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def pytest_configure(config):
    if not (DATA / "labels.csv").is_file():
        raise pytest.UsageError(f"The RSNA data are needed at {DATA} (or set BONEAGE_DATA_DIR).")


def _val_rows() -> list[dict]:
    labels = {r["id"]: r for r in csv.DictReader(open(DATA / "labels.csv", newline=""))}
    split = csv.DictReader(open(DATA / "splits.csv", newline=""))
    return [labels[r["id"]] for r in split if r["split"] == "val"]


@pytest.fixture(scope="session")
def val_cases() -> list[dict]:
    """The val split rows (id, boneage, male) in file order."""
    return _val_rows()


@pytest.fixture(scope="session")
def radiograph(val_cases) -> Path:
    """One real radiograph from the val split."""
    return DATA / "images" / f"{val_cases[1]['id']}.jpg"


@pytest.fixture(scope="session")
def radiographs(val_cases) -> list[Path]:
    return [DATA / "images" / f"{row['id']}.jpg" for row in val_cases[1:7]]


@pytest.fixture(scope="session")
def predictor():
    from boneage_infer.predictor import BoneAgePredictor

    return BoneAgePredictor()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_cli(*args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run ``python -m boneage_infer ARGS`` in a fresh process."""
    return subprocess.run(
        [sys.executable, "-m", "boneage_infer", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture(scope="session")
def app_tmpdir(tmp_path_factory) -> Path:
    """The running app's TMPDIR (its PDF reports and Gradio's cache live there)."""
    return tmp_path_factory.mktemp("app-tmp")


@contextlib.contextmanager
def running_app(cwd: Path, log: Path, env: dict[str, str | None]) -> Iterator[str]:
    """``python app.py`` started in ``cwd`` on a free port; yields its URL, stops it after.

    ``env`` adds to the environment; a None value removes that variable."""
    port = free_port()
    env = {**os.environ, **env, "GRADIO_SERVER_PORT": str(port), "GRADIO_ANALYTICS_ENABLED": "False"}
    env = {key: value for key, value in env.items() if value is not None}
    with open(log, "w") as handle:
        process = subprocess.Popen([sys.executable, "app.py"], cwd=cwd, env=env, stdout=handle, stderr=handle)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 180
    try:
        while time.time() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"app.py exited: {log.read_text()[-3000:]}")
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        else:
            raise RuntimeError(f"app.py did not start: {log.read_text()[-3000:]}")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=20)


@pytest.fixture(scope="session")
def app_url(tmp_path_factory, app_tmpdir):
    """``python app.py`` running on a free port; yields its URL."""
    log = tmp_path_factory.mktemp("app") / "app.log"
    with running_app(ROOT, log, {"TMPDIR": str(app_tmpdir), "BONEAGE_MAX_UPLOAD_MB": "2"}) as url:
        yield url
