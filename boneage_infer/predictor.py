"""The one object that turns a radiograph into a reading; used by app.py, the CLI and tests.

predictor = BoneAgePredictor()              # bundled weights (see weights.py)
reading = predictor.predict("hand.png", sex="F", chronological_age_months="10y3m")
"""

from __future__ import annotations

import json
import os
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path
from typing import NamedTuple

import numpy as np

from . import clinical, explain, preprocessing, quality
from .metrics import half_widths
from .model import feature_layers
from .preprocessing import ImageError, Radiograph
from .reference import WEIGHT, ReferenceSet, interval_scale
from .weights import (
    CALIBRATION_FILE,
    NOVELTY_FILE,
    REFERENCE_FILE,
    WeightsError,
    load_model,
    resolve_weights,
)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

UNKNOWN_SEX = "U"


class RejectedImage(ImageError):
    """The quality gate decided this is not a usable hand radiograph."""

    def __init__(self, quality: quality.Quality):
        super().__init__(f"Rejected: {quality.reason}.")
        self.quality = quality


@dataclass
class Reading:
    """A bone-age reading of one radiograph. Ages in months to 0.1; gap = bone age − chronological age."""

    file: str | None
    sex: str  # "M", "F" or "U" (unknown: the reading averages both sexes)
    bone_age_months: float
    bone_age_text: str
    stage: str
    interval_90: list[float] | None = None
    chronological_age_months: float | None = None
    gap_months: float | None = None
    sd_months: float | None = None
    z_score: float | None = None
    call: str | None = None
    bone_age_by_sex: dict[str, float] | None = None
    # the two halves of bone_age_months (reference.py): the network's own reading, and the mean
    # bone age of the reference.NEIGHBOURS training radiographs of that sex it finds most alike
    # (None without them)
    network_bone_age_months: float | None = None
    reference_bone_age_months: float | None = None
    reference_spread_months: float | None = None  # their standard deviation: sets the interval's width
    quality: dict = field(default_factory=lambda: {"accepted": True, "reason": "not checked"})
    warnings: list[str] = field(default_factory=list)
    model_version: str = ""
    device: str = ""

    def to_dict(self) -> dict:
        def tidy(value):
            if isinstance(value, float):
                return round(value, 2)
            if isinstance(value, list):
                return [tidy(v) for v in value]
            if isinstance(value, dict):
                return {k: tidy(v) for k, v in value.items()}
            return value

        return tidy(asdict(self))


class Estimate(NamedTuple):
    """Bone ages (months) of a batch as served, and how they were made."""

    months: np.ndarray  # served: the network's reading blended with the reference bone age
    network_months: np.ndarray  # the network's mean over the test-time views
    reference_months: np.ndarray | None  # reference.py; None when the weights have no reference set
    reference_spread_months: np.ndarray | None  # SD of those neighbours' bone ages (the interval's scale)
    features: dict[str, np.ndarray]  # the quality gate's features of the images as they are


def _rows(values: np.ndarray | None, rows: list[int]) -> np.ndarray | None:
    """These rows of a batch's values; None for a part the weights do not have."""
    return None if values is None else values[rows]


@dataclass
class PreparedImage:
    """A decoded radiograph, the enhanced (CLAHE) image the model sees, and its quality."""

    radiograph: Radiograph
    enhanced: np.ndarray  # uint8, canonical size
    model_input: np.ndarray  # float32, (size, size, channels)
    quality: quality.Quality


