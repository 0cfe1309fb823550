"""The network: canonical Xception topology, configurable size, growing (deeper, wider), config round trip."""

from __future__ import annotations

from dataclasses import replace

import keras
import numpy as np
import pytest
from conftest import DATA

from boneage_infer import data, preprocessing
from boneage_infer.model import (
    MODELS,
    ModelConfig,
    add_heads,
    age_bin_centres,
    build_model,
    deepen,
    grow,
    restack,
    xception_backbone,
)


def _backbone(config: ModelConfig, size: int) -> keras.Model:
    image = keras.Input((size, size, config.channels))
    return keras.Model(image, xception_backbone(image, config))


def test_canonical_xception_topology_is_buildable():
    ours = _backbone(MODELS["xception"], 299)
    reference = keras.applications.Xception(weights=None, include_top=False, input_shape=(299, 299, 3))
    assert ours.count_params() == reference.count_params() == 20_861_480
    assert ours.output_shape == reference.output_shape == (None, 10, 10, 2048)
    kinds = lambda m: [type(layer).__name__ for layer in m.layers if type(layer).__name__ != "InputLayer"]  # noqa: E731
    assert sorted(kinds(ours)) == sorted(kinds(reference))
    grey = _backbone(MODELS["xception-grey"], 299)  # the same on one greyscale channel
    assert grey.count_params() == reference.count_params() - 2 * 3 * 3 * 32
    assert grey.output_shape == reference.output_shape


def test_small_variant_and_multi_input_head():
    config = MODELS["xception-small"]
    model = build_model(replace(config, age_group_head=True))
    assert {t.name for t in model.inputs} >= {"image", "sex"} or len(model.inputs) == 2
    assert 3_000_000 < model.count_params() < 5_000_000
    out = model.predict({"image": np.zeros((2, 160, 160, 1)), "sex": np.array([[0.0], [1.0]])}, verbose=0)
    assert out["bone_age_z"].shape == (2, 1) and out["age_group"].shape == (2, 5)
    np.testing.assert_allclose(out["age_group"].sum(1), 1.0, rtol=1e-5)


def test_config_round_trip(tmp_path):
    config = replace(MODELS["xception-small"], input_size=192, target_mean_months=120.5)
    config.save(tmp_path / "config.json")
    assert ModelConfig.load(tmp_path / "config.json") == config
    views = replace(config, test_zooms=(1.0, 1.06, 0.94))
    views.save(tmp_path / "config.json")
    assert ModelConfig.load(tmp_path / "config.json") == views


def test_a_config_without_test_views_reads_one_view_and_bad_zooms_are_refused(tmp_path):
    (tmp_path / "config.json").write_text('{"name": "xception-small", "input_size": 299}')
    assert ModelConfig.load(tmp_path / "config.json").test_zooms == (1.0,)  # folders from before the views
    for zooms in [(1.06, 0.94), (1.0, 3.0), (1.0, 0.0)]:
        with pytest.raises(ValueError, match="test_zooms must include 1.0"):
            ModelConfig(test_zooms=zooms)


def _trained_looking(config: ModelConfig) -> keras.Model:
    """A model with non-trivial batch-norm statistics, as a trained one has."""
    model = build_model(config)
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights([gamma * 1.5, beta + 0.1, mean + rng.normal(0, 0.1, mean.shape), var * 2])
    return model


def _val_inputs(n: int = 3) -> dict:
    val = data.load_split(DATA, "val")
    val = val.subset(np.arange(len(val)) < n)
    images = np.stack([preprocessing.to_model_input(e, 96) for e in data.enhanced_images(val)])
    return {"image": images, "sex": val.male[:, None].astype("float32")}


def test_deepening_keeps_the_reading_and_adds_trainable_blocks():
    config = replace(MODELS["xception-tiny"], middle_blocks=1)
    source = _trained_looking(config)
    deeper = deepen(source, replace(config, middle_blocks=3))
    assert deeper.count_params() > source.count_params()
    assert "middle2_add" in {layer.name for layer in deeper.layers}
    inputs = _val_inputs()
    before = source.predict(inputs, verbose=0)["bone_age_z"]
    np.testing.assert_allclose(deeper.predict(inputs, verbose=0)["bone_age_z"], before, atol=1e-5)
    # the new blocks add nothing yet but can learn: gamma 0 at the end, ordinary weights inside
    assert np.all(deeper.get_layer("middle2_c_bn").gamma.numpy() == 0)
    assert np.any(deeper.get_layer("middle2_a_sepconv").get_weights()[0] != 0)


