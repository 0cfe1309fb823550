"""Training on real radiographs (tiny model, few steps) and the shipped model's accuracy."""

from __future__ import annotations

import csv
import json

import cv2
import h5py
import numpy as np
import pytest
from conftest import DATA, run_cli

from boneage_infer import data
from boneage_infer.predictor import BoneAgePredictor
from boneage_infer.weights import BUNDLED_WEIGHTS


def test_short_training_run_learns_and_checkpoints_reload(tmp_path):
    """On radiographs cropped to the hand (``--hand-crop``): the checkpoint is served so too.
    With a label-distribution head (``--age-bins``), whose reading the log reports as well."""
    from boneage_infer.preprocessing import enhance, read_radiograph
    from boneage_infer.train import predict_months, train

    out = tmp_path / "run"
    best = train(
        DATA,
        out,
        model_name="xception-tiny",
        stages="96:6",
        batch_size=8,
        learning_rate=1e-3,
        limit=64,
        hand_crop=True,
        age_bins=12,
        precision="float32",
        verbose=0,
    )
    log = list(csv.DictReader(open(out / "log.csv")))
    assert len(log) == 6
    assert all(0 < float(row["val_bins_mae_months"]) < 120 for row in log)
    # 48 steps: single epochs are noisy (augmentation, 8 batches), so compare the last two
    # epochs' mean loss with the first epoch's (margin ~0.12-0.16 over seeds 1-3 here)
    losses = [float(row["train_loss"]) for row in log]
    assert np.mean(losses[-2:]) < losses[0]
    assert best["mae"] < float(log[0]["val_mae_months"])
    assert (out / "learning_curve.png").stat().st_size > 1000
    for folder in ("best", "last"):
        assert {p.name for p in (out / folder).iterdir()} >= {
            "config.json",
            "model.weights.h5",
            "manifest.json",
        }
        with h5py.File(out / folder / "model.weights.h5") as weights:
            assert "optimizer" not in weights  # Adam's moments are training state, not the model
    # the checkpoint reloads to the same predictions the run measured
    val = data.load_split(DATA, "val")
    val = val.subset(np.arange(len(val)) < best["n"])  # the run validates on val[:limit // 4]
    reloaded = BoneAgePredictor(out / "best")
    assert reloaded.config.hand_crop and reloaded.config.age_bins == 12
    images = data.enhanced_images(val, hand_crop=True)
    months = predict_months(reloaded.model, reloaded.config, images, val.male)
    assert np.mean(np.abs(months - val.bone_age_months)) == pytest.approx(best["mae"], abs=1e-3)
    prepared = reloaded.prepare(val.paths[0])
    np.testing.assert_array_equal(prepared.enhanced, images[0])
    assert np.abs(prepared.enhanced.astype(float) - enhance(read_radiograph(val.paths[0]).pixels)).mean() > 2


def test_soft_age_targets_peak_at_the_bone_age_and_sum_to_one():
    from boneage_infer.model import age_bin_centres
    from boneage_infer.train import age_distribution

    targets = age_distribution(np.array([3.0, 100.0, 237.0]), 40)
    np.testing.assert_allclose(targets.sum(axis=1), 1.0, atol=1e-6)
    assert list(targets.argmax(axis=1)) == [0, 16, 39]
    assert targets[1] @ age_bin_centres(40) == pytest.approx(100.0, abs=0.5)  # symmetric away from the ends


