"""The reference half of the reading: the 50 training radiographs the network finds most alike."""

from __future__ import annotations

import numpy as np
from conftest import DATA

from boneage_infer import data, reference
from boneage_infer.explain import LAST_CONV_LAYER


def test_the_reference_set_is_the_train_split_with_its_labels(predictor):
    refs = predictor.reference
    train, val = data.load_split(DATA, "train"), data.load_split(DATA, "val")
    assert not set(refs.ids) & set(val.ids)  # val is never a reference: its figures stay honest
    assert len(refs.ids) >= len(train) - 20  # every train radiograph the image checks accept
    row = {case_id: i for i, case_id in enumerate(train.ids)}
    index = np.array([row[case_id] for case_id in refs.ids])
    assert np.allclose(refs.bone_age_months, train.bone_age_months[index])
    assert np.array_equal(refs.male, train.male[index])


def test_the_served_bone_age_blends_the_network_with_its_most_alike_train_radiographs(predictor):
    val = data.load_split(DATA, "val")
    cases = val.subset(np.arange(len(val)) % 40 == 1)  # 32 radiographs spread over val
    hands = np.stack([predictor.prepare(path).model_input for path in cases.paths])
    estimate = predictor.infer(hands, cases.male)
    blend = (1 - reference.WEIGHT) * estimate.network_months + reference.WEIGHT * estimate.reference_months
    assert np.allclose(estimate.months, blend)
    # the reference bone age alone reads these radiographs far better than chance (about 40
    # months off for random train radiographs of the same sex): the features find alike hands
    assert np.mean(np.abs(estimate.reference_months - cases.bone_age_months)) < 10.0
    assert np.mean(np.abs(estimate.network_months - cases.bone_age_months)) < 10.0

    # the neighbours, found again by brute force in float64: same sex, the most similar
    refs = predictor.reference
    features = predictor.features(hands, cases.male)[LAST_CONV_LAYER]
    found = refs.neighbours(features, cases.male)
    assert found.shape == (len(cases), reference.NEIGHBOURS)
    assert all(np.all(refs.male[row] == male) for row, male in zip(found, cases.male))
    query = features / np.linalg.norm(features, axis=1, keepdims=True) @ refs.projection.astype(np.float64)
    query /= np.linalg.norm(query, axis=1, keepdims=True)
    for q, male, row in zip(query, cases.male, found):
        same = np.flatnonzero(refs.male == male)
        similarity = refs.features[same].astype(np.float64) @ q
        best = same[np.argsort(-similarity)[: reference.NEIGHBOURS]]
        assert len(set(best) & set(row)) >= reference.NEIGHBOURS - 2  # float16 ties at the edge
    mean, spread = refs.bone_age(features, cases.male)
    assert np.allclose(mean, refs.bone_age_months[found].mean(axis=1))
    assert np.allclose(spread, refs.bone_age_months[found].std(axis=1))
    # served through six views the neighbours differ a little, their spread hardly on average
    assert abs(estimate.reference_spread_months.mean() - spread.mean()) < 1.5 and (spread > 0).all()


def test_a_reading_shows_both_halves_of_its_bone_age(predictor, radiograph):
    for sex in ("F", "U"):  # unknown sex: each half is averaged over both sexes
        details = predictor.predict(radiograph, sex, "10y").to_dict()
        network, alike = details["network_bone_age_months"], details["reference_bone_age_months"]
        assert abs(details["bone_age_months"] - (network + alike) / 2) <= 0.11
        assert abs(network - alike) < 24  # two readings of one hand
