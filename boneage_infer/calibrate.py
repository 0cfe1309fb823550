"""Calibrate a weights folder on the RSNA data: the 90% interval and the novelty gate.

``python -m boneage_infer calibrate --data ../shared/data/rsna-boneage --weights weights/``

* BatchNorm (``--recompute-bn``): statistics recomputed on clean train radiographs.
* Views (``--zooms 1,1.06,0.94``): the test-time views served from then on
  (``ModelConfig.test_zooms``; each zoom read with its mirror), set before the interval
  is measured, since the interval is that of the served reading.
* Interval: normalised split-conformal by band of predicted bone age (Mondrian conformal,
  Vovk et al. 2005; normalised scores, Lei et al. 2018): each reading's scale is the spread
  of its reference bone ages (``reference.interval_scale``), and in each band the half-width
  is the finite-sample 90% quantile of |error| / scale of the served reading on the val
  split (as the training issue asks), times the reading's own scale. Coverage is also
  written per quarter of that spread, to show the interval holds where the neighbours agree
  and where they do not. Coverage on val, and a cross-fitted coverage (calibrate on one half of val,
  measure on the other), are written to calibration.json with the widths.
* Novelty gate: pooled features (of the image as it is, one pass) of ``fit_n`` train
  radiographs, each 2-year band of bone age weighted the same, fix the whitened PCA of
  each gate layer; each limit, and that of
  the largest relative distance, is the 99.9th percentile on ``held_out_n`` other train
  radiographs; the acceptance rate on val is measured and written down.
* Reference set (reference.py): the last-convolution features of every train radiograph
  (image and mirror), set before the interval is measured, as the served reading blends in
  its reference bone age.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from . import data
from .explain import LAST_CONV_LAYER
from .metrics import conformal_bands, half_widths, regression_metrics
from .model import ModelConfig
from .predictor import BoneAgePredictor
from .preprocessing import ImageError
from .quality import NoveltyModel, age_balanced_weights
from .reference import ReferenceSet, interval_scale
from .train import BN_IMAGES, recompute_batchnorm
from .weights import (
    CALIBRATION_FILE,
    CONFIG_FILE,
    MANIFEST_FILE,
    NOVELTY_FILE,
    REFERENCE_FILE,
    load_model,
    save_weights,
    write_manifest,
)


def _accepted(predictor: BoneAgePredictor, cases: data.Cases, batch_size: int):
    """Batches (row indices, model inputs) of the cases the image checks accept."""
    rows, images = [], []
    for i, path in enumerate(cases.paths):
        try:
            images.append(predictor.prepare(path).model_input)
        except ImageError:
            continue
        rows.append(i)
        if len(rows) == batch_size:
            yield np.array(rows), np.stack(images)
            rows, images = [], []
    if rows:
        yield np.array(rows), np.stack(images)


def _read_cases(predictor: BoneAgePredictor, cases: data.Cases, served: bool, batch_size: int = 32):
    """Gate features of every case the image checks accept, with (``served``) their bone age
    read as served, by the network alone (every test-time view) and the spread of their
    reference bone ages, or not (None; one pass each), and that mask."""
    usable = np.zeros(len(cases), bool)
    months, features = [], []
    for rows, chunk in _accepted(predictor, cases, batch_size):
        usable[rows] = True
        if served:
            estimate = predictor.infer(chunk, cases.male[rows])
            months.append(
                np.stack([estimate.months, estimate.network_months, estimate.reference_spread_months])
            )
            features.append(estimate.features)
        else:
            features.append(predictor.features(chunk, cases.male[rows]))
    features = {n: np.concatenate([f[n] for f in features]) for n in features[0]}
    return (np.concatenate(months, axis=1) if served else None), features, usable


def _reference_set(predictor: BoneAgePredictor, cases: data.Cases, batch_size: int = 64) -> ReferenceSet:
    """The reference set of ``cases`` the image checks accept: last-convolution features
    averaged over each image and its mirror."""
    features, kept = [], []
    for rows, images in _accepted(predictor, cases, batch_size):
        mirrored = images[:, :, ::-1]
        views = [predictor.features(v, cases.male[rows])[LAST_CONV_LAYER] for v in (images, mirrored)]
        features.append(np.mean(views, axis=0))
        kept.append(rows)
    kept = np.concatenate(kept)
    return ReferenceSet.build(
        np.concatenate(features), cases.bone_age_months[kept], cases.male[kept], np.asarray(cases.ids)[kept]
    )


def calibrate(
    data_root: Path,
    weights: Path,
    fit_n: int = 3000,
    held_out_n: int = 3000,
    recompute_bn: bool = False,
    zooms: tuple[float, ...] | None = None,
    seed: int = 0,
) -> dict:
    """Calibrate the weights folder in place and rewrite its manifest; returns the summary.
    ``zooms`` first sets the test-time views (``ModelConfig.test_zooms``) the interval is for."""
    folder = Path(weights)
    if zooms is not None:
        config = ModelConfig.load(folder / CONFIG_FILE)
        replace(config, test_zooms=zooms).save(folder / CONFIG_FILE)
    for name in (CALIBRATION_FILE, NOVELTY_FILE, REFERENCE_FILE):  # calibrate the bare model
        (folder / name).unlink(missing_ok=True)
    version = json.loads((folder / MANIFEST_FILE).read_text())["version"]
    write_manifest(folder, version)
    train = data.load_split(data_root, "train")
    order = np.random.default_rng(seed).permutation(len(train))
    if recompute_bn:
        model, config, _ = load_model(folder)
        subset = train.subset(np.isin(np.arange(len(train)), order[: BN_IMAGES * 2]))
        images = data.enhanced_images(subset, hand_crop=config.hand_crop)
        recompute_batchnorm(model, images, subset.male, config.input_size)
        save_weights(model, config, folder, version)
    predictor = BoneAgePredictor(folder)
    fit_cases = train.subset(np.isin(np.arange(len(train)), order[:fit_n]))
    _, fit_features, fit_usable = _read_cases(predictor, fit_cases, served=False)
    _, held_features, _ = _read_cases(
        predictor,
        train.subset(np.isin(np.arange(len(train)), order[fit_n : fit_n + held_out_n])),
        served=False,
    )
    novelty = NoveltyModel.fit(
        fit_features, held_features, age_balanced_weights(fit_cases.bone_age_months[fit_usable])
    )

    predictor.reference = _reference_set(predictor, train)
    predictor.reference.save(folder / REFERENCE_FILE)

    val = data.load_split(data_root, "val")
    (months, network_months, spread), val_features, usable = _read_cases(predictor, val, served=True)
    errors, scale = np.abs(months - val.bone_age_months[usable]), interval_scale(spread)
    bands = conformal_bands(months, errors / scale)
    width = half_widths(bands, months, scale)
    halves = np.arange(len(errors)) % 2 == 0
    cross_covered = [
        errors[~part]
        <= half_widths(conformal_bands(months[part], errors[part] / scale[part]), months[~part], scale[~part])
        for part in (halves, ~halves)
    ]
    quarter = np.argsort(np.argsort(spread, kind="stable")) * 4 // len(spread)  # by rank: never empty
    accepted = novelty.score(val_features) <= 1.0
    summary = {
        "interval_90_bands": bands,
        "interval_90_val_coverage": float(np.mean(errors <= width)),
        "interval_90_cross_fitted_coverage": float(np.mean(np.concatenate(cross_covered))),
        "interval_90_mean_width_months": float(2 * width.mean()),
        "interval_90_by_spread_quarter": [
            {
                "spread_months": [float(spread[quarter == q].min()), float(spread[quarter == q].max())],
                "val_coverage": float(np.mean(errors[quarter == q] <= width[quarter == q])),
                "mean_width_months": float(2 * width[quarter == q].mean()),
            }
            for q in range(4)
        ],
        "novelty_val_accepted": float(accepted.mean()),
        "test_zooms": list(predictor.config.test_zooms),
        "novelty_fit_n": fit_n,
        "novelty_held_out_n": held_out_n,
        "image_checks_val_accepted": float(usable.mean()),
        "reference_n": len(predictor.reference.ids),
        "val_metrics_tta": regression_metrics(months, val.bone_age_months[usable], val.male[usable]),
        "val_metrics_network_alone": regression_metrics(
            network_months, val.bone_age_months[usable], val.male[usable]
        ),
    }
    (folder / CALIBRATION_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    novelty.save(folder / NOVELTY_FILE)
    write_manifest(folder, version)
    return summary
