"""Speed and memory of the bone-age reader; prints one JSON line.

    python benchmarks/benchmark.py [--n 40]

latency_ms: end to end per radiograph (decode + CLAHE + model), p50/p95;
throughput_batch8: radiographs per second through predict_batch(batch_size=8);
app_cold_start_s: ``python app.py`` started to first HTTP 200;
peak_rss_mb: this process (predictor) and the app process.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from boneage_infer import data  # noqa: E402
from boneage_infer.predictor import BoneAgePredictor  # noqa: E402


def cpu() -> dict:
    """The processor's model and the flags that decide CPU inference speed (print with every figure)."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    model = next(
        (line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), ""
    )
    flags = set(
        next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    )
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_int8", "avx512_vnni", "avx_vnni")
    return {"cpu": model, "cpu_flags": [f for f in wanted if f in flags], "cores": os.cpu_count()}


def peak_rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM"))) / 1024


@contextlib.contextmanager
def started_app(env: dict[str, str] | None = None) -> Iterator[tuple[str, subprocess.Popen, float]]:
    """``python app.py`` on a free port: (url, process, seconds until the first HTTP 200)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, **(env or {}), "GRADIO_SERVER_PORT": str(port), "GRADIO_ANALYTICS_ENABLED": "False"}
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "app.py"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        while True:
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                if process.poll() is not None or time.perf_counter() - started > 300:
                    raise RuntimeError("app.py did not start") from None
                time.sleep(0.2)
        yield url, process, time.perf_counter() - started
    finally:
        process.terminate()
        process.wait()


def app_cold_start() -> tuple[float, float]:
    with started_app() as (_, process, ready):
        return ready, peak_rss_mb(process.pid)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=40, help="radiographs from the val split")
    args = parser.parse_args()
    root = data.data_dir()
    if root is None:
        sys.exit("The RSNA data are needed (BONEAGE_DATA_DIR or ../shared/data/rsna-boneage).")
    cases = data.load_split(root, "val")
    predictor = BoneAgePredictor()
    # warm-up (traces the batch-8 graph) and keep the radiographs the quality gate accepts
    candidates = cases.paths[: args.n + 8]
    readings = predictor.predict_batch(candidates, ["F"] * len(candidates), batch_size=8)
    paths = [p for p, r in zip(candidates, readings) if not isinstance(r, Exception)][: args.n]
    predictor.predict(paths[0], "F")  # traces the batch-1 graph
    latencies = []
    for path in paths:
        started = time.perf_counter()
        predictor.predict(path, "F")
        latencies.append((time.perf_counter() - started) * 1000)
    started = time.perf_counter()
    predictor.predict_batch(paths, ["F"] * len(paths), batch_size=8)
    throughput = len(paths) / (time.perf_counter() - started)
    cold_start, app_rss = app_cold_start()
    result = {
        **cpu(),
        "n": len(paths),
        "model_version": predictor.model_version,
        "device": predictor.device,
        "latency_ms_p50": round(float(np.percentile(latencies, 50)), 1),
        "latency_ms_p95": round(float(np.percentile(latencies, 95)), 1),
        "throughput_batch8_per_s": round(throughput, 1),
        "app_cold_start_s": round(cold_start, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "app_peak_rss_mb": round(app_rss),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
