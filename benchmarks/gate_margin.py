"""How far the quality gate's limit lies from the non-hand images and from the val hands.

    python benchmarks/gate_margin.py [--weights weights] [--val-n 1259]

A release check for a new model: the novelty gate is refitted with every model (`calibrate`),
so its scale moves, and a model that reads hands better can accept a photograph. Reads the
non-hand images of `tests/nonhand.py` (those that pass the pixel checks reach the network)
and the first N val radiographs, and prints one JSON line: the lowest novelty scores of
non-hand images (limit 1: above is rejected), how many non-hand images are accepted, and the
highest val scores. Release only when the lowest non-hand score stays clearly above 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from nonhand import non_hand_images  # noqa: E402

from boneage_infer import data  # noqa: E402
from boneage_infer.predictor import BoneAgePredictor  # noqa: E402
from boneage_infer.preprocessing import ImageError  # noqa: E402


def novelty_scores(predictor: BoneAgePredictor, images: list, male: list[bool]) -> np.ndarray:
    """Novelty score of each image the pixel checks let through (NaN for the others)."""
    scores = np.full(len(images), np.nan)
    for i, (image, is_male) in enumerate(zip(images, male)):
        try:
            prepared = predictor.prepare(image)
        except ImageError:
            continue
        scores[i] = predictor.novelty.score(predictor.features(prepared.model_input[None], [is_male]))[0]
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--weights", type=Path, default=None, help="weights folder (default: the bundled)")
    parser.add_argument("--val-n", type=int, default=1259, help="val radiographs to score")
    args = parser.parse_args()

    predictor = BoneAgePredictor(args.weights)
    others = non_hand_images()
    other_scores = novelty_scores(predictor, list(others.values()), [False] * len(others))
    reached = {name: float(s) for name, s in zip(others, other_scores) if not np.isnan(s)}
    lowest = dict(sorted(reached.items(), key=lambda item: item[1])[:5])

    cases = data.load_split(data.data_dir(), "val")
    cases = cases.subset(np.arange(len(cases)) < args.val_n)
    val_scores = novelty_scores(predictor, cases.paths, list(cases.male))
    highest = np.argsort(np.nan_to_num(val_scores, nan=-1.0))[::-1][:5]
    print(
        json.dumps(
            {
                "model_version": predictor.model_version,
                "non_hand_images": len(others),
                "non_hand_reaching_the_network": len(reached),
                "non_hand_accepted": sorted(name for name, s in reached.items() if s <= 1),
                "lowest_non_hand_scores": {name: round(s, 3) for name, s in lowest.items()},
                "val_n": len(cases),
                "val_rejected": int(np.sum(~(val_scores <= 1))),
                "highest_val_scores": {str(cases.ids[i]): round(float(val_scores[i]), 3) for i in highest},
            }
        )
    )


if __name__ == "__main__":
    main()
