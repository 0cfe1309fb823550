"""Training on the RSNA set with the same preprocessing the app uses.

``python -m boneage_infer train --data ../shared/data/rsna-boneage --out runs/NAME``

Images are decoded once by ``preprocessing`` (cached as uint8 at the canonical size),
then on the fly given another acquisition's look (gamma, blur, noise, JPEG), CLAHE-enhanced
by ``preprocessing``, augmented (flip, rotation, zoom, shift, brightness, contrast),
resized to the stage's input size and scaled exactly as at inference.
After every epoch the BatchNorm statistics are recomputed on clean radiographs (precise
BN: the moving averages lag behind at high learning rates and mislead inference), then
``last/`` and, when val MAE improves, ``best/`` are written (each a complete weights
folder), with a row of ``log.csv`` and ``learning_curve.png``.

A run outlives the process that trains it: ``run.json`` holds its options, and ``state/``
its weights, Adam's moments and its place in the schedule, written after every epoch and
every ``checkpoint_minutes`` within one. ``train --continue runs/NAME`` picks it up there,
finishing an interrupted epoch with the steps it had left, on a fresh shuffle.
"""

from __future__ import annotations

import csv
import json
import shutil
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np

from . import data, metrics, preprocessing
from .model import (
    AGE_GROUP_EDGES_MONTHS,
    MODELS,
    ModelConfig,
    add_heads,
    age_bin_centres,
    build_model,
    freeze_before,
    grow,
    restack,
)
from .weights import CONFIG_FILE, WEIGHTS_FILE, save_network, save_weights

RUN_FILE = "run.json"  # the run's options, read back by ``continue_run``
STATE_DIR = "state"  # weights, optimizer and progress, to continue a run
OPTIMIZER_FILE = "optimizer.npz"
PROGRESS_FILE = "progress.json"
REWARM_STEPS = 100  # warm-up when a run continues without its optimizer state
AGE_BIN_SIGMA_MONTHS = 6.0  # about a radiologist's reading error against the atlas
BN_IMAGES = 1024  # clean train radiographs for the BatchNorm statistics after each epoch
PRECISIONS = ("auto", "bfloat16", "float32")
NATIVE_BF16_CPU_FLAGS = {"avx512_bf16", "amx_bf16"}


def bfloat16_is_fast() -> bool:
    """True on a GPU or a CPU with native bfloat16 (avx512_bf16 or AMX). Elsewhere TensorFlow
    emulates bfloat16: on a 2-core AVX2-only EPYC a batch of 16 at 299 px took 86 s, not 9 s."""
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        return True
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return bool(NATIVE_BF16_CPU_FLAGS & set(cpuinfo.split()))


def resolve_precision(precision: str) -> str:
    """'auto' -> 'bfloat16' where it is native (``bfloat16_is_fast``), else 'float32'."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if precision == "auto":
        return "bfloat16" if bfloat16_is_fast() else "float32"
    return precision


def parse_stages(text: str) -> list[tuple[int, int]]:
    """'160:2,224:6' -> [(160, 2), (224, 6)]: input size and epochs per stage."""
    stages = []
    for part in text.split(","):
        size, epochs = part.split(":")
        stages.append((int(size), int(epochs)))
    return stages


def age_group(months: np.ndarray) -> np.ndarray:
    return np.digitize(months, AGE_GROUP_EDGES_MONTHS)


def age_distribution(months: np.ndarray, bins: int) -> np.ndarray:
    """Soft targets of the label-distribution head: a Gaussian of width
    ``AGE_BIN_SIGMA_MONTHS`` about each bone age, over the bins (deep label distribution
    learning, Gao et al., IEEE TIP 2017), so that a near miss costs less than a far one."""
    centres = age_bin_centres(bins)
    distance = (centres[None, :] - np.asarray(months, float)[:, None]) / AGE_BIN_SIGMA_MONTHS
    weights = np.exp(-0.5 * distance**2)
    return (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)


def reframe(pixels: np.ndarray, scale: float) -> np.ndarray:
    """The same radiograph with a wider (scale < 1: shrunk, bordered with the image's own
    edge grey, as a larger film or collimation gives it) or tighter (scale > 1: centre
    crop) field of view, at the same size."""
    height, width = pixels.shape
    if scale >= 1:
        h, w = round(height / scale), round(width / scale)
        y, x = (height - h) // 2, (width - w) // 2
        return cv2.resize(pixels[y : y + h, x : x + w], (width, height), interpolation=cv2.INTER_AREA)
    edges = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    out = np.full_like(pixels, np.median(edges))
    h, w = round(height * scale), round(width * scale)
    y, x = (height - h) // 2, (width - w) // 2
    out[y : y + h, x : x + w] = cv2.resize(pixels, (w, h), interpolation=cv2.INTER_AREA)
    return out


def acquisition_variant(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The same radiograph as another detector or export might give it (before CLAHE):
    field of view, grey-level curve (gamma), blur, noise, JPEG compression, each at random.

    CLAHE amplifies sensor noise in flat regions, so without this a model learns the
    RSNA images' noise texture: sigma-2 grey-level noise moved readings by 5 months.
    A hand filling less of the frame was read differently (at 65 %: 8.4 months mean shift).
    """
    if rng.random() < 0.3:
        pixels = reframe(pixels, rng.uniform(0.6, 1.0))
    image = pixels.astype(np.float32)
    if rng.random() < 0.3:
        image = 255.0 * (image / 255.0) ** rng.uniform(0.75, 1.33)
    if rng.random() < 0.2:
        image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.3, 1.2))
    if rng.random() < 0.5:
        image += rng.normal(0.0, rng.uniform(0.5, 4.0), image.shape).astype(np.float32)
    image = np.clip(np.round(image), 0, 255).astype(np.uint8)
    if rng.random() < 0.3:
        quality = int(rng.integers(40, 96))
        image = cv2.imdecode(cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])[1], 0)
    return image