class BoneAgePredictor:
    """Load the network once; read one radiograph or a batch."""

    def __init__(self, weights: str | Path | None = None):
        import keras
        import tensorflow as tf

        folder = resolve_weights(weights)
        self.model, self.config, manifest = load_model(folder)
        self.model_version = manifest.get("version", "unknown")
        self.device = "GPU" if tf.config.list_physical_devices("GPU") else "CPU"
        calibration = folder / CALIBRATION_FILE
        self.calibration = json.loads(calibration.read_text()) if calibration.is_file() else {}
        gate = folder / NOVELTY_FILE
        try:
            self.novelty = quality.NoveltyModel.load(gate) if gate.is_file() else None
        except ValueError as exc:  # calibrated by an older version
            raise WeightsError(str(exc)) from None
        reference = folder / REFERENCE_FILE
        try:
            self.reference = ReferenceSet.load(reference) if reference.is_file() else None
        except (KeyError, ValueError, OSError) as exc:
            raise WeightsError(
                f"{reference} is not a reference set ({exc}): "
                "rebuild it with `python -m boneage_infer calibrate`."
            ) from None
        self._gate_layers = self.novelty.layers if self.novelty else feature_layers(self.config)
        features = {
            name: keras.layers.GlobalAveragePooling2D()(self.model.get_layer(name).output)
            for name in dict.fromkeys([*self._gate_layers, explain.LAST_CONV_LAYER])
        }
        serving = keras.Model(
            self.model.inputs, {"bone_age_z": self.model.output["bone_age_z"], "features": features}
        )
        self._forward = tf.function(lambda inputs: serving(inputs, training=False), reduce_retracing=True)
        self._cam_model = explain.grad_cam_model(self.model)

    # -- images ---------------------------------------------------------------------------
    def prepare(self, source: str | Path | bytes) -> PreparedImage:
        """Decode, check and enhance an image file (raises ImageError for unusable input).
        A film scan whose frame fails the checks is read inside the film (``inside_film``)."""
        radiograph = preprocessing.read_radiograph(source)
        verdict = quality.image_checks(radiograph)
        if verdict.accepted:
            return self._enhanced(radiograph, verdict)
        inside = self.inside_film(radiograph)
        if inside is None:
            raise RejectedImage(verdict)
        return inside

    def inside_film(self, radiograph: Radiograph) -> PreparedImage | None:
        """The film of a scan framed by a uniform border (``preprocessing.crop_to_film``),
        prepared, if it passes the image checks; None otherwise or when already cropped. Only
        tried for an image refused as it is: RSNA's own grey-framed plates read as trained."""
        if preprocessing.FILM_NOTE in radiograph.notes:
            return None
        film = preprocessing.crop_to_film(radiograph)
        verdict = quality.image_checks(film) if film is not radiograph else None
        return self._enhanced(film, verdict) if verdict is not None and verdict.accepted else None

    def _enhanced(self, radiograph: Radiograph, verdict: quality.Quality) -> PreparedImage:
        enhanced = preprocessing.enhance(radiograph.pixels, self.config.hand_crop)
        model_input = preprocessing.to_model_input(enhanced, self.config.input_size)
        if self.config.channels == 3:
            model_input = np.repeat(model_input, 3, axis=-1)
        return PreparedImage(radiograph, enhanced, model_input, verdict)

    def _pass(self, images: np.ndarray, male) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """One forward pass: bone age z-scores and the gate's features (pooled layer outputs)."""
        sex = np.asarray(male, np.float32).reshape(-1, 1)
        out = self._forward({"image": np.asarray(images, np.float32), "sex": sex})
        features = {name: np.asarray(f, np.float64) for name, f in out["features"].items()}
        return np.asarray(out["bone_age_z"], np.float64)[:, 0], features

    def features(self, images: np.ndarray, male) -> dict[str, np.ndarray]:
        """Pooled features of the images as they are (one row per image): the quality gate's
        layers and the last convolution (the reference set's)."""
        return self._pass(images, male)[1]

    def infer(self, images: np.ndarray, male) -> Estimate:
        """Bone age in months: the network's mean over the test-time views (each zoom in
        ``config.test_zooms`` and its mirror), blended with the reference bone age of the
        last-convolution features averaged over the same views; and the gate's features of the
        images as they are."""
        images = np.asarray(images, np.float32)
        male = np.asarray(male).reshape(-1)
        z, pooled, features = [], [], {}
        for factor in self.config.test_zooms:
            view = np.stack([preprocessing.zoom(image, factor) for image in images])
            view_z, view_features = self._pass(np.concatenate([view, view[:, :, ::-1]]), np.tile(male, 2))
            z.append(view_z.reshape(2, -1).mean(0))
            pooled.append(view_features[explain.LAST_CONV_LAYER].reshape(2, len(images), -1).mean(0))
            if factor == 1.0:
                features = {name: view_features[name][: len(images)] for name in self._gate_layers}
        network = self.config.target_mean_months + self.config.target_std_months * np.mean(z, axis=0)
        if self.reference is None:
            return Estimate(network, network, None, None, features)
        reference, spread = self.reference.bone_age(np.mean(pooled, axis=0), male)
        return Estimate((1 - WEIGHT) * network + WEIGHT * reference, network, reference, spread, features)

    def heatmap(self, image: PreparedImage, sex: str) -> np.ndarray:
        """Grad-CAM heatmap in [0, 1] at the model input size."""
        return explain.grad_cam(self._cam_model, image.model_input, sex == "M")

    def heatmap_overlay(self, image: PreparedImage, sex: str) -> np.ndarray:
        """RGB picture of the heatmap over the enhanced radiograph."""
        return explain.overlay(image.enhanced, self.heatmap(image, "F" if sex == UNKNOWN_SEX else sex))

    # -- readings -------------------------------------------------------------------------
    def _interval(self, months: float, spread: float | None) -> list[float] | None:
        """The calibrated 90% interval; None without a calibration or a reference set (its
        width scales with the spread of the reference bone ages, calibrate.py)."""
        bands = self.calibration.get("interval_90_bands")
        if not bands or spread is None:
            return None
        half = float(half_widths(bands, months, interval_scale(spread))[0])
        return [max(0.0, months - half), months + half]

    def _reading(
        self, image: PreparedImage, sex: str, age: float | None, by_sex: dict, parts: dict, file: str | None
    ):
        warnings = list(image.radiograph.notes) + list(image.quality.warnings)
        # Ages to 0.1 month, the precision reported, so that every figure shown adds up.
        by_sex = {k: round(float(np.clip(v, 0.0, 240.0)), 1) for k, v in by_sex.items()}
        months = round(float(np.mean(list(by_sex.values()))), 1)
        parts = {k: None if v is None else round(float(np.mean(v)), 1) for k, v in parts.items()}
        age = None if age is None else round(age, 1)
        reading = Reading(
            file=file,
            sex=sex,
            bone_age_months=months,
            bone_age_text=clinical.format_months(months),
            stage=clinical.stage(months, "F" if sex == UNKNOWN_SEX else sex),
            interval_90=self._interval(months, parts["reference_spread_months"]),
            chronological_age_months=age,
            quality=image.quality.to_dict(),
            warnings=warnings,
            model_version=self.model_version,
            device=self.device,
            **parts,
        )
        if sex == UNKNOWN_SEX:
            reading.bone_age_by_sex = by_sex
            reading.stage = " / ".join(f"{clinical.stage(v, k)} ({k})" for k, v in by_sex.items())
            warnings.append(
                "Sex unknown: the bone age is the mean of the readings as a girl "
                f"({by_sex['F']:.1f} months) and as a boy ({by_sex['M']:.1f} months)."
            )
        if age is not None:
            reading.gap_months = round(months - age, 1)
            calls = {k: clinical.interpret(v, age, k) for k, v in by_sex.items()}
            if sex != UNKNOWN_SEX:
                result = calls[sex]
                reading.sd_months, reading.z_score = result.sd_months, result.z_score
                reading.call = result.call
                warnings += result.warnings
            else:
                verdicts = {r.call for r in calls.values()}
                reading.call = verdicts.pop() if len(verdicts) == 1 else "not assessed"
                warnings.append(
                    "Sex unknown: no z-score; the call is given only when it is the same for both sexes "
                    f"({', '.join(f'{k}: {r.call}' for k, r in calls.items())})."
                )
                warnings += calls["F"].warnings
        return reading

    def predict_prepared(
        self,
        image: PreparedImage,
        sex: str | None,
        chronological_age_months: float | str | None = None,
        file: str | None = None,
    ) -> Reading:
        """Reading for an image already passed through ``prepare``; raises RejectedImage."""
        result = self._read([(0, image, *self._patient(image, sex, chronological_age_months), file)])[0]
        if isinstance(result, RejectedImage):
            raise result
        return result

    @staticmethod
    def _patient(image: PreparedImage, sex: str | None, age: float | str | None) -> tuple[str, float | None]:
        """Sex and age as given, else from the DICOM header (noted in the reading's warnings)."""
        radiograph = image.radiograph
        if not str(sex or "").strip() and radiograph.sex:
            sex = radiograph.sex
            radiograph.notes.append(f"Sex {sex} taken from the DICOM header.")
        months = clinical.chronological_age(age)[0]
        if radiograph.birth_date and radiograph.study_date:
            dated = clinical.age_between(radiograph.birth_date, radiograph.study_date)
            if months is None:
                months = dated
                radiograph.notes.append("Chronological age computed from the DICOM birth and study dates.")
            elif warning := clinical.age_disagreement(months, dated, "the DICOM birth and study dates"):
                radiograph.notes.append(warning)
        return check_sex(sex), months

    def _read(self, items: list[tuple]) -> list[Reading | RejectedImage]:
        """items: (index, prepared, sex, age, file); one model call for the whole list.

        An image the feature-novelty gate rejects yields its RejectedImage in its place.
        """
        images, males, owners = [], [], []
        for n, (_, prepared, sex, _, _) in enumerate(items):
            for s in ("F", "M") if sex == UNKNOWN_SEX else (sex,):
                images.append(prepared.model_input)
                males.append(s == "M")
                owners.append((n, s))
        estimate = self.infer(np.stack(images), males)
        readings = []
        for n, (_, prepared, sex, age, file) in enumerate(items):
            rows = [i for i, (k, _) in enumerate(owners) if k == n]
            by_sex = {owners[i][1]: float(estimate.months[i]) for i in rows}
            parts = {
                "network_bone_age_months": estimate.network_months[rows],
                "reference_bone_age_months": _rows(estimate.reference_months, rows),
                "reference_spread_months": _rows(estimate.reference_spread_months, rows),
            }
            if self.novelty is not None:
                verdict = self.novelty.check(
                    {name: f[rows[0] : rows[0] + 1] for name, f in estimate.features.items()},
                    prepared.quality.noise_sigma,
                )
                if not verdict.accepted:
                    inside = self.inside_film(prepared.radiograph)
                    readings.append(
                        RejectedImage(verdict)
                        if inside is None
                        else self._read([(0, inside, sex, age, file)])[0]
                    )
                    continue
            readings.append(self._reading(prepared, sex, age, by_sex, parts, file))
        return readings

    def predict(
        self,
        source: str | Path | bytes,
        sex: str,
        chronological_age_months: float | str | None = None,
    ) -> Reading:
        """Read one radiograph (path or bytes); raises ImageError/ValueError on bad input."""
        result = self.predict_batch([source], [sex], [chronological_age_months])[0]
        if isinstance(result, Exception):
            raise result
        return result

    def predict_batch(
        self,
        sources: list[str | Path | bytes],
        sexes: list[str],
        chronological_ages_months: list[float | str | None] | None = None,
        batch_size: int = 8,
    ) -> list[Reading | Exception]:
        """Read many radiographs; a bad one yields its exception, the rest are still read."""
        return list(self.predict_stream(sources, sexes, chronological_ages_months, batch_size))

    def predict_stream(
        self,
        sources: Iterable[str | Path | bytes],
        sexes: Iterable[str],
        chronological_ages_months: Iterable[float | str | None] | None = None,
        batch_size: int = 8,
        workers: int = 2,
    ) -> Iterator[Reading | Exception]:
        """``predict_batch`` as a stream: each result in order as soon as its batch is read.
        Decoding, checks and CLAHE run on ``workers`` threads two batches ahead of the network,
        so both overlap and memory holds only those batches, however many radiographs."""
        if chronological_ages_months is None:
            cases = ((source, sex, None) for source, sex in zip(sources, sexes, strict=True))
        else:
            cases = zip(sources, sexes, chronological_ages_months, strict=True)
        with ThreadPoolExecutor(workers) as pool:
            ahead = deque(pool.submit(self._prepare_case, *case) for case in islice(cases, 2 * batch_size))
            while ahead:
                batch = [ahead.popleft().result() for _ in range(min(batch_size, len(ahead)))]
                ahead.extend(pool.submit(self._prepare_case, *case) for case in islice(cases, len(batch)))
                ready = [(n, *item) for n, item in enumerate(batch) if not isinstance(item, Exception)]
                readings = dict(zip((item[0] for item in ready), self._read(ready))) if ready else {}
                yield from (
                    item if isinstance(item, Exception) else readings[n] for n, item in enumerate(batch)
                )

    def _prepare_case(self, source, sex, age) -> tuple | Exception:
        """(prepared, sex, age, file) for ``_read``, or the exception that makes it unreadable."""
        try:
            if str(sex or "").strip():
                check_sex(sex)  # a wrong sex is reported before any decoding
            prepared = self.prepare(source)
            return (prepared, *self._patient(prepared, sex, age), _name(source))
        except (ImageError, ValueError) as exc:
            return exc


def check_sex(sex: str | None) -> str:
    """'M', 'F' or 'U' (unknown); also male/female/unknown."""
    value = str(sex or "").strip().upper()
    if not value:
        raise ValueError("Sex is needed: M (male), F (female) or U (unknown).")
    if value in (UNKNOWN_SEX, "UNKNOWN", "O"):
        return UNKNOWN_SEX
    try:
        return clinical.check_sex(value)
    except ValueError:
        raise ValueError(
            f"Sex must be M (male), F (female) or U (unknown), not {clinical.quoted(sex)}."
        ) from None


def _name(source) -> str | None:
    return None if isinstance(source, bytes) else str(source)
