"""The network: canonical Xception topology, configurable size, config round trip."""

from __future__ import annotations

from dataclasses import replace

import keras
import numpy as np

from boneage_infer.model import MODELS, ModelConfig, build_model, xception_backbone


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