def augment(enhanced: np.ndarray, rng: np.random.Generator, size: int, strength: float = 1.0) -> np.ndarray:
    """A CLAHE-enhanced canonical image with random geometry and grey levels, as one model
    input: horizontal flip, rotation ±14°, zoom −15/+10 %, shift ±6 % (one affine warp,
    black outside the radiograph), brightness ±10 %, contrast ±20 % (ranges times
    ``strength``); then resized and scaled exactly as at inference
    (``preprocessing.to_model_input``)."""
    height, width = enhanced.shape
    if rng.random() < 0.5:
        enhanced = enhanced[:, ::-1]
    zoom = 1.0 / (1.0 + strength * rng.uniform(-0.15, 0.1))  # a negative factor zooms in
    angle = strength * rng.uniform(-14.4, 14.4)
    matrix = cv2.getRotationMatrix2D(((width - 1) / 2, (height - 1) / 2), angle, zoom)
    matrix[:, 2] += strength * rng.uniform(-0.06, 0.06, 2) * (width, height)
    image = cv2.warpAffine(
        np.ascontiguousarray(enhanced, np.float32), matrix, (width, height), flags=cv2.INTER_LINEAR
    )
    image += strength * rng.uniform(-0.1, 0.1) * 255.0
    image = (image - image.mean()) * (1.0 + strength * rng.uniform(-0.2, 0.2)) + image.mean()
    return preprocessing.to_model_input(np.clip(image, 0.0, 255.0), size)


def _dataset(
    canonical,
    male,
    targets,
    size: int,
    batch_size: int,
    seed: int,
    strength: float,
    acquisition: float,
    hand_crop: bool = False,
):
    """Batches of augmented training inputs: an acquisition variant for a fraction
    ``acquisition`` of them, the crop to the hand if ``hand_crop``, CLAHE, then geometry and
    grey levels (``augment``), all in OpenCV (a third of the cost of Keras' image layers)."""
    import tensorflow as tf

    rng = np.random.default_rng(seed)

    def one_input(pixels: np.ndarray) -> np.ndarray:
        if rng.random() < acquisition:
            pixels = acquisition_variant(pixels, rng)
        return augment(preprocessing.enhance(pixels, hand_crop), rng, size, strength)

    def transform(image, inputs_sex, target):
        image = tf.numpy_function(one_input, [image], tf.float32, stateful=True)
        image.set_shape((size, size, 1))
        return {"image": image, "sex": inputs_sex}, target

    sex = male.astype(np.float32)[:, None]
    return (
        tf.data.Dataset.from_tensor_slices((canonical, sex, targets))
        .shuffle(len(canonical), seed=seed, reshuffle_each_iteration=True)
        .map(transform, num_parallel_calls=tf.data.AUTOTUNE)
        .batch(batch_size, drop_remainder=True)
        .prefetch(tf.data.AUTOTUNE)
    )


