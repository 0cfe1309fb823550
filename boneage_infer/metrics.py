"""Accuracy figures for bone-age readings (all in months)."""

from __future__ import annotations

import numpy as np


def regression_metrics(predicted: np.ndarray, reference: np.ndarray, male: np.ndarray | None = None) -> dict:
    """n, MAE, RMSE, R², mean bias (predicted − reference), MAE per sex and per 2-year band."""
    predicted = np.asarray(predicted, float)
    reference = np.asarray(reference, float)
    error = predicted - reference
    total = float(np.sum((reference - reference.mean()) ** 2))
    result = {
        "n": int(len(error)),
        "mae": float(np.mean(np.abs(error))),
        "rmse": float(np.sqrt(np.mean(error**2))),
        "r2": float(1 - np.sum(error**2) / total) if total > 0 else float("nan"),
        "bias": float(np.mean(error)),
    }
    if male is not None:
        male = np.asarray(male, bool)
        result["mae_by_sex"] = {
            sex: float(np.mean(np.abs(error[mask]))) if mask.any() else None
            for sex, mask in (("M", male), ("F", ~male))
        }
    bands = {}
    for start in range(0, 240, 24):
        mask = (reference >= start) & (reference < start + 24)
        if mask.any():
            bands[f"{start // 12}-{start // 12 + 2}y"] = {
                "n": int(mask.sum()),
                "mae": float(np.mean(np.abs(error[mask]))),
            }
    result["mae_by_age_band"] = bands
    return result


def quadratic_weighted_kappa(predicted: np.ndarray, reference: np.ndarray, classes: int) -> float:
    """Cohen's kappa with quadratic weights for ordinal classes 0..classes-1."""
    observed = np.zeros((classes, classes))
    for p, r in zip(predicted, reference):
        observed[int(r), int(p)] += 1
    weights = np.subtract.outer(np.arange(classes), np.arange(classes)) ** 2 / (classes - 1) ** 2
    expected = np.outer(observed.sum(1), observed.sum(0)) / max(observed.sum(), 1)
    denominator = float(np.sum(weights * expected))
    return 1.0 - float(np.sum(weights * observed)) / denominator if denominator else 1.0
