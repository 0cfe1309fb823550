"""How much a reading moves when the same radiograph comes from another detector or export.

    python benchmarks/robustness.py [--n 200] [--weights weights]

Each val radiograph is read as stored and after one fixed degradation at a time, applied
to the decoded 8-bit image: Gaussian noise (sigma in grey levels), JPEG re-compression,
Gaussian blur, a gamma curve, a wider field of view (the hand shrunk to 80 % or 65 % of
the frame, as on a larger film) and a tighter one (the centre 90 %). Prints one JSON
line: per degradation, val MAE, the mean, 90th percentile and maximum absolute shift
(months) from the clean reading, and the mean signed shift (positive: reads older).
Images the quality gate rejects (clean or degraded) are left out of that degradation's
figures.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from boneage_infer import data, preprocessing  # noqa: E402
from boneage_infer.predictor import BoneAgePredictor  # noqa: E402
from boneage_infer.train import reframe  # noqa: E402


def _png(pixels: np.ndarray) -> bytes:
    return cv2.imencode(".png", np.clip(np.round(pixels), 0, 255).astype(np.uint8))[1].tobytes()


def _jpeg(pixels: np.ndarray, quality: int) -> np.ndarray:
    return cv2.imdecode(cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, quality])[1], 0)


def degradations(pixels: np.ndarray, rng: np.random.Generator) -> dict[str, bytes]:
    """The clean radiograph and its fixed degradations, as PNG bytes."""
    grey = pixels.astype(np.float64)
    return {
        "clean": _png(grey),
        "noise_sigma1": _png(grey + rng.normal(0, 1, grey.shape)),
        "noise_sigma2": _png(grey + rng.normal(0, 2, grey.shape)),
        "noise_sigma4": _png(grey + rng.normal(0, 4, grey.shape)),
        "jpeg_q80": _png(_jpeg(pixels, 80)),
        "jpeg_q50": _png(_jpeg(pixels, 50)),
        "blur_sigma1": _png(cv2.GaussianBlur(grey, (0, 0), 1.0)),
        "gamma_0.8": _png(255 * (grey / 255) ** 0.8),
        "gamma_1.25": _png(255 * (grey / 255) ** 1.25),
        "frame_0.8": _png(reframe(pixels, 0.8)),
        "frame_0.65": _png(reframe(pixels, 0.65)),
        "frame_1.1": _png(reframe(pixels, 1.1)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=200, help="radiographs from the start of the val split")
    parser.add_argument("--weights", default=None, help="weights folder (default: as the app resolves it)")
    args = parser.parse_args()
    root = data.data_dir()
    if root is None:
        sys.exit("The RSNA data are needed (BONEAGE_DATA_DIR or ../shared/data/rsna-boneage).")
    cases = data.load_split(root, "val")
    predictor = BoneAgePredictor(args.weights)
    rng = np.random.default_rng(0)
    months: dict[str, list[float]] = {}
    reference: dict[str, list[float]] = {}
    grainy: dict[str, int] = {}  # accepted readings that carry the grainy-image warning
    for path, truth, male in zip(cases.paths[: args.n], cases.bone_age_months, cases.male):
        variants = degradations(preprocessing.read_radiograph(path).pixels, rng)
        sex = "M" if male else "F"
        readings = predictor.predict_batch(list(variants.values()), [sex] * len(variants))
        clean = readings[0]
        if isinstance(clean, Exception):
            continue
        for name, reading in zip(variants, readings):
            if isinstance(reading, Exception):
                continue
            months.setdefault(name, []).append(reading.bone_age_months)
            months.setdefault(f"{name}:clean", []).append(clean.bone_age_months)
            reference.setdefault(name, []).append(float(truth))
            grainy[name] = grainy.get(name, 0) + any(w.startswith("Grainy") for w in reading.warnings)
    result: dict = {"model_version": predictor.model_version, "n": len(months["clean"])}
    for name in reference:
        read, clean, truth = (np.array(x) for x in (months[name], months[f"{name}:clean"], reference[name]))
        shift = np.abs(read - clean)
        result[name] = {
            "n": len(read),
            "mae": round(float(np.mean(np.abs(read - truth))), 2),
            "shift_mean": round(float(shift.mean()), 2),
            "shift_signed_mean": round(float(np.mean(read - clean)), 2),  # > 0: reads older
            "shift_p90": round(float(np.percentile(shift, 90)), 2),
            "shift_max": round(float(shift.max()), 1),
            "grain_warnings": grainy[name],
        }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
