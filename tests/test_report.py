"""Growth chart and PDF report, checked as text (pdftotext) and as a picture (pdftoppm)."""

from __future__ import annotations

import subprocess

import cv2
import numpy as np
import pytest

from boneage_infer import report


def test_growth_chart_is_a_picture_with_the_point(predictor, radiograph):
    reading = predictor.predict(radiograph, "F", 120)
    chart = report.growth_chart(reading)
    assert chart.ndim == 3 and chart.shape[2] == 3 and chart.shape[0] > 300
    without_age = report.growth_chart(predictor.predict(radiograph, "F"))
    assert not np.array_equal(chart, without_age)


def test_pdf_report_shows_the_reading(predictor, radiograph, tmp_path):
    prepared = predictor.prepare(radiograph)
    reading = predictor.predict_prepared(prepared, "M", "11y2m")
    pdf = report.pdf_report(
        reading, prepared.enhanced, predictor.heatmap_overlay(prepared, "M"), tmp_path / "r.pdf"
    )
    text = subprocess.run(
        ["pdftotext", "-layout", str(pdf), "-"], capture_output=True, text=True, check=True
    ).stdout
    assert f"{reading.bone_age_months:.1f} months" in text
    assert f"{reading.interval_90[0]:.1f} - {reading.interval_90[1]:.1f} months" in text
    assert "134.0 months" in text  # 11 y 2 m
    assert f"{reading.gap_months:+.1f} months" in text
    assert f"{reading.z_score:+.2f}" in text and reading.call in text and reading.stage in text
    assert reading.model_version in text
    assert f"network's reading {reading.network_bone_age_months:.1f} months" in " ".join(text.split())
    mean, spread = reading.reference_bone_age_months, reading.reference_spread_months
    assert f"{mean:.1f} months (mean; SD {spread:.1f})" in text
    assert "Research use only, not a medical device" in text
    assert "Patient" not in text
    subprocess.run(
        ["pdftoppm", "-png", "-r", "40", "-singlefile", str(pdf), str(tmp_path / "page")], check=True
    )
    page = cv2.imread(str(tmp_path / "page.png"))
    assert page is not None and page.shape[0] > page.shape[1]  # A4 portrait
    assert page.std() > 20  # images and chart were drawn, not a blank page
    colourful = np.abs(page[..., 2].astype(int) - page[..., 0]).mean()
    assert colourful > 2  # the heatmap and chart are in colour


def test_pdf_report_prints_the_patient_only_when_asked(predictor, radiograph, tmp_path):
    prepared = predictor.prepare(radiograph)
    reading = predictor.predict_prepared(prepared, "F", 100)
    pdf = report.pdf_report(
        reading, prepared.enhanced, prepared.enhanced, tmp_path / "p.pdf", patient="Case 42"
    )
    text = subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True, text=True, check=True).stdout
    assert "Patient: Case 42" in text


def test_pdf_report_prints_names_in_any_script_a_font_covers_and_warns_for_the_rest(
    predictor, radiograph, tmp_path
):
    prepared = predictor.prepare(radiograph)
    reading = predictor.predict_prepared(prepared, "M", 100)

    def text_of(patient: str) -> str:
        pdf = report.pdf_report(reading, prepared.enhanced, prepared.enhanced, tmp_path / "u.pdf", patient)
        return subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True, text=True, check=True).stdout

    for name in ("Łukasz 张伟", "Ελένη Παπαδοπούλου", "Андрей Иванов", "佐藤 ひかり", "김민준"):
        assert report.unprintable(name) == "" and report.unprintable_warning(name) is None
        text = text_of(name)
        assert f"Patient: {name}" in text and "?" not in text.split("Patient:")[1].splitlines()[0]
    hieroglyph = "Ra \U00013000"  # Egyptian hieroglyphs: no report font has them
    assert report.unprintable(hieroglyph) == "\U00013000"
    text = " ".join(text_of(hieroglyph).split())
    assert "Patient: Ra ?" in text and "has no font for" in text


def test_a_patient_name_too_long_or_with_control_characters_is_refused(predictor, radiograph, tmp_path):
    prepared = predictor.prepare(radiograph)
    reading = predictor.predict_prepared(prepared, "M", 100)
    assert report.check_patient("  Case 42 ") == "Case 42" and report.check_patient("   ") is None
    assert report.check_patient("x" * 64) == "x" * 64
    for bad, message in (("x" * 10_000, "10000 characters long; at most 64"), ("Ann\x1b[31m", "control")):
        with pytest.raises(ValueError, match=message):
            report.pdf_report(reading, prepared.enhanced, prepared.enhanced, tmp_path / "x.pdf", bad)
    assert not (tmp_path / "x.pdf").exists()
