"""Is this a usable hand radiograph? Checks run before any bone age is given.

Three layers:

* the DICOM header, when there is one: a modality other than a plain radiograph
  (ultrasound, CT, MRI, ...) or a body part other than the hand/wrist is rejected;
* image statistics on the decoded image: colour photographs, blank/uniform images,
  pure noise, bright document-like images (text, screenshots) are rejected; low
  contrast and fingers cut by the top edge give warnings;
* a novelty test on the network's own features (``NoveltyModel``, on the pooled outputs
  of the last middle-flow block and of the last convolution): whitened PCAs of those
  features of RSNA training radiographs, each 2-year band of bone age weighted the same;
  images far from them at either layer (other body parts, other modalities, natural
  images) are rejected. The limits are set on held-out training radiographs
  (``python -m boneage_infer calibrate``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from .preprocessing import CANONICAL_SIZE, Radiograph

MAX_COLOURFULNESS = 15.0
MIN_STD = 4.0
MIN_NEIGHBOUR_CORRELATION = 0.5
MAX_BRIGHT_FRACTION = 0.5
MIN_GREY_LEVELS = 12  # levels holding 99% of pixels; RSNA val has 23 or more
# mean |Laplacian| at 299 px after a 3x3 median, which removes sensor noise but keeps text and
# texture: RSNA val reaches 8.3 (10.9 with sigma-6 grey-level noise added); text, screenshots,
# grass, gravel and brick have 13.7 or more
MAX_LAPLACIAN = 12.0
MIN_EDGE = 110.0  # 99.9th percentile of the Sobel gradient at 299 px; RSNA val has 164 or more
# Immerkaer noise sigma at 299 px in grey levels of the stretched image: RSNA val 0.09-1.01
# (median 0.53); with sigma-1 noise added to the file, median 1.31; sigma 2, 1.35 or more. The
# model reads such images less reliably (sigma 2 moves readings by 3 months on average;
# weights/README.md, robustness).
GRAINY_NOISE_SIGMA = 1.2
LOW_CONTRAST_LEVELS = 48
LOW_CONTRAST_STD = 11.0
MIN_CUT_FINGERS = 3

# DICOM Modality (PS3.3 C.7.3.1.1.1): plain radiographs, and the codes scanned films are stored under
RADIOGRAPH_MODALITIES = {"CR", "DX", "RG", "DR", "OT", "SC"}
MODALITY_NAMES = {
    "CT": "computed tomography", "MR": "MRI", "US": "ultrasound", "NM": "nuclear medicine", "PT": "PET",
    "MG": "mammography", "XA": "angiography", "RF": "fluoroscopy", "IO": "intra-oral dental",
    "PX": "panoramic dental", "XC": "camera photograph", "ES": "endoscopy", "OP": "ophthalmic photograph",
}  # fmt: skip
# BodyPartExamined defined terms (PS3.16 CID 4031) that are not the hand or wrist
OTHER_BODY_PARTS = {
    "ABDOMEN", "ANKLE", "BRAIN", "BREAST", "CHEST", "CLAVICLE", "COCCYX", "CSPINE", "ELBOW", "FEMUR",
    "FOOT", "HEAD", "HEART", "HIP", "JAW", "KNEE", "LEG", "LSPINE", "NECK", "PELVIS", "SHOULDER",
    "SKULL", "SPINE", "SSPINE", "THORAX", "TOE", "TSPINE", "BODY", "WHOLEBODY",
}  # fmt: skip
HAND_BODY_PARTS = {"HAND", "WRIST", "FINGER"}


@dataclass
class Quality:
    """The verdict of one check; a rejection names its ``check`` and, where it measures one,
    the ``value`` found against the ``limit`` it crossed."""

    accepted: bool
    reason: str
    warnings: list[str] = field(default_factory=list)
    noise_sigma: float = 0.0  # estimated grey-level noise at 299 px (``noise_sigma``)
    check: str | None = None
    value: float | None = None
    limit: float | None = None

    def to_dict(self) -> dict:
        row = {"accepted": self.accepted, "reason": self.reason}
        if self.check:
            row["check"] = self.check
        if self.value is not None:
            row |= {"value": round(self.value, 4), "limit": self.limit}
        return row


def _rejected(reason: str, check: str, value: float | None = None, limit: float | None = None) -> Quality:
    return Quality(False, reason, check=check, value=None if value is None else float(value), limit=limit)


def header_checks(radiograph: Radiograph) -> Quality:
    """Reject DICOM files whose header says they are not a plain radiograph of the hand."""
    modality = radiograph.modality
    if modality and modality not in RADIOGRAPH_MODALITIES:
        name = MODALITY_NAMES.get(modality, "not a plain radiograph")
        return _rejected(
            f"the DICOM modality is {modality} ({name}); a hand radiograph is needed", "modality"
        )
    words = set(re.findall(r"[A-Z]+", radiograph.body_part or ""))
    if words & OTHER_BODY_PARTS and not words & HAND_BODY_PARTS:
        return _rejected(
            f"the DICOM body part is {radiograph.body_part}; a radiograph of the hand is needed", "body_part"
        )
    return Quality(True, "usable hand radiograph")


def cut_fingers(grey: np.ndarray) -> int:
    """Finger-wide foreground runs (4-45 px at 299) along the top edge: fingers running off the image.

    Film frames and labels make runs far wider than a finger, so they do not count. On RSNA val
    0.8 % of radiographs have 3 or more; with the top 30 % cropped away, 74 %.
    """
    _, mask = cv2.threshold(cv2.GaussianBlur(grey, (5, 5), 0), 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    top = np.concatenate([[0], (mask[2:8].mean(0) > 0.5).astype(np.int8), [0]])
    edges = np.flatnonzero(np.diff(top))
    lengths = edges[1::2] - edges[::2]
    return int(np.sum((lengths >= 4) & (lengths <= 45)))


def noise_sigma(grey: np.ndarray) -> float:
    """Standard deviation of the image noise in grey levels, from the mean absolute response
    to a Laplacian difference mask that cancels edges and gradients (Immerkaer J. Fast noise
    variance estimation. Comput Vis Image Underst 1996;64(2):300-302)."""
    mask = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float64)
    response = cv2.filter2D(grey.astype(np.float64), -1, mask)[1:-1, 1:-1]
    return float(np.sqrt(np.pi / 2) * np.abs(response).mean() / 6)


def image_checks(radiograph: Radiograph) -> Quality:
    """Reject images that cannot be hand radiographs; warn on usable but weak ones."""
    header = header_checks(radiograph)
    if not header.accepted:
        return header
    if radiograph.colourfulness > MAX_COLOURFULNESS:
        return _rejected(
            "a colour image (photograph?), not a radiograph",
            "colourfulness",
            radiograph.colourfulness,
            MAX_COLOURFULNESS,
        )
    grey = cv2.resize(radiograph.pixels, (CANONICAL_SIZE, CANONICAL_SIZE), interpolation=cv2.INTER_AREA)
    values = grey.astype(np.float64)
    if values.std() < MIN_STD:
        return _rejected("a blank or uniform image", "grey_level_std", values.std(), MIN_STD)
    correlation = np.corrcoef(values[:, :-1].ravel(), values[:, 1:].ravel())[0, 1]
    if not correlation > MIN_NEIGHBOUR_CORRELATION:
        return _rejected(
            "noise with no structure, not a radiograph",
            "neighbour_correlation",
            np.nan_to_num(correlation),
            MIN_NEIGHBOUR_CORRELATION,
        )
    counts = np.sort(np.bincount(radiograph.pixels.ravel(), minlength=256))[::-1]
    levels = int(np.searchsorted(np.cumsum(counts) / counts.sum(), 0.99) + 1)
    if levels < MIN_GREY_LEVELS:
        return _rejected(
            f"a drawing or binary image ({levels} grey levels), not a radiograph",
            "grey_levels",
            levels,
            MIN_GREY_LEVELS,
        )
    denoised = cv2.medianBlur(grey, 3).astype(np.float32)
    detail = float(np.abs(cv2.Laplacian(denoised, cv2.CV_32F)).mean())
    if detail > MAX_LAPLACIAN:
        return _rejected(
            "fine texture everywhere (text, a screenshot or a photograph?)", "texture", detail, MAX_LAPLACIAN
        )
    gradient = np.hypot(cv2.Sobel(values, cv2.CV_64F, 1, 0), cv2.Sobel(values, cv2.CV_64F, 0, 1))
    edge = np.percentile(gradient, 99.9)
    if edge < MIN_EDGE:
        return _rejected("no sharp edges anywhere (blurred, or not a radiograph?)", "edges", edge, MIN_EDGE)
    bright = (grey > 200).mean()
    if bright > MAX_BRIGHT_FRACTION:
        return _rejected(
            "mostly bright, not a hand radiograph (a document, a screenshot, an inverted image, "
            "or a radiograph of a larger body part?)",
            "bright_fraction",
            bright,
            MAX_BRIGHT_FRACTION,
        )
    warnings = []
    noise = noise_sigma(grey)
    if noise > GRAINY_NOISE_SIGMA:
        warnings.append(
            f"Grainy image (noise about {noise:.1f} grey levels; the training radiographs have 1 at most): "
            "the reading may be less accurate."
        )
    if radiograph.original_levels < LOW_CONTRAST_LEVELS or values.std() < LOW_CONTRAST_STD:
        warnings.append("Low contrast image: the reading may be less accurate.")
    if cut_fingers(grey) >= MIN_CUT_FINGERS:
        warnings.append(
            "The fingers seem cut by the top edge (heavy cropping?): "
            "check that the whole hand and wrist are shown."
        )
    reason = "usable hand radiograph" if not warnings else "usable, with warnings"
    return Quality(True, reason, warnings, noise)


def age_balanced_weights(bone_age_months: np.ndarray, band_months: int = 24) -> np.ndarray:
    """Weights that give each 2-year band of bone age the same total weight.

    Fitted unweighted, the gate learned the features of the common ages (8-16 years) and
    refused 1 in 10 hands under 2 years (1 in 3,000 older); balanced, it accepts them.
    """
    band = (np.asarray(bone_age_months, float) // band_months).astype(int)
    return 1.0 / np.bincount(band)[band]


@dataclass
class WhitenedPCA:
    """Distance of feature vectors from a set of them, in its first ``k`` principal components."""

    mean: np.ndarray
    components: np.ndarray  # (k, d)
    scales: np.ndarray  # (k,) standard deviation along each component

    @classmethod
    def fit(cls, features: np.ndarray, k: int = 32, weights: np.ndarray | None = None) -> WhitenedPCA:
        """Weighted mean and principal components (equal weights when ``weights`` is None)."""
        weights = np.full(len(features), 1.0) if weights is None else np.asarray(weights, float)
        weights = weights / weights.sum()
        mean = weights @ features
        _, singular, vt = np.linalg.svd((features - mean) * np.sqrt(weights)[:, None], full_matrices=False)
        return cls(mean, vt[:k], singular[:k])

    def distance(self, features: np.ndarray) -> np.ndarray:
        """Mean squared whitened coordinate of each feature vector (1 on average for the fitted set)."""
        coords = (np.atleast_2d(features) - self.mean) @ self.components.T
        return np.mean((coords / self.scales) ** 2, axis=1)


@dataclass
class NoveltyModel:
    """How far an image's pooled network features lie from those of RSNA hand radiographs.

    One whitened PCA per feature layer (Lee et al. 2018, NeurIPS: feature distances at several
    layers): the last middle-flow block describes what the image looks like, the last
    convolution what the network reads in it. Each distance is divided by its limit on held-out
    training radiographs; the score is the largest of them, divided by its own held-out limit,
    so an image is accepted when the score is at most 1.
    """

    layers: dict[str, WhitenedPCA]
    layer_limits: dict[str, float]
    max_score: float

    @classmethod
    def fit(
        cls,
        features: dict[str, np.ndarray],
        held_out: dict[str, np.ndarray],
        weights: np.ndarray | None = None,
        k: int = 32,
        quantile: float = 99.9,
    ) -> NoveltyModel:
        """PCAs of ``features`` (rows weighted by ``weights``); limits on ``held_out``."""
        layers = {name: WhitenedPCA.fit(values, k, weights) for name, values in features.items()}
        limits = {
            name: float(np.percentile(pca.distance(held_out[name]), quantile)) for name, pca in layers.items()
        }
        model = cls(layers, limits, 1.0)
        model.max_score = float(np.percentile(model.score(held_out), quantile))
        return model

    def score(self, features: dict[str, np.ndarray]) -> np.ndarray:
        """Largest per-layer distance relative to its limit; above 1 is rejected."""
        return (
            np.max([pca.distance(features[n]) / self.layer_limits[n] for n, pca in self.layers.items()], 0)
            / self.max_score
        )

    def check(self, features: dict[str, np.ndarray], noise: float = 0.0) -> Quality:
        """Accept features like the training radiographs'; ``noise`` (``noise_sigma``) words the reason."""
        score = float(self.score(features)[0])
        if score <= 1.0:
            return Quality(True, "usable hand radiograph")
        reason = (
            "unlike every radiograph the model was trained on (another body part, not a radiograph, "
            "or a hand film of unusual exposure or positioning?)"
        )
        if noise > GRAINY_NOISE_SIGMA:  # texture also raises the estimate: say both, decide neither
            reason += (
                "; if it is a hand radiograph, it is grainier than any training radiograph (noise about "
                f"{noise:.1f} grey levels, they have 1 at most): a less noisy image or export may be read"
            )
        return _rejected(reason, "novelty", score, 1.0)

    def save(self, path: Path) -> None:
        arrays = {"max_score": np.array([self.max_score])}
        for name, pca in self.layers.items():
            arrays |= {f"{name}/{key}": value for key, value in vars(pca).items()}
            arrays[f"{name}/limit"] = np.array([self.layer_limits[name]])
        np.savez(path, **arrays)

    @classmethod
    def load(cls, path: Path) -> NoveltyModel:
        with np.load(path) as data:
            names = sorted({key.split("/")[0] for key in data.files if "/" in key})
            if not names or "max_score" not in data.files:
                raise ValueError(
                    f"{path} holds a quality gate of an older format: run "
                    "`python -m boneage_infer calibrate` on this weights folder again."
                )
            layers = {
                n: WhitenedPCA(data[f"{n}/mean"], data[f"{n}/components"], data[f"{n}/scales"]) for n in names
            }
            limits = {n: float(data[f"{n}/limit"][0]) for n in names}
            return cls(layers, limits, float(data["max_score"][0]))
