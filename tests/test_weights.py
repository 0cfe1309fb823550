"""Weights: bundled copy, sha256 manifest, Hub download from a local server, offline fallback,
averaging checkpoints."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import keras
import numpy as np
import pytest
from conftest import run_cli
from hub_server import HubServer

from boneage_infer.model import MODELS, build_model
from boneage_infer.weights import (
    BUNDLED_WEIGHTS,
    WeightsError,
    load_model,
    save_weights,
    verify,
    write_manifest,
)

REPO = "boneage/xception-rsna"


def test_bundled_weights_match_their_manifest():
    manifest = verify(BUNDLED_WEIGHTS)
    files = {"config.json", "model.weights.h5", "calibration.json", "novelty.npz", "reference.npz"}
    assert set(manifest["files"]) == files
    assert manifest["version"]


@pytest.fixture
def weights_copy(tmp_path):
    folder = tmp_path / "weights"
    shutil.copytree(BUNDLED_WEIGHTS, folder)
    return folder


@pytest.mark.parametrize("damage", ["flip-byte", "truncate", "delete", "wrong-file"])
@pytest.mark.parametrize("name", ["model.weights.h5", "novelty.npz", "reference.npz"])
def test_damaged_weights_are_rejected(weights_copy, damage, name):
    target = weights_copy / name
    data = target.read_bytes()
    if damage == "flip-byte":
        target.write_bytes(data[:5000] + bytes([data[5000] ^ 0xFF]) + data[5001:])
    elif damage == "truncate":
        target.write_bytes(data[: len(data) // 2])
    elif damage == "delete":
        target.unlink()
    else:
        target.write_bytes(b"not weights at all")
    with pytest.raises(WeightsError, match="sha256|Missing"):
        load_model(weights_copy)


def test_cli_refuses_damaged_weights(weights_copy, radiograph):
    (weights_copy / "model.weights.h5").write_bytes(b"\x89HDF\r\n" + bytes(100))
    result = run_cli("predict", str(radiograph), "--sex", "F", "--weights", str(weights_copy))
    assert result.returncode == 3
    assert "does not match its sha256" in result.stderr
    assert "bone age" not in result.stdout


def test_a_quality_gate_calibrated_by_an_older_version_is_a_clear_error(weights_copy, radiograph):
    """A folder whose novelty.npz has the one-layer format of earlier releases (intact, in its
    manifest) is refused with what to do, not read without a gate or with a KeyError."""
    novelty = weights_copy / "novelty.npz"
    with np.load(novelty) as gate:
        layer = next(key.split("/")[0] for key in gate.files if "/" in key)
        np.savez(
            novelty,
            mean=gate[f"{layer}/mean"],
            components=gate[f"{layer}/components"],
            scales=gate[f"{layer}/scales"],
            limits=gate[f"{layer}/limit"],
        )
    manifest = json.loads((weights_copy / "manifest.json").read_text())
    write_manifest(weights_copy, manifest["version"])
    result = run_cli("predict", str(radiograph), "--sex", "F", "--weights", str(weights_copy))
    assert result.returncode == 3
    assert "older format" in result.stderr and "calibrate" in result.stderr
    assert "bone age" not in result.stdout


def test_a_reference_set_without_its_arrays_is_a_clear_error(weights_copy, radiograph):
    """An intact reference.npz (in its manifest) that lacks the features is refused, not read."""
    with np.load(weights_copy / "reference.npz") as stored:
        np.savez(weights_copy / "reference.npz", male=stored["male"], ids=stored["ids"])
    write_manifest(weights_copy, json.loads((weights_copy / "manifest.json").read_text())["version"])
    result = run_cli("predict", str(radiograph), "--sex", "F", "--weights", str(weights_copy))
    assert result.returncode == 3
    assert "is not a reference set" in result.stderr and "calibrate" in result.stderr
    assert "bone age" not in result.stdout


def _hub_env(tmp_path, server_url: str) -> dict:
    return {
        "BONEAGE_HF_REPO": REPO,
        "HF_ENDPOINT": server_url,
        "HF_HOME": str(tmp_path / "hf-home"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }


def test_hub_download_then_offline_fallback(weights_copy, tmp_path, radiograph):
    manifest = json.loads((weights_copy / "manifest.json").read_text())
    manifest["version"] = "served-by-local-hub"
    (weights_copy / "manifest.json").write_text(json.dumps(manifest))

    with HubServer(REPO, weights_copy) as hub:
        env = _hub_env(tmp_path, hub.url)
        online = run_cli("predict", str(radiograph), "--sex", "M", "--json", env=env)
        assert online.returncode == 0, online.stderr
        reading = json.loads(online.stdout.splitlines()[-1])
        assert reading["model_version"] == "served-by-local-hub"
        fetched = {r.split()[1].rsplit("/", 1)[-1] for r in hub.requests if r.startswith("GET")}
        assert fetched == {"manifest.json", *manifest["files"]}
    cached = list(
        (tmp_path / "hf-home" / "hub").glob("models--boneage--xception-rsna/snapshots/*/model.weights.h5")
    )
    assert len(cached) == 1

    # server gone: HF_HUB_OFFLINE=1 reads the cache with no request
    offline = run_cli("predict", str(radiograph), "--sex", "M", "--json", env={**env, "HF_HUB_OFFLINE": "1"})
    assert offline.returncode == 0, offline.stderr
    assert json.loads(offline.stdout.splitlines()[-1]) == reading


def test_hub_repo_without_weights_is_a_clear_error(tmp_path, radiograph):
    (tmp_path / "empty").mkdir()
    with HubServer(REPO, tmp_path / "empty") as hub:
        result = run_cli("predict", str(radiograph), "--sex", "M", env=_hub_env(tmp_path, hub.url))
    assert result.returncode == 3
    assert "Could not get weights from Hub repo boneage/xception-rsna" in result.stderr


def test_offline_without_cache_is_a_clear_error(tmp_path, radiograph):
    env = {**_hub_env(tmp_path, "http://127.0.0.1:9"), "HF_HUB_OFFLINE": "1"}
    result = run_cli("predict", str(radiograph), "--sex", "M", env=env)
    assert result.returncode == 3 and "Could not get weights" in result.stderr


def test_average_writes_the_mean_of_checkpoints_of_one_model(tmp_path, capsys):
    from boneage_infer.__main__ import main

    config = MODELS["xception-tiny"]
    folders = []
    for seed in (1, 2):
        keras.utils.set_random_seed(seed)
        folders.append(tmp_path / f"run{seed}")
        save_weights(build_model(config), config, folders[-1], f"tiny-{seed}")
    assert main(["average", *map(str, folders), "--out", str(tmp_path / "soup")]) == 0
    soup, soup_config, manifest = load_model(tmp_path / "soup")  # verifies the new manifest
    assert manifest["version"] == "soup" and soup_config == config
    first, second = (load_model(folder)[0].get_weights() for folder in folders)
    assert any(not np.array_equal(a, b) for a, b in zip(first, second))
    for mean, a, b in zip(soup.get_weights(), first, second):
        np.testing.assert_allclose(mean, (a + b) / 2, rtol=1e-6)

    # a checkpoint of the same network trained at another input size and dropout rate (and
    # read through other views) averages; the soup keeps the first folder's settings
    larger = replace(config, input_size=config.input_size + 32, test_zooms=(1.0, 1.1), dropout=0.0)
    save_weights(load_model(folders[1])[0], larger, tmp_path / "larger", "larger")
    assert main(["average", str(folders[0]), str(tmp_path / "larger"), "--out", str(tmp_path / "mixed")]) == 0
    mixed, mixed_config, _ = load_model(tmp_path / "mixed")
    assert mixed_config == config
    for mean, expected in zip(mixed.get_weights(), soup.get_weights()):
        np.testing.assert_allclose(mean, expected, rtol=1e-6)

    # bad inputs: a clear message, exit status 2, nothing written
    deeper = replace(config, middle_blocks=config.middle_blocks + 1)
    save_weights(build_model(deeper), deeper, tmp_path / "deeper", "deeper")
    for argv, message in (
        ([folders[0], tmp_path / "deeper"], "is not the same network"),
        ([folders[0], tmp_path / "missing"], "No manifest.json"),
        ([folders[0]], "at least two"),
    ):
        assert main(["average", *map(str, argv), "--out", str(tmp_path / "bad")]) == 2
        assert message in capsys.readouterr().err
        assert not (tmp_path / "bad").exists()
    assert main(["average", *map(str, folders), "--out", str(tmp_path / "soup")]) == 2
    assert "already exists" in capsys.readouterr().err
