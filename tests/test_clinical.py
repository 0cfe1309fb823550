"""Greulich & Pyle tables, interpolation, calls and age parsing."""

from __future__ import annotations

from datetime import date

import pytest

from boneage_infer import clinical


def test_tables_match_the_brush_foundation_values():
    assert clinical.AGES_MONTHS["M"][-1] == 204 and clinical.AGES_MONTHS["F"][-1] == 192
    for sex in "MF":
        assert len(clinical.AGES_MONTHS[sex]) == len(clinical.SD_MONTHS[sex])
        assert len(clinical.AGES_MONTHS[sex]) == len(clinical.MEAN_SKELETAL_AGE_MONTHS[sex])
    assert clinical.SD_MONTHS["M"][:4] == (0.69, 1.13, 1.43, 1.97)
    assert clinical.SD_MONTHS["M"][-1] == 13.05 and clinical.SD_MONTHS["F"][-1] == 7.31
    assert clinical.sd_for_age(120, "M") == pytest.approx(9.79)
    assert clinical.sd_for_age(120, "F") == pytest.approx(11.73)


def test_sd_is_linearly_interpolated():
    # boys 126 months: halfway between 9.79 (120) and 10.09 (132)
    assert clinical.sd_for_age(126, "M") == pytest.approx((9.79 + 10.09) / 2)
    assert clinical.sd_for_age(4.5, "F") == pytest.approx((0.72 + 1.16) / 2)


@pytest.mark.parametrize(
    "bone_age, age, sex, call",
    [
        (120, 120, "M", "within normal range"),
        (120 - 2.1 * 9.79, 120, "M", "delayed"),
        (120 + 2.1 * 11.73, 120, "F", "advanced"),
        (120 - 1.9 * 11.73, 120, "F", "within normal range"),
    ],
)
def test_call_uses_two_sd(bone_age, age, sex, call):
    result = clinical.interpret(bone_age, age, sex)
    assert result.call == call
    assert result.gap_months == pytest.approx(bone_age - age)
    assert result.z_score == pytest.approx((bone_age - age) / clinical.sd_for_age(age, sex))


@pytest.mark.parametrize("age, sex", [(2, "M"), (217, "F"), (229, "M")])
def test_outside_the_atlas_gives_a_warning_not_a_z_score(age, sex):
    result = clinical.interpret(150, age, sex)
    assert result.z_score is None and result.call == "not assessed"
    assert "outside the Greulich & Pyle standards" in result.warnings[0]


def test_a_gap_beyond_four_sd_asks_to_check_the_inputs():
    far = clinical.interpret(120 - 4.5 * 9.79, 120, "M")
    assert (
        far.call == "delayed"
        and "4.5 SD" in far.warnings[0]
        and "check the chronological age" in far.warnings[0]
    )
    assert clinical.interpret(120 - 3.5 * 9.79, 120, "M").warnings == []


def test_past_the_sd_table_but_inside_the_atlas_says_so():
    result = clinical.interpret(200, 200, "F")
    assert result.z_score == 0 and "last SD" in result.warnings[0]


@pytest.mark.parametrize(
    "text, months", [("123", 123), ("10y3m", 123), ("10 y 3 m", 123), ("10y", 120), ("7m", 7), (96.5, 96.5)]
)
def test_parse_age(text, months):
    assert clinical.parse_age(text) == pytest.approx(months)


@pytest.mark.parametrize(
    "text, message",
    [
        ("abc", "not a number"),
        ("-5", "negative"),
        ("900", "over 30 years"),
        ("nan", "finite"),
        ("", "not a number"),
    ],
)
def test_parse_age_rejects(text, message):
    with pytest.raises(ValueError, match=message):
        clinical.parse_age(text)


def test_age_from_dates():
    assert clinical.age_between(date(2015, 5, 20), date(2025, 5, 20)) == pytest.approx(120)
    months, warning = clinical.chronological_age(None, "2015-05-20", "2025-08-20")
    assert months == pytest.approx(123) and warning is None
    with pytest.raises(ValueError, match="before the birth date"):
        clinical.chronological_age(None, "2025-05-20", "2015-05-20")
    with pytest.raises(ValueError, match="exam date"):
        clinical.chronological_age(None, "2015-05-20", None)
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        clinical.chronological_age(None, "20th May", "2025-05-20")


def test_a_typed_age_that_disagrees_with_the_dates_is_used_with_a_warning_showing_both():
    assert clinical.chronological_age("123.5", "2015-05-20", "2025-08-20") == (123.5, None)  # within a month
    months, warning = clinical.chronological_age("10y", "2015-05-20", "2025-08-20")
    assert months == 120
    assert "typed age (120.0 months)" in warning and "birth and exam dates (123.0 months)" in warning
    assert clinical.chronological_age("10y", None, None) == (120, None)


def test_errors_quote_at_most_80_characters_of_the_input():
    for call in (
        lambda: clinical.chronological_age(None, "9" * 10_000, "2025-05-20"),
        lambda: clinical.parse_age("x" * 10_000),
    ):
        with pytest.raises(ValueError) as error:
            call()
        assert len(str(error.value)) < 200 and "(10000 characters)" in str(error.value)


def test_sex_and_stage():
    assert clinical.check_sex("female") == "F" and clinical.check_sex("m") == "M"
    with pytest.raises(ValueError, match="Sex must be"):
        clinical.check_sex("")
    assert clinical.stage(6, "M") == "infancy"
    assert clinical.stage(100, "F") == "early/mid puberty"
    assert clinical.stage(100, "M") == "pre-puberty"
    assert clinical.stage(220, "M") == "post-puberty"
    assert clinical.format_months(123.4) == "10 y 3 m"
