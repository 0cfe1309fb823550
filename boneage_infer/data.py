"""Labelled radiograph sets: the RSNA layout (images/<id>.jpg, labels.csv, splits.csv)."""

from __future__ import annotations

import csv
import hashlib
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from .preprocessing import PREPROCESSING_VERSION, canonical, enhance, read_radiograph

DEFAULT_DATA_DIR = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "rsna-boneage"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm")


def data_dir() -> Path | None:
    """``BONEAGE_DATA_DIR`` or ../shared/data/rsna-boneage beside the checkout, if it exists."""
    path = Path(os.environ.get("BONEAGE_DATA_DIR") or DEFAULT_DATA_DIR)
    return path if path.is_dir() else None


def parse_male(row: dict) -> bool:
    """Sex from a CSV row: column ``male`` (True/False) or ``sex`` (M/F)."""
    if "male" in row and row["male"] not in (None, ""):
        value = row["male"].strip().lower()
        if value in ("true", "1", "yes"):
            return True
        if value in ("false", "0", "no"):
            return False
        raise ValueError(f"Column male must be True/False, got {row['male']!r}")
    if "sex" in row and row["sex"]:
        value = row["sex"].strip().upper()[:1]
        if value in ("M", "F"):
            return value == "M"
        raise ValueError(f"Column sex must be M/F, got {row['sex']!r}")
    raise ValueError("The labels CSV needs a column 'male' (True/False) or 'sex' (M/F).")


@dataclass
class Cases:
    """Labelled cases: ids, image paths, bone ages (months) and sex (True = male)."""

    ids: list[str]
    paths: list[Path]
    bone_age_months: np.ndarray
    male: np.ndarray

    def subset(self, mask: np.ndarray) -> Cases:
        index = np.flatnonzero(mask)
        return Cases(
            [self.ids[i] for i in index],
            [self.paths[i] for i in index],
            self.bone_age_months[index],
            self.male[index],
        )

    def __len__(self) -> int:
        return len(self.ids)


def find_image(images_dir: Path, case_id: str) -> Path | None:
    for suffix in IMAGE_SUFFIXES:
        path = images_dir / f"{case_id}{suffix}"
        if path.is_file():
            return path
    return None


def load_cases(images_dir: Path, labels_csv: Path) -> Cases:
    """Read a labels CSV (id, boneage, male|sex); each id must have an image in ``images_dir``."""
    ids, paths, ages, male = [], [], [], []
    with open(labels_csv, newline="") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or not {"id", "boneage"} <= set(reader.fieldnames):
            raise ValueError(f"{labels_csv} needs columns id, boneage and male or sex.")
        for row in reader:
            path = find_image(Path(images_dir), row["id"])
            if path is None:
                raise FileNotFoundError(f"No image for id {row['id']} in {images_dir}")
            ids.append(row["id"])
            paths.append(path)
            ages.append(float(row["boneage"]))
            male.append(parse_male(row))
    return Cases(ids, paths, np.array(ages, np.float32), np.array(male, bool))


def only_split(cases: Cases, splits_csv: Path, split: str) -> Cases:
    """The cases whose id has ``split`` (train/val) in a splits CSV (id, split)."""
    with open(splits_csv, newline="") as handle:
        wanted = {row["id"] for row in csv.DictReader(handle) if row["split"] == split}
    return cases.subset(np.array([i in wanted for i in cases.ids]))


def load_split(root: Path, split: str) -> Cases:
    """The ``train`` or ``val`` cases of the RSNA set at ``root``."""
    return only_split(load_cases(root / "images", root / "labels.csv"), root / "splits.csv", split)


def _canonical_file(path: Path) -> np.ndarray:
    return canonical(read_radiograph(path).pixels)


def _enhance_file(path: Path, hand_crop: bool = False) -> np.ndarray:
    return enhance(read_radiograph(path).pixels, hand_crop)


def _decoded(kind: str, decode, cases: Cases, cache_dir: Path | None) -> np.ndarray:
    """``decode`` every case in parallel (uint8, N x 299 x 299), cached on disk when asked
    (keyed by the preprocessing version, ``kind`` and the files' paths)."""
    cache = None
    if cache_dir is not None:
        paths = " ".join(str(Path(p).resolve()) for p in cases.paths)
        recipe = f"{PREPROCESSING_VERSION} {kind} {paths}"
        key = hashlib.sha256(recipe.encode()).hexdigest()[:16]
        cache = Path(cache_dir) / f"{kind}_{key}.npy"
        if cache.is_file():
            return np.load(cache)
    with ProcessPoolExecutor(max_workers=os.cpu_count()) as pool:
        images = np.stack(list(pool.map(decode, cases.paths, chunksize=64)))
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.save(cache, images)
    return images


def canonical_images(cases: Cases, cache_dir: Path | None = None) -> np.ndarray:
    """Decoded radiographs at the canonical size, before CLAHE (for training augmentation)."""
    return _decoded("canonical", _canonical_file, cases, cache_dir)


def enhanced_images(cases: Cases, cache_dir: Path | None = None, hand_crop: bool = False) -> np.ndarray:
    """Decoded, cropped to the hand if ``hand_crop``, and CLAHE-enhanced radiographs, exactly
    as the model sees them."""
    kind = "enhanced_hand" if hand_crop else "enhanced"
    return _decoded(kind, partial(_enhance_file, hand_crop=hand_crop), cases, cache_dir)


EXAMPLES_CSV = Path(__file__).resolve().parent.parent / "examples" / "cases.csv"


@dataclass
class ExampleCase:
    path: Path
    sex: str
    chronological_age_months: float
    reference_bone_age_months: float
    shows: str


def _example_image(case_id: str) -> Path | None:
    root = data_dir()
    if root is not None:
        found = find_image(root / "images", case_id)
        if found:
            return found
    repo_id = os.environ.get("BONEAGE_HF_REPO")
    if repo_id:
        from huggingface_hub import hf_hub_download

        try:
            return Path(
                hf_hub_download(
                    repo_id, f"examples/{case_id}.jpg", revision=os.environ.get("BONEAGE_HF_REVISION") or None
                )
            )
        except Exception:  # no example images on the Hub: the panel is simply hidden
            return None
    return None


def example_cases() -> list[ExampleCase]:
    """The example cases whose images can be found (data folder, then Hub repo)."""
    cases = []
    with open(EXAMPLES_CSV, newline="") as handle:
        for row in csv.DictReader(handle):
            path = _example_image(row["id"])
            if path is not None:
                cases.append(
                    ExampleCase(
                        path,
                        row["sex"],
                        float(row["chronological_age_months"]),
                        float(row["reference_bone_age_months"]),
                        row["shows"],
                    )
                )
    return cases