def test_a_killed_run_continues_where_it_stopped_with_or_without_its_optimizer_state(tmp_path):
    """A session ends mid-epoch: the process dies, and ``--continue`` finishes the run."""
    import shutil
    import signal
    import subprocess
    import sys
    import time

    from conftest import ROOT

    from boneage_infer.train import continue_run

    run = tmp_path / "run"
    args = ["--data", str(DATA), "--out", str(run), "--model", "xception-tiny", "--stages", "96:2,112:1"]
    args += ["--batch-size", "8", "--limit", "64", "--precision", "float32", "--checkpoint-minutes", "0"]
    args += ["--dropout", "0"]  # an option the continued run must keep
    process = subprocess.Popen([sys.executable, "-m", "boneage_infer", "train", *args], cwd=ROOT)
    progress, deadline = {}, time.time() + 240
    while not (progress.get("epoch", 0) >= 1 and progress.get("step", 0) >= 1):  # within epoch 2
        assert process.poll() is None and time.time() < deadline, "the run ended before it was killed"
        try:
            progress = json.loads((run / "state" / "progress.json").read_text())
        except (OSError, ValueError):  # not written yet, or being replaced
            pass
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    first_epoch = list(csv.DictReader(open(run / "log.csv")))
    assert 1 <= len(first_epoch) < 3  # killed before the end

    older = tmp_path / "older"  # a run folder without state/, as an earlier trainer left it
    shutil.copytree(run, older)
    shutil.rmtree(older / "state")
    for folder in (run, older):
        best = continue_run(folder, precision="float32", verbose=0)
        log = list(csv.DictReader(open(folder / "log.csv")))
        assert [int(r["epoch"]) for r in log] == [1, 2, 3]
        assert log[0] == first_epoch[0]  # not trained again
        assert [int(r["input_size"]) for r in log] == [96, 96, 112]
        # the schedule ran to its end exactly once: 3 epochs of 64 // 8 steps, the interrupted
        # one finished with the steps it had left
        assert int(np.load(folder / "state" / "optimizer.npz")["0"]) == 24
        assert json.loads((folder / "state" / "progress.json").read_text())["continuations"] == 1
        assert best["mae"] == min(float(r["val_mae_months"]) for r in log)
        continued = BoneAgePredictor(folder / "last").config
        assert continued.input_size == 112 and continued.dropout == 0.0
    finished = json.loads((run / "best" / "val_metrics.json").read_text())
    assert continue_run(run, verbose=0) == finished  # a finished run has nothing left to do
    assert len(list(csv.DictReader(open(run / "log.csv")))) == 3
    assert "--continue" in run_cli("train", "--help").stdout
    missing = run_cli("train", "--continue", str(tmp_path / "nothing"))
    assert missing.returncode == 2 and "has no run.json" in missing.stderr


def _small_data_root(folder, n_train: int, n_val: int):
    """An RSNA-layout folder of the first train and val radiographs (images linked, not copied)."""
    (folder / "images").mkdir(parents=True)
    splits = list(csv.DictReader(open(DATA / "splits.csv", newline="")))
    train = [r for r in splits if r["split"] == "train"][:n_train]
    keep = train + [r for r in splits if r["split"] == "val"][:n_val]
    ids = {r["id"] for r in keep}
    labels = [r for r in csv.DictReader(open(DATA / "labels.csv", newline="")) if r["id"] in ids]
    for name, rows in (("splits.csv", keep), ("labels.csv", labels)):
        with open(folder / name, "w", newline="") as handle:
            writer = csv.DictWriter(handle, rows[0].keys())
            writer.writeheader()
            writer.writerows(rows)
    for row in keep:
        (folder / "images" / f"{row['id']}.jpg").symlink_to(DATA / "images" / f"{row['id']}.jpg")
    return folder


