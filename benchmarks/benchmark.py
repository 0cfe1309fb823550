"""Speed and memory of the bone-age reader; prints one JSON line.

    python benchmarks/benchmark.py [--n 40]

latency_ms: end to end per radiograph (decode + CLAHE + model), p50/p95;
throughput_batch8: radiographs per second through predict_batch(batch_size=8);
app_cold_start_s: ``python app.py`` started to first HTTP 200;
peak_rss_mb: this process (predictor) and the app process.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from boneage_infer import data  # noqa: E402
from boneage_infer.predictor import BoneAgePredictor  # noqa: E402


def app_cold_start() -> tuple[float, float]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "GRADIO_ANALYTICS_ENABLED": "False"}
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "app.py"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
                break
            except OSError:
                if process.poll() is not None or time.perf_counter() - started > 300:
                    raise RuntimeError("app.py did not start") from None
                time.sleep(0.2)
        ready = time.perf_counter() - started
        status = Path(f"/proc/{process.pid}/status").read_text()
        rss_mb = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM"))) / 1024
        return ready, rss_mb
    finally:
        process.terminate()
        process.wait()


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