def predict_outputs(
    model, config: ModelConfig, enhanced: np.ndarray, male: np.ndarray, batch_size: int = 32
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Bone age (months), age-group probabilities and the label-distribution head's
    expected bone age in months (each None without its head) for already-enhanced images,
    through the inference input path, in one pass."""
    months, groups, expected = [], [], []
    for start in range(0, len(enhanced), batch_size):
        chunk = enhanced[start : start + batch_size]
        images = np.stack([preprocessing.to_model_input(e, config.input_size) for e in chunk])
        sex = male[start : start + batch_size].astype(np.float32)[:, None]
        out = model.predict_on_batch({"image": images, "sex": sex})
        z = np.asarray(out["bone_age_z"], dtype=np.float64)[:, 0]
        months.append(config.target_mean_months + config.target_std_months * z)
        if "age_group" in out:
            groups.append(np.asarray(out["age_group"], dtype=np.float32))
        if "bone_age_bins" in out:
            expected.append(np.asarray(out["bone_age_bins"], np.float64) @ age_bin_centres(config.age_bins))
    return (
        np.concatenate(months),
        np.concatenate(groups) if groups else None,
        np.concatenate(expected) if expected else None,
    )


def predict_months(model, config: ModelConfig, enhanced: np.ndarray, male: np.ndarray) -> np.ndarray:
    """Bone age (months) for already-enhanced images, through the inference input path."""
    return predict_outputs(model, config, enhanced, male)[0]


def recompute_batchnorm(
    model, enhanced: np.ndarray, male: np.ndarray, size: int, batch_size: int = 32
) -> None:
    """Precise BN (Wu & Johnson 2021): set every BatchNorm's moving mean/variance to the
    average over clean, un-augmented radiographs, replacing the lagging moving averages.
    """
    from keras import layers

    norms = [layer for layer in model.layers if isinstance(layer, layers.BatchNormalization)]
    saved = [layer.momentum for layer in norms]
    sex = male.astype(np.float32)[:, None]
    for step, start in enumerate(range(0, len(enhanced) - batch_size + 1, batch_size)):
        for layer in norms:  # cumulative average: moving = (step * moving + batch) / (step + 1)
            layer.momentum = step / (step + 1)
        images = np.stack(
            [preprocessing.to_model_input(e, size) for e in enhanced[start : start + batch_size]]
        )
        model({"image": images, "sex": sex[start : start + batch_size]}, training=True)
    for layer, momentum in zip(norms, saved):
        layer.momentum = momentum


def _plot_curve(log_rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    epochs = [r["epoch"] for r in log_rows]
    ax.plot(epochs, [r["val_mae_months"] for r in log_rows], "o-", label="val MAE")
    ax.plot(epochs, [r["train_mae_months"] for r in log_rows], "s--", label="train MAE (augmented)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("MAE (months)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def check_options(
    model_name: str,
    grow_into: str | None,
    resume: Path | None,
    augment_strength: float = 1.0,
    acquisition: float = 1.0,
    restack_scale: float | None = None,
    age_bins: int = 0,
    dropout: float | None = None,
    init: str | None = None,
) -> None:
    """Raise ValueError, before any work, for an unknown model, a --grow or --restack without
    --resume, a scale outside 0 to 1, a number of bins of bone age outside 2-240, a
    dropout rate outside 0 to 0.9, or an --init other than imagenet, with --resume or for a
    network that is not the Xception topology."""
    for name in filter(None, (model_name, grow_into)):
        if name not in MODELS:
            raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    if init is not None:
        if init != "imagenet":
            raise ValueError(f"--init must be imagenet, not {init!r}")
        if resume:
            raise ValueError("--init imagenet starts a new network: give it without --resume")
        if (MODELS[model_name].width, MODELS[model_name].middle_blocks) != (1.0, 8):
            raise ValueError(
                f"--init imagenet needs the Xception topology (xception, xception-grey), not {model_name}"
            )
    if grow_into and not resume:
        raise ValueError("--grow needs --resume: it grows a trained model")
    if restack_scale is not None and not resume:
        raise ValueError("--restack needs --resume: it copies a trained model's blocks")
    if restack_scale is not None and not 0.0 < restack_scale <= 1.0:
        raise ValueError(f"--restack must be above 0 and at most 1, got {restack_scale}")
    for option, value in (("--augment", augment_strength), ("--acquisition", acquisition)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{option} must be between 0 and 1, got {value}")
    if age_bins and not 2 <= age_bins <= 240:
        raise ValueError(f"--age-bins must be between 2 and 240 (0: no such head), got {age_bins}")
    if dropout is not None and not 0.0 <= dropout <= 0.9:
        raise ValueError(f"--dropout must be between 0 and 0.9, got {dropout}")


def _schedule(learning_rate: float, steps_per_epoch: int, total_steps: int, rewarm_from: int | None = None):
    """Linear warm-up to the peak over half an epoch (a tenth of a short run), then cosine
    decay; ``rewarm_from`` (a step) warms up again from there, for a run continued without
    Adam's moments (they start afresh)."""
    import keras

    cosine = keras.optimizers.schedules.CosineDecay(
        0.0,
        decay_steps=total_steps,
        alpha=0.01,
        warmup_target=learning_rate,
        warmup_steps=min(steps_per_epoch // 2, total_steps // 10),  # also on resume: Adam starts afresh
    )
    if rewarm_from is None:
        return cosine

    class Rewarmed(keras.optimizers.schedules.LearningRateSchedule):
        def __call__(self, step):
            ramp = (keras.ops.cast(step, "float32") - rewarm_from + 1.0) / REWARM_STEPS
            return cosine(step) * keras.ops.clip(ramp, 0.0, 1.0)

    return Rewarmed()


def _save_state(model, config: ModelConfig, out: Path, progress: dict) -> None:
    """Weights, Adam's moments and ``progress`` to ``out/state``, written beside it first so
    that a process killed while writing leaves the previous state whole."""
    folder, partial = out / STATE_DIR, out / f"{STATE_DIR}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    config.save(partial / CONFIG_FILE)
    save_network(model, partial / WEIGHTS_FILE)
    store: dict = {}
    model.optimizer.save_own_variables(store)
    np.savez(partial / OPTIMIZER_FILE, **store)
    (partial / PROGRESS_FILE).write_text(json.dumps(progress))
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)


def _read_log(out: Path, epochs: int | None = None) -> list[dict]:
    """The rows of a run's log.csv (the first ``epochs`` of them), as numbers."""
    if not (out / "log.csv").is_file():
        return []
    rows = list(csv.DictReader(open(out / "log.csv", newline="")))[:epochs]
    return [{k: int(v) if k in ("epoch", "input_size") else float(v) for k, v in r.items()} for r in rows]


def _checkpoint_to_continue(out: Path) -> tuple[Path, dict]:
    """The folder a run continues from and its progress: ``state/`` (mid-epoch, with Adam's
    moments) or else ``last/`` (after the epochs in log.csv; runs of an earlier trainer)."""
    if (out / STATE_DIR / PROGRESS_FILE).is_file():
        return out / STATE_DIR, json.loads((out / STATE_DIR / PROGRESS_FILE).read_text())
    if (out / "last" / WEIGHTS_FILE).is_file():
        log = _read_log(out)
        elapsed = log[-1]["elapsed_min"] if log else 0.0
        return out / "last", {"epoch": len(log), "step": 0, "elapsed_min": elapsed, "continuations": 0}
    raise ValueError(f"{out} has no checkpoint to continue from (no {STATE_DIR}/ or last/)")


def train(
    data_root: Path,
    out: Path,
    model_name: str = "xception-small",
    stages: str = "224:8",
    batch_size: int = 16,
    learning_rate: float = 1e-3,
    resume: Path | None = None,
    grow_into: str | None = None,
    restack_scale: float | None = None,
    age_group_head: bool = False,
    age_bins: int = 0,
    hand_crop: bool = False,
    dropout: float | None = None,
    init: str | None = None,
    train_from: str | None = None,
    augment_strength: float = 1.0,
    acquisition: float = 1.0,
    precision: str = "auto",
    seed: int = 42,
    train_ids: list[str] | None = None,
    val_ids: list[str] | None = None,
    limit: int | None = None,
    checkpoint_minutes: float = 20.0,
    continuing: bool = False,
    verbose: int = 1,
) -> dict:
    """Train one model; returns the best val metrics. ``train_ids``/``val_ids`` override the split;
    ``grow_into`` names a deeper or wider registry model to grow the resumed one into;
    ``restack_scale`` copies the resumed model's first middle-flow blocks onto the others
    (``model.restack``);
    ``augment_strength`` scales the geometry and grey-level ranges, e.g. 0.5 for the last
    epochs; ``acquisition`` is the fraction of images given another acquisition's look;
    ``hand_crop`` trains (and so serves) the model on radiographs cropped to the hand (a model
    resumed from one trained so keeps it).
    ``dropout`` sets the head's dropout rate (default: the model's, 0.2 for a new one); it
    only acts in training, where at 0.2 it alone raises the error on clean train radiographs
    from 5.5 to 7.4 months (the shipped model, 512 radiographs).
    ``age_group_head`` and ``age_bins`` add those heads, to a resumed model too (they start
    at random, the rest as resumed).
    ``init="imagenet"`` starts the backbone from ImageNet (``pretrained.imagenet_weights``);
    ``train_from`` (a block such as ``exit1`` or ``middle0``) freezes the backbone before it.
    ``continuing`` picks the run in ``out`` up where it stopped (``continue_run``)."""
    import keras

    check_options(
        model_name, grow_into, resume, augment_strength, acquisition, restack_scale, age_bins, dropout, init
    )
    options = {k: v for k, v in locals().items() if k not in ("keras", "out", "continuing", "verbose")}
    keras.utils.set_random_seed(seed)
    precision = resolve_precision(precision)
    keras.mixed_precision.set_global_policy("mixed_bfloat16" if precision == "bfloat16" else "float32")
    if verbose:
        print(f"precision: {precision}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / RUN_FILE).write_text(json.dumps(options, indent=2, default=str))
    plan = parse_stages(stages)

    all_cases = data.load_cases(data_root / "images", data_root / "labels.csv")
    if train_ids is None:
        train_cases, val_cases = data.load_split(data_root, "train"), data.load_split(data_root, "val")
    else:
        train_set, val_set = set(train_ids), set(val_ids or [])
        train_cases = all_cases.subset(np.array([i in train_set for i in all_cases.ids]))
        val_cases = all_cases.subset(np.array([i in val_set for i in all_cases.ids]))
    if limit:
        train_cases = train_cases.subset(np.arange(len(train_cases)) < limit)
        val_cases = val_cases.subset(np.arange(len(val_cases)) < max(limit // 4, 8))
    cache = out.parent / "cache" if limit is None else None
    train_images = data.canonical_images(train_cases, cache)

    progress = {"epoch": 0, "step": 0, "elapsed_min": 0.0, "continuations": 0}
    if continuing:
        checkpoint, progress = _checkpoint_to_continue(out)
        progress["continuations"] += 1
        config = ModelConfig.load(checkpoint / CONFIG_FILE)
    elif resume:
        config = ModelConfig.load(Path(resume) / CONFIG_FILE)
    else:
        config = replace(
            MODELS[model_name],
            age_group_head=age_group_head,
            target_mean_months=float(train_cases.bone_age_months.mean()),
            target_std_months=float(train_cases.bone_age_months.std()),
        )
    config = replace(  # `calibrate --zooms` sets the views
        config,
        input_size=plan[-1][0],
        test_zooms=(1.0,),
        hand_crop=config.hand_crop or hand_crop,
        dropout=config.dropout if dropout is None else dropout,
    )
    val_images = data.enhanced_images(val_cases, cache, config.hand_crop)
    bn_index = np.random.default_rng(seed).permutation(len(train_cases))[:BN_IMAGES]
    bn_images = np.stack([preprocessing.enhance(image, config.hand_crop) for image in train_images[bn_index]])
    model = build_model(config)
    if continuing:
        model.load_weights(checkpoint / WEIGHTS_FILE)
    elif resume:
        model.load_weights(Path(resume) / WEIGHTS_FILE)
    elif init == "imagenet":
        from .pretrained import imagenet_weights, load_imagenet

        load_imagenet(model, imagenet_weights())
    if grow_into and not continuing:
        target = MODELS[grow_into]
        grown = replace(
            config,
            name=target.name,
            width=target.width,
            middle_blocks=target.middle_blocks,
            channels=target.channels,
        )
        model, config = grow(model, config, grown), grown
    if restack_scale is not None and not continuing:
        model = restack(model, config, restack_scale)
    heads = replace(
        config, age_group_head=config.age_group_head or age_group_head, age_bins=config.age_bins or age_bins
    )
    if heads != config and not continuing:
        model, config = add_heads(model, heads), heads
    if train_from:
        freeze_before(model, train_from)

    z = (train_cases.bone_age_months - config.target_mean_months) / config.target_std_months
    targets = {"bone_age_z": z.astype(np.float32)[:, None]}
    losses = {"bone_age_z": "mae"}
    loss_weights = {"bone_age_z": 5.0 if config.age_group_head or config.age_bins else 1.0}
    if config.age_group_head:
        targets["age_group"] = age_group(train_cases.bone_age_months)
        losses["age_group"] = "sparse_categorical_crossentropy"
        loss_weights["age_group"] = 1.0
    if config.age_bins:
        targets["bone_age_bins"] = age_distribution(train_cases.bone_age_months, config.age_bins)
        losses["bone_age_bins"] = "categorical_crossentropy"
        loss_weights["bone_age_bins"] = 1.0

    steps_per_epoch = len(train_cases) // batch_size
    total_steps = steps_per_epoch * sum(e for _, e in plan)
    done_steps = progress["epoch"] * steps_per_epoch + progress["step"]
    rewarm = continuing and not (checkpoint / OPTIMIZER_FILE).is_file()
    schedule = _schedule(learning_rate, steps_per_epoch, total_steps, done_steps if rewarm else None)
    model.compile(
        optimizer=keras.optimizers.Adam(schedule),
        loss=losses,
        loss_weights=loss_weights,
        jit_compile=False,
    )
    if continuing:
        model.optimizer.build(model.trainable_variables)
        if rewarm:
            model.optimizer.iterations.assign(done_steps)
        else:
            store = np.load(checkpoint / OPTIMIZER_FILE)
            if len(store.files) != len(model.optimizer.variables):
                raise ValueError(f"{checkpoint / OPTIMIZER_FILE} does not match this model's optimizer")
            model.optimizer.load_own_variables(store)
        if verbose:
            print(
                f"continuing {out} from {checkpoint.name}/ at epoch {progress['epoch'] + 1}, step "
                f"{progress['step']} of {steps_per_epoch}"
                + (f"; Adam starts afresh, warming up over {REWARM_STEPS} steps" if rewarm else ""),
                flush=True,
            )

    log_rows = _read_log(out, progress["epoch"]) if continuing else []
    best = {"mae": float("inf")}
    if continuing and (out / "best" / "val_metrics.json").is_file():
        best = json.loads((out / "best" / "val_metrics.json").read_text())
    started = time.time() - 60 * progress["elapsed_min"]

    def save_state(epoch: int, step: int) -> None:
        progress.update(epoch=epoch, step=step, elapsed_min=(time.time() - started) / 60)
        _save_state(model, config, out, progress)

    class Checkpoints(keras.callbacks.Callback):
        """After every epoch: precise BN, val metrics, log, last/ and best/, and the state;
        within an epoch, the state every ``checkpoint_minutes``."""

        def __init__(self, size: int, step_offset: int = 0):
            super().__init__()
            self.size, self.step_offset, self.saved = size, step_offset, time.time()

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            if time.time() - self.saved > 60 * checkpoint_minutes:
                save_state(self.epoch, self.step_offset + batch + 1)
                self.saved = time.time()

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            serving = replace(config, input_size=self.size)
            recompute_batchnorm(self.model, bn_images, train_cases.male[bn_index], self.size)
            predicted, probs, expected = predict_outputs(self.model, serving, val_images, val_cases.male)
            result = metrics.regression_metrics(predicted, val_cases.bone_age_months, val_cases.male)
            row = {
                "epoch": epoch + 1,
                "input_size": self.size,
                "learning_rate": float(schedule(self.model.optimizer.iterations)),
                "train_loss": float(logs.get("loss", float("nan"))),
                "train_mae_months": float(
                    logs.get("bone_age_z_loss", logs.get("loss", float("nan"))) * config.target_std_months
                ),
                "val_mae_months": result["mae"],
                "val_rmse_months": result["rmse"],
                "val_bias_months": result["bias"],
                "elapsed_min": (time.time() - started) / 60,
            }
            if probs is not None:
                groups, truth = probs.argmax(1), age_group(val_cases.bone_age_months)
                row["val_group_accuracy"] = float(np.mean(groups == truth))
                row["val_group_kappa"] = metrics.quadratic_weighted_kappa(
                    groups, truth, len(AGE_GROUP_EDGES_MONTHS) + 1
                )
            if expected is not None:  # the label-distribution head's reading, and its mean with the other
                row["val_bins_mae_months"] = float(np.mean(np.abs(expected - val_cases.bone_age_months)))
                row["val_mean_of_both_mae_months"] = float(
                    np.mean(np.abs((expected + predicted) / 2 - val_cases.bone_age_months))
                )
            log_rows.append(row)
            with open(out / "log.csv", "w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=list(log_rows[-1]))
                writer.writeheader()
                writer.writerows(log_rows)
            _plot_curve(log_rows, out / "learning_curve.png")
            version = f"{config.name}-{out.name}-e{epoch + 1}"
            save_weights(self.model, serving, out / "last", version)
            if result["mae"] < best["mae"]:
                best.update(result, epoch=epoch + 1, input_size=self.size)
                save_weights(self.model, serving, out / "best", version)
                (out / "best" / "val_metrics.json").write_text(json.dumps(best, indent=2))
            save_state(epoch + 1, 0)
            self.step_offset, self.saved = 0, time.time()
            print(
                f"epoch {epoch + 1}: val MAE {result['mae']:.2f} months "
                f"(best {best['mae']:.2f}), {row['elapsed_min']:.1f} min",
                flush=True,
            )

    stage_start = 0
    for size, epochs in plan:
        stage_end, first = stage_start + epochs, max(stage_start, progress["epoch"])
        if first < stage_end:
            dataset = _dataset(
                train_images,
                train_cases.male,
                targets,
                size,
                batch_size,
                seed + stage_start + 1000 * progress["continuations"],  # a fresh shuffle on each continuation
                augment_strength,
                acquisition,
                config.hand_crop,
            )
            if progress["step"] and first == progress["epoch"]:  # finish the interrupted epoch
                model.fit(
                    dataset.take(steps_per_epoch - progress["step"]),
                    epochs=first + 1,
                    initial_epoch=first,
                    callbacks=[Checkpoints(size, progress["step"])],
                    verbose=verbose,
                )
                first += 1
            if first < stage_end:
                model.fit(
                    dataset,
                    epochs=stage_end,
                    initial_epoch=first,
                    callbacks=[Checkpoints(size)],
                    verbose=verbose,
                )
        stage_start = stage_end
    return best


def continue_run(out: Path, precision: str = "auto", verbose: int = 1) -> dict:
    """Continue the run in ``out`` (a session ended, or the process was killed) with the
    options in its run.json, from its state/ (or last/), in ``precision`` (this machine's
    may differ from the one that started it); returns the best val metrics."""
    out = Path(out)
    if not (out / RUN_FILE).is_file():
        raise ValueError(f"{out} is not a run folder: it has no {RUN_FILE}")
    options = json.loads((out / RUN_FILE).read_text())
    progress = _checkpoint_to_continue(out)[1]  # fails before any work
    epochs = sum(e for _, e in parse_stages(options["stages"]))
    if progress["epoch"] >= epochs:
        print(f"{out} has finished its {epochs} epochs; nothing to continue", flush=True)
        return json.loads((out / "best" / "val_metrics.json").read_text())
    options.update(data_root=Path(options["data_root"]), precision=precision)
    return train(out=out, continuing=True, verbose=verbose, **options)


def cross_validate(data_root: Path, out: Path, folds: int, seed: int = 42, **kwargs) -> dict:
    """K-fold cross-validation over the train split; each fold's val is its held-out part."""
    cases = data.load_split(data_root, "train")
    order = np.random.default_rng(seed).permutation(len(cases))
    results = []
    for fold in range(folds):
        held_out = set(order[fold::folds].tolist())
        val_ids = [cases.ids[i] for i in range(len(cases)) if i in held_out]
        train_ids = [cases.ids[i] for i in range(len(cases)) if i not in held_out]
        results.append(
            train(
                data_root,
                Path(out) / f"fold{fold}",
                seed=seed,
                train_ids=train_ids,
                val_ids=val_ids,
                **kwargs,
            )
        )
    maes = [r["mae"] for r in results]
    summary = {
        "folds": folds,
        "mae_per_fold": maes,
        "mae_mean": float(np.mean(maes)),
        "mae_std": float(np.std(maes)),
    }
    (Path(out) / "cv_summary.json").write_text(json.dumps(summary, indent=2))
    return summary
