"""Reference cases: the bone ages of the training radiographs the network finds most alike.

The network's pooled last-convolution features of every train radiograph (image and mirror,
averaged) are kept with its bone age and sex, reduced to ``DIMENSIONS`` by an uncentred SVD
of the unit-length features (cosine similarity survives it; float16 on disk). A radiograph's
reference bone age is the mean bone age of the ``NEIGHBOURS`` train radiographs of the same
sex whose features are closest to its own (cosine similarity; features averaged over the
served test-time views): k-nearest-neighbour regression on a network's features (as in Deep
k-Nearest Neighbors, Papernot & McDaniel 2018). Averaging fifty radiologists' readings of
alike hands smooths the noise of single readings that the network's own output has learnt.
The served bone age is the mean of the network's reading and the reference bone age
(``WEIGHT``); on val this reads 6.56 months against 6.66 for the network alone (model card).
How far those neighbours' bone ages spread sets the width of the 90% interval (``interval_scale``):
where alike hands were read far apart, the reading is less certain.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

NEIGHBOURS = 50
WEIGHT = 0.5  # share of the reference bone age in the served reading
DIMENSIONS = 128
SPREAD_OFFSET_MONTHS = 2.0  # added to the neighbours' spread: the interval's scale (calibrate.py)


def interval_scale(spread_months) -> np.ndarray:
    """The scale of a reading's 90% interval (normalised split-conformal, Lei et al. 2018): the
    standard deviation of its neighbours' bone ages plus ``SPREAD_OFFSET_MONTHS``, so that a
    reading whose neighbours agree does not get an interval of nothing."""
    return SPREAD_OFFSET_MONTHS + np.asarray(spread_months, np.float64)


def _unit(features: np.ndarray) -> np.ndarray:
    features = np.asarray(features, np.float32)
    return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)


@dataclass
class ReferenceSet:
    """Projected unit features, bone ages, sexes and ids of the training radiographs."""

    projection: np.ndarray  # (network features, DIMENSIONS) float32
    features: np.ndarray  # (n, DIMENSIONS) unit length, float16
    bone_age_months: np.ndarray  # (n,) float32
    male: np.ndarray  # (n,) bool
    ids: np.ndarray  # (n,) RSNA image ids

    @classmethod
    def build(cls, features, bone_age_months, male, ids, dimensions: int = DIMENSIONS) -> ReferenceSet:
        """From the pooled features of training radiographs (one row each), of both sexes."""
        if len(set(np.asarray(male, bool).tolist())) < 2:
            raise ValueError("A reference set needs training radiographs of both sexes.")
        unit = _unit(features)
        projection = np.linalg.svd(unit, full_matrices=False)[2][:dimensions].T
        return cls(
            projection.astype(np.float32),
            _unit(unit @ projection).astype(np.float16),
            np.asarray(bone_age_months, np.float32),
            np.asarray(male, bool),
            np.asarray(ids),
        )

    def save(self, path: Path) -> None:
        np.savez(path, **vars(self))

    @classmethod
    def load(cls, path: Path) -> ReferenceSet:
        with np.load(path) as stored:
            return cls(**{name: stored[name] for name in cls.__dataclass_fields__})

    @property
    def k(self) -> int:
        """NEIGHBOURS, or fewer in a set with fewer radiographs of one sex (a test's)."""
        return int(min(NEIGHBOURS, self.male.sum(), (~self.male).sum()))

    def neighbours(self, features: np.ndarray, male) -> np.ndarray:
        """Row indices of the ``k`` most alike train radiographs of the same sex, per row."""
        query = _unit(_unit(features) @ self.projection)
        male = np.asarray(male, bool).reshape(-1)
        found = np.empty((len(query), self.k), np.int64)
        for sex in (False, True):
            rows, pool = np.flatnonzero(male == sex), np.flatnonzero(self.male == sex)
            if len(rows):
                similarity = query[rows] @ self.features[pool].astype(np.float32).T
                found[rows] = pool[np.argsort(-similarity, axis=1, kind="stable")[:, : self.k]]
        return found

    def bone_age(self, features: np.ndarray, male) -> tuple[np.ndarray, np.ndarray]:
        """Reference bone age (months) per row: the mean of its neighbours' bone ages, and
        their standard deviation (the spread)."""
        alike = self.bone_age_months[self.neighbours(features, male)].astype(np.float64)
        return alike.mean(axis=1), alike.std(axis=1)