def test_calibrate_sets_the_views_and_writes_a_gate_and_interval_that_load(tmp_path):
    from boneage_infer.model import MODELS, build_model
    from boneage_infer.weights import save_weights, sha256, verify

    root = _small_data_root(tmp_path / "data", n_train=80, n_val=24)
    folder = tmp_path / "tiny"
    save_weights(build_model(MODELS["xception-tiny"]), MODELS["xception-tiny"], folder, "tiny-test")
    before = sha256(folder / "model.weights.h5")
    result = run_cli(
        "calibrate", "--data", str(root), "--weights", str(folder), "--fit-n", "40", "--held-out-n", "40",
        "--zooms", "1,1.1",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["test_zooms"] == [1.0, 1.1] and summary["val_metrics_tta"]["n"] == 24
    assert json.loads((folder / "config.json").read_text())["test_zooms"] == [1.0, 1.1]
    assert sha256(folder / "model.weights.h5") == before  # no --recompute-bn: the weights are untouched
    assert set(verify(folder)["files"]) >= {"config.json", "calibration.json", "novelty.npz", "reference.npz"}
    predictor = BoneAgePredictor(folder)
    assert predictor.config.test_zooms == (1.0, 1.1) and predictor.novelty is not None
    train_ids = set(data.load_split(root, "train").ids)  # the reference set: train only, all of it
    assert set(predictor.reference.ids) <= train_ids and len(predictor.reference.ids) >= len(train_ids) - 2
    image = predictor.prepare(root / "images" / next((root / "images").iterdir()).name)
    estimate = predictor.infer(image.model_input[None], [True])
    months, spread = float(estimate.months[0]), float(estimate.reference_spread_months[0])
    assert np.isfinite(months) and spread > 0
    assert predictor._interval(months, spread)[1] > months
    assert predictor._interval(months, None) is None  # no reference set, no calibrated interval


def test_train_refuses_an_unknown_model_growing_without_resume_bad_scale_bins_or_precision(tmp_path, capsys):
    from boneage_infer.__main__ import main

    out = tmp_path / "run"
    for extra, message in (
        (["--model", "resnet"], "unknown model 'resnet'; known: xception"),
        (["--resume", "weights", "--grow", "xception-huge"], "unknown model 'xception-huge'"),
        (["--grow", "xception-wide"], "--grow needs --resume"),
        (["--restack", "0.25"], "--restack needs --resume"),
        (["--resume", "weights", "--restack", "0"], "--restack must be above 0 and at most 1, got 0.0"),
        (["--augment", "1.5"], "--augment must be between 0 and 1, got 1.5"),
        (["--acquisition", "-0.1"], "--acquisition must be between 0 and 1, got -0.1"),
        (["--age-bins", "1"], "--age-bins must be between 2 and 240 (0: no such head), got 1"),
        (["--dropout", "1.5"], "--dropout must be between 0 and 0.9, got 1.5"),
        (["--precision", "half"], "precision must be one of auto, bfloat16, float32, not 'half'"),
    ):
        assert main(["train", "--data", str(DATA), "--out", str(out), *extra]) == 2
        assert message in capsys.readouterr().err
        assert not out.exists()


def test_shipped_weights_reach_the_card_figure_on_a_fixed_val_subset(predictor):
    card = json.loads((BUNDLED_WEIGHTS / "val_metrics.json").read_text())
    n = card["fixed_subset"]["n"]
    val = data.load_split(DATA, "val")
    val = val.subset(np.arange(len(val)) < n)
    readings = predictor.predict_batch(val.paths, ["M" if m else "F" for m in val.male])
    read = np.array([not isinstance(r, Exception) for r in readings])
    assert (~read).sum() == card["fixed_subset"]["failed"]  # the quality gate rejects the same cases
    months = np.array([r.bone_age_months for r in readings if not isinstance(r, Exception)])
    mae = float(np.mean(np.abs(months - val.bone_age_months[read])))
    assert mae == pytest.approx(card["fixed_subset"]["mae"], abs=0.3)
    assert card["val"]["mae"] <= 12.0  # a trained model, far better than the ~34 of predicting the mean


def test_acquisition_variants_keep_the_radiograph_and_reframe_the_hand():
    from boneage_infer.train import acquisition_variant, reframe

    val = data.load_split(DATA, "val")
    pixels = data.canonical_images(val.subset(np.arange(len(val)) < 1))[0]
    identical = reframe(pixels, 1.0)
    np.testing.assert_array_equal(identical, pixels)
    wider, tighter = reframe(pixels, 0.6), reframe(pixels, 1.25)
    assert wider.shape == tighter.shape == pixels.shape and wider.dtype == np.uint8
    # wider: the whole radiograph shrunk into the middle, the rest the film's edge grey
    edge = np.median(np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]]))
    assert np.all(wider[:40] == edge) and np.all(wider[:, -40:] == edge)
    inner = wider[60:239, 60:239].astype(float)
    assert (
        np.corrcoef(inner.ravel(), cv2.resize(pixels, (179, 179), interpolation=cv2.INTER_AREA).ravel())[0, 1]
        > 0.99
    )
    # tighter: the centre magnified
    centre = cv2.resize(pixels[30:269, 30:269], pixels.shape[::-1], interpolation=cv2.INTER_AREA)
    assert np.corrcoef(tighter.ravel(), centre.ravel())[0, 1] > 0.99
    rng = np.random.default_rng(0)
    variants = [acquisition_variant(pixels, rng) for _ in range(20)]
    assert all(v.shape == pixels.shape and v.dtype == np.uint8 for v in variants)
    assert sum(not np.array_equal(v, pixels) for v in variants) >= 15  # most are changed


