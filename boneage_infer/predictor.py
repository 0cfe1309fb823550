"""The one object that turns a radiograph into a reading; used by app.py, the CLI and tests."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from . import clinical, preprocessing
from .preprocessing import ImageError, Radiograph
from .weights import load_model

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@dataclass
class Reading:
    """A bone-age reading of one radiograph. Ages in months; gap = bone age − chronological age."""

    file: str | None
    sex: str
    bone_age_months: float
    bone_age_text: str
    stage: str
    chronological_age_months: float | None = None
    gap_months: float | None = None
    sd_months: float | None = None
    z_score: float | None = None
    call: str | None = None
    warnings: list[str] = field(default_factory=list)
    model_version: str = ""
    device: str = ""

    def to_dict(self) -> dict:
        return {k: (round(v, 2) if isinstance(v, float) else v) for k, v in asdict(self).items()}


@dataclass
class PreparedImage:
    """A decoded radiograph and the enhanced (CLAHE) image the model sees."""

    radiograph: Radiograph
    enhanced: np.ndarray  # uint8, canonical size
    model_input: np.ndarray  # float32, (size, size, channels)


class BoneAgePredictor:
    """Load the network once; predict bone age for one radiograph or a batch."""

    def __init__(self, weights: str | Path | None = None):
        self.model, self.config, manifest = load_model(weights)
        self.model_version = manifest.get("version", "unknown")
        import tensorflow as tf

        self.device = "GPU" if tf.config.list_physical_devices("GPU") else "CPU"
        self._forward = tf.function(lambda inputs: self.model(inputs, training=False), reduce_retracing=True)

    def prepare(self, source: str | Path | bytes) -> PreparedImage:
        """Decode and enhance an image file (raises ImageError for unusable input)."""
        radiograph = preprocessing.read_radiograph(source)
        enhanced = preprocessing.enhance(radiograph.pixels)
        model_input = preprocessing.to_model_input(enhanced, self.config.input_size)
        if self.config.channels == 3:
            model_input = np.repeat(model_input, 3, axis=-1)
        return PreparedImage(radiograph, enhanced, model_input)

    def bone_age(self, images: np.ndarray, male: np.ndarray) -> np.ndarray:
        """Bone age in months for a batch of model inputs and sexes (True = male)."""
        inputs = {
            "image": np.asarray(images, np.float32),
            "sex": np.asarray(male, np.float32).reshape(-1, 1),
        }
        z = np.asarray(self._forward(inputs)["bone_age_z"], np.float64)[:, 0]
        return self.config.target_mean_months + self.config.target_std_months * z

    def _reading(
        self, image: PreparedImage, sex: str, age: float | None, months: float, file: str | None
    ) -> Reading:
        months = float(np.clip(months, 0.0, 240.0))
        reading = Reading(
            file=file,
            sex=sex,
            bone_age_months=months,
            bone_age_text=clinical.format_months(months),
            stage=clinical.stage(months, sex),
            chronological_age_months=age,
            warnings=list(image.radiograph.notes),
            model_version=self.model_version,
            device=self.device,
        )
        if age is not None:
            interpretation = clinical.interpret(months, age, sex)
            reading.gap_months = interpretation.gap_months
            reading.sd_months = interpretation.sd_months
            reading.z_score = interpretation.z_score
            reading.call = interpretation.call
            reading.warnings += interpretation.warnings
        return reading

    def predict_prepared(
        self,
        image: PreparedImage,
        sex: str,
        chronological_age_months: float | str | None = None,
        file: str | None = None,
    ) -> Reading:
        """Reading for an image already passed through ``prepare``."""
        sex = clinical.check_sex(sex)
        age = clinical.chronological_age(chronological_age_months)
        months = self.bone_age(image.model_input[None], [sex == "M"])[0]
        return self._reading(image, sex, age, months, file)

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
        ages = chronological_ages_months or [None] * len(sources)
        results: list[Reading | Exception | None] = []
        pending = []  # (index, prepared image, sex, age, file)
        for source, sex, age in zip(sources, sexes, ages, strict=True):
            try:
                sex = clinical.check_sex(sex)
                age = clinical.chronological_age(age)
                prepared = self.prepare(source)
            except (ImageError, ValueError) as exc:
                results.append(exc)
                continue
            pending.append(
                (len(results), prepared, sex, age, None if isinstance(source, bytes) else str(source))
            )
            results.append(None)
        for start in range(0, len(pending), batch_size):
            chunk = pending[start : start + batch_size]
            months = self.bone_age(
                np.stack([item[1].model_input for item in chunk]), [item[2] == "M" for item in chunk]
            )
            for (index, prepared, sex, age, file), value in zip(chunk, months):
                results[index] = self._reading(prepared, sex, age, value, file)
        return results
