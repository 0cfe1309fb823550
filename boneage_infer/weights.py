"""Finding, verifying and loading model weights.

Resolution order (``resolve_weights``):

1. an explicit path, or ``BONEAGE_WEIGHTS``;
2. a Hugging Face Hub repo, ``BONEAGE_HF_REPO`` (optional ``BONEAGE_HF_REVISION``),
   downloaded and cached by huggingface_hub (honours ``HF_HUB_OFFLINE``/``HF_ENDPOINT``);
3. the copy bundled in weights/ (the default; works offline on a fresh clone).

Every weights folder holds ``config.json``, ``model.weights.h5`` and ``manifest.json``
with each file's sha256; a wrong, truncated or missing file raises ``WeightsError``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from .model import ModelConfig

BUNDLED_WEIGHTS = Path(__file__).resolve().parent.parent / "weights"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.weights.h5"
MANIFEST_FILE = "manifest.json"
CALIBRATION_FILE = "calibration.json"
NOVELTY_FILE = "novelty.npz"
REFERENCE_FILE = "reference.npz"
CHECKED_FILES = (CONFIG_FILE, WEIGHTS_FILE)  # always required
OPTIONAL_FILES = (CALIBRATION_FILE, NOVELTY_FILE, REFERENCE_FILE)  # by `calibrate`; checked when listed


class WeightsError(RuntimeError):
    """The weights are missing, damaged or do not match their manifest."""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(folder: Path, version: str) -> dict:
    """Record the sha256 and size of each weights file, plus a version label."""
    folder = Path(folder)
    manifest = {
        "version": version,
        "files": {
            name: {"sha256": sha256(folder / name), "bytes": (folder / name).stat().st_size}
            for name in (*CHECKED_FILES, *OPTIONAL_FILES)
            if (folder / name).is_file()
        },
    }
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def verify(folder: Path) -> dict:
    """Check every file against the manifest; return the manifest."""
    folder = Path(folder)
    manifest_path = folder / MANIFEST_FILE
    if not manifest_path.is_file():
        raise WeightsError(f"No {MANIFEST_FILE} in {folder}: cannot check the weights.")
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
    except (ValueError, KeyError) as exc:
        raise WeightsError(f"{manifest_path} is not a valid manifest ({exc}).") from None
    for name in dict.fromkeys((*CHECKED_FILES, *files)):
        path = folder / name
        if not path.is_file():
            raise WeightsError(f"Missing weights file: {path}")
        expected = files.get(name, {}).get("sha256")
        if sha256(path) != expected:
            raise WeightsError(
                f"{path} does not match its sha256 in {MANIFEST_FILE} (wrong, truncated or corrupted file)."
            )
    return manifest


def _download_from_hub(repo_id: str, revision: str | None) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        manifest = Path(hf_hub_download(repo_id, MANIFEST_FILE, revision=revision))
        names = json.loads(manifest.read_text()).get("files", {})
        for name in dict.fromkeys((*CHECKED_FILES, *names)):
            hf_hub_download(repo_id, name, revision=revision)
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError, ValueError) as exc:
        raise WeightsError(f"Could not get weights from Hub repo {repo_id}: {exc}") from None
    return manifest.parent


def resolve_weights(path: str | Path | None = None) -> Path:
    """Return the folder holding the weights to use (see module docstring for the order)."""
    explicit = path or os.environ.get("BONEAGE_WEIGHTS")
    if explicit:
        folder = Path(explicit)
        if folder.is_file():
            folder = folder.parent
        if not folder.is_dir():
            raise WeightsError(f"Weights folder not found: {folder}")
        return folder
    repo_id = os.environ.get("BONEAGE_HF_REPO")
    if repo_id:
        return _download_from_hub(repo_id, os.environ.get("BONEAGE_HF_REVISION") or None)
    return BUNDLED_WEIGHTS


def save_network(model, path: Path) -> None:
    """The network's weights alone. A compiled model's ``save_weights`` would add Adam's
    moments (three times the file); training keeps those in ``state/`` when it needs them."""
    from keras.src.saving import saving_lib  # public API has no skip; keras is pinned

    optimizer = getattr(model, "optimizer", None)
    saving_lib.save_weights_only(model, path, objects_to_skip=[optimizer] if optimizer else None)


def save_weights(model, config: ModelConfig, folder: Path, version: str) -> None:
    """Write config, weights and manifest to ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config.save(folder / CONFIG_FILE)
    save_network(model, folder / WEIGHTS_FILE)
    write_manifest(folder, version)


def load_model(folder: str | Path):
    """Verify and load the network in a weights folder. Returns (keras model, config, manifest)."""
    from .model import build_model

    folder = Path(folder)
    manifest = verify(folder)
    config = ModelConfig.load(folder / CONFIG_FILE)
    model = build_model(config)
    try:
        model.load_weights(folder / WEIGHTS_FILE)
    except Exception as exc:  # h5py/keras raise several types for bad files
        raise WeightsError(f"Cannot load {folder / WEIGHTS_FILE}: {exc}") from None
    return model, config, manifest


def average_weights(folders: list[Path], out: Path, version: str) -> None:
    """Write the element-wise mean of several checkpoints of one architecture to ``out``
    (weight averaging, "model soup": Wortsman et al., ICML 2022). Useful for runs fine-tuned
    from the same weights; BatchNorm statistics must then be recomputed
    (``calibrate --recompute-bn``). The checkpoints may have been trained at different input
    sizes; the average reads at the first one's input size, with its test-time views."""
    import numpy as np

    if len(folders) < 2:
        raise ValueError("Give at least two weights folders to average.")
    if Path(out).exists() and any(Path(out).iterdir()):
        raise ValueError(f"{out} already exists and is not empty: choose a new folder.")
    model, config, _ = load_model(folders[0])
    total = [np.asarray(w, dtype=np.float64) for w in model.get_weights()]
    for folder in folders[1:]:
        other, other_config, _ = load_model(folder)
        if not config.same_network(other_config):
            raise WeightsError(
                f"{folder} is not the same network as {folders[0]}: {other_config} vs {config}"
            )
        total = [t + w for t, w in zip(total, other.get_weights())]
    model.set_weights([(t / len(folders)).astype(w.dtype) for t, w in zip(total, model.get_weights())])
    save_weights(model, config, out, version)