def test_augmented_inputs_are_the_same_radiograph_moved_and_scaled_like_serving():
    from boneage_infer.preprocessing import clahe, to_model_input
    from boneage_infer.train import augment

    val = data.load_split(DATA, "val")
    enhanced = clahe(data.canonical_images(val.subset(np.arange(len(val)) < 1))[0])
    plain = to_model_input(enhanced, 256)
    rng = np.random.default_rng(0)
    inputs = [augment(enhanced, rng, 256) for _ in range(20)]
    assert all(x.shape == plain.shape and x.dtype == np.float32 for x in inputs)
    assert all(-1.0 <= x.min() and x.max() <= 1.0 + 1e-6 for x in inputs)
    assert len({x.tobytes() for x in inputs}) == 20  # every draw differs

    def similarity(x: np.ndarray) -> float:  # the radiograph or its mirror image
        return max(np.corrcoef(x.ravel(), y.ravel())[0, 1] for y in (plain, plain[:, ::-1]))

    # a small rotation, zoom and shift of the same hand, not another image
    assert np.median([similarity(x) for x in inputs]) > 0.5
    other = to_model_input(clahe(data.canonical_images(val.subset(np.arange(len(val)) == 1))[0]), 256)
    assert similarity(other) < np.median([similarity(x) for x in inputs])
    # --augment scales the ranges: at 0 only the flip is left; half strength stays closer
    assert all(similarity(augment(enhanced, rng, 256, strength=0.0)) > 0.999 for _ in range(5))
    milder = [similarity(augment(enhanced, rng, 256, strength=0.5)) for _ in range(20)]
    assert np.median(milder) > np.median([similarity(x) for x in inputs])


def test_acquisition_fraction_sets_how_many_training_inputs_get_another_look():
    from boneage_infer.preprocessing import clahe, to_model_input
    from boneage_infer.train import _dataset

    val = data.load_split(DATA, "val")
    val = val.subset(np.arange(len(val)) < 8)
    pixels = data.canonical_images(val)
    targets = {"bone_age_z": np.zeros((8, 1), np.float32)}

    def changed(acquisition: float) -> int:
        """How many of the 8 inputs differ from the plain serving input (geometry off)."""
        enhanced = [clahe(p).astype(np.float32) for p in pixels]  # augment resizes in float
        plain = [to_model_input(image, 128) for e in enhanced for image in (e, e[:, ::-1])]
        batch = next(iter(_dataset(pixels, val.male, targets, 128, 8, 0, 0.0, acquisition)))[0]["image"]
        return sum(min(np.abs(x - y).max() for y in plain) > 1e-3 for x in np.asarray(batch))

    assert changed(0.0) == 0  # every input exactly what serving would feed the network
    assert changed(1.0) >= 4  # each variant draws noise, gamma, blur, JPEG or framing at random