def test_added_heads_leave_the_bone_age_reading_and_give_a_distribution_over_bins():
    config = MODELS["xception-tiny"]
    source = _trained_looking(config)
    wider = add_heads(source, replace(config, age_group_head=True, age_bins=40))
    inputs = _val_inputs()
    out = wider.predict(inputs, verbose=0)
    before = source.predict(inputs, verbose=0)["bone_age_z"]
    np.testing.assert_allclose(out["bone_age_z"], before, atol=1e-6)
    assert out["bone_age_bins"].shape == (3, 40) and out["age_group"].shape == (3, 5)
    np.testing.assert_allclose(out["bone_age_bins"].sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(age_bin_centres(40)[[0, -1]], [3.0, 237.0])


def test_restacking_copies_the_first_blocks_onto_the_idle_ones():
    config = replace(MODELS["xception-tiny"], middle_blocks=2)
    source = deepen(_trained_looking(replace(config, middle_blocks=1)), config)  # block 1 idle
    restacked = restack(source, config, 0.25)

    def same(copy_name: str, original_name: str) -> None:
        copy, original = restacked.get_layer(copy_name), source.get_layer(original_name)
        for a, b in zip(copy.get_weights(), original.get_weights(), strict=True):
            np.testing.assert_array_equal(a, b)

    for part in ("a_sepconv", "b_bn", "c_sepconv"):
        same(f"middle1_{part}", f"middle0_{part}")
    gamma, beta, mean, _ = restacked.get_layer("middle1_c_bn").get_weights()
    np.testing.assert_allclose(gamma, 0.25 * source.get_layer("middle0_c_bn").gamma.numpy(), rtol=1e-6)
    np.testing.assert_allclose(beta, 0.25 * source.get_layer("middle0_c_bn").beta.numpy(), rtol=1e-6)
    np.testing.assert_array_equal(mean, source.get_layer("middle0_c_bn").moving_mean.numpy())
    for name in ("entry3_a_sepconv", "middle0_c_bn", "head_dense"):  # the rest is unchanged
        same(name, name)
    inputs = _val_inputs()  # the revived block now adds to the reading
    assert not np.allclose(
        restacked.predict(inputs, verbose=0)["bone_age_z"], source.predict(inputs, verbose=0)["bone_age_z"]
    )
    with pytest.raises(ValueError, match="at least 2 middle-flow blocks"):
        restack(source, replace(config, middle_blocks=1), 0.25)


def test_widening_keeps_the_reading_and_the_copied_channels_part_ways():
    config = replace(MODELS["xception-tiny"], age_group_head=True)
    source = _trained_looking(config)
    wider_config = replace(config, width=0.25, middle_blocks=2)
    wider = grow(source, config, wider_config)
    assert wider.count_params() > 2 * source.count_params()
    inputs = _val_inputs()
    before = source.predict(inputs, verbose=0)
    after = wider.predict(inputs, verbose=0)
    for output in ("bone_age_z", "age_group"):
        np.testing.assert_allclose(after[output], before[output], atol=1e-4)

    # new channels are copies (identical kernels) until a training step moves them apart
    def copies(model: keras.Model) -> int:
        kernel = model.get_layer("middle0_a_sepconv").get_weights()[1][0, 0]  # (in, out)
        return len(kernel.T) - len(np.unique(kernel.T, axis=0))

    assert copies(wider) > 0
    wider.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss={"bone_age_z": "mae", "age_group": "sparse_categorical_crossentropy"},
    )
    targets = {"bone_age_z": np.ones((3, 1), "float32"), "age_group": np.array([1, 2, 3])}
    wider.fit(inputs, targets, epochs=1, verbose=0)
    assert copies(wider) == 0

    with pytest.raises(ValueError, match="only deeper or wider"):
        grow(wider, wider_config, config)
