"""The app under load: concurrent gradio_client clients on 127.0.0.1; prints one JSON line per
queue concurrency tried.

    python benchmarks/load.py [--clients 20] [--readings 25] [--concurrency 1,2,4]

Each setting starts ``python app.py`` with BONEAGE_CONCURRENCY set, then every client reads
the same radiograph ``--readings`` times (bounded in count and by ``--timeout`` seconds; it stops
by itself). errors must be 0; p50/p95 are seconds per request; throughput is readings per second.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from benchmark import cpu, peak_rss_mb, started_app  # noqa: E402

from boneage_infer import data  # noqa: E402


def run_load(url: str, radiograph: Path, clients: int, readings: int, timeout: float = 1800) -> dict:
    """``clients`` gradio_client clients, each asking ``readings`` readings in turn."""
    from gradio_client import Client, handle_file

    deadline = time.monotonic() + timeout

    def one_client(_: int) -> tuple[list[float], list[str]]:
        client = Client(url, verbose=False)
        seconds, errors = [], []
        for _ in range(readings):
            if time.monotonic() > deadline:
                errors.append("timed out")
                continue
            started = time.perf_counter()
            try:
                details = client.predict(
                    handle_file(str(radiograph)), "F", "120", "", "", "", api_name="/predict"
                )[8]
                if not details["bone_age_months"] > 0:
                    errors.append(f"no bone age: {details}")
            except Exception as exc:  # noqa: BLE001 - every failure counts, whatever it is
                errors.append(str(exc)[:200])
            seconds.append(time.perf_counter() - started)
        return seconds, errors

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(one_client, range(clients)))
    elapsed = time.perf_counter() - started
    seconds = [s for r in results for s in r[0]]
    errors = [e for r in results for e in r[1]]
    return {
        "clients": clients,
        "readings_per_client": readings,
        "requests": len(seconds),
        "errors": len(errors),
        "first_errors": errors[:3],
        "p50_s": round(float(np.percentile(seconds, 50)), 2),
        "p95_s": round(float(np.percentile(seconds, 95)), 2),
        "throughput_per_s": round(len(seconds) / elapsed, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--readings", type=int, default=25, help="readings per client")
    parser.add_argument("--concurrency", default="1,2,4", help="queue concurrency limits to try")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds for one setting at most")
    args = parser.parse_args()
    root = data.data_dir()
    if root is None:
        sys.exit("The RSNA data are needed (BONEAGE_DATA_DIR or ../shared/data/rsna-boneage).")
    radiograph = data.load_split(root, "val").paths[1]
    for limit in args.concurrency.split(","):
        with started_app({"BONEAGE_CONCURRENCY": limit}) as (url, process, _):
            result = run_load(url, radiograph, args.clients, args.readings, args.timeout)
            result |= {"concurrency": int(limit), "app_peak_rss_mb": round(peak_rss_mb(process.pid)), **cpu()}
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
