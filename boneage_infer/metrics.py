"""Accuracy figures and the conformal 90% interval for bone-age readings (all in months)."""

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


INTERVAL_BANDS_MONTHS = (0, 72, 120, 156)  # predicted bone age: <6 y, 6-10 y, 10-13 y, 13 y and over


def _band(months: np.ndarray) -> np.ndarray:
    return np.digitize(months, INTERVAL_BANDS_MONTHS[1:])


def _conformal_quantile(scores: np.ndarray, level: float) -> float | None:
    """The finite-sample ``level`` quantile of the scores (None when too few cases to have one)."""
    rank = int(np.ceil((len(scores) + 1) * level))
    return float(np.sort(scores)[rank - 1]) if rank <= len(scores) else None


def conformal_bands(months: np.ndarray, scores: np.ndarray, level: float = 0.9) -> list[dict]:
    """Per band of predicted bone age: the finite-sample ``level`` quantile of the conformity
    scores, |error| over each reading's scale (normalised split-conformal); a band with too few
    cases for one (under 9 at 90 %) takes that of all the cases."""
    bands, edges = _band(months), INTERVAL_BANDS_MONTHS + (None,)
    pooled = _conformal_quantile(scores, level)
    if pooled is None:
        needed = int(np.ceil(level / (1 - level) - 1e-9))
        raise ValueError(f"A {level:.0%} interval needs at least {needed} cases.")
    out = []
    for b in range(len(INTERVAL_BANDS_MONTHS)):
        band = scores[bands == b]
        own = _conformal_quantile(band, level)
        out.append(
            {
                "from_months": edges[b],
                "to_months": edges[b + 1],
                "n": len(band),
                "score_quantile": pooled if own is None else own,
            }
        )
    return out


def half_widths(bands: list[dict], months: np.ndarray, scale) -> np.ndarray:
    """The interval half-width (months) of each reading: its band's score quantile (bands as
    ``conformal_bands`` wrote them) times its scale."""
    index = np.digitize(np.atleast_1d(months), [band["from_months"] for band in bands[1:]])
    return np.array([bands[i]["score_quantile"] for i in index]) * np.asarray(scale)
