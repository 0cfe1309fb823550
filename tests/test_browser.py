"""The page in a real headless browser (Playwright driving Debian's chromium)."""

from __future__ import annotations

import re
import subprocess

import pytest
from playwright.sync_api import expect, sync_playwright

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


@pytest.fixture(scope="module")
def page(app_url, tmp_path_factory):
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1800})
        page.goto(app_url)
        page.get_by_role("button", name="Assess bone age").wait_for(timeout=60_000)
        yield page
        browser.close()


def _upload(page, path) -> None:
    clear = page.locator("#radiograph button[aria-label='Clear']")
    if clear.count():
        clear.first.click()
    page.locator("input[type=file]").first.set_input_files(str(path))


def _textbox(page, elem_id: str):
    return page.locator(f"#{elem_id} textarea")


def test_upload_choose_sex_and_age_read_the_result(page, radiograph, tmp_path):
    _upload(page, radiograph)
    page.get_by_label("Female").check()
    page.get_by_label("Chronological age", exact=True).fill("10y3m")
    page.get_by_role("button", name="Assess bone age").click()
    bone_age = _textbox(page, "bone-age")
    expect(bone_age).to_have_value(
        re.compile(r"^\d+\.\d months \(\d+ y \d+ m\), 90% interval \d+\.\d-\d+\.\d$"), timeout=60_000
    )
    months = float(bone_age.input_value().split()[0])
    assert 0 < months < 240
    expect(_textbox(page, "gap")).to_have_value(re.compile(rf"^{months - 123:+.1f} months"))
    expect(_textbox(page, "z-score")).to_have_value(
        re.compile(r"SD: (delayed|within normal range|advanced)$")
    )
    expect(page.get_by_text("Research use only").first).to_be_visible()
    expect(_textbox(page, "bone-age")).to_have_value(re.compile(r"90% interval"))
    expect(_textbox(page, "stage")).to_have_value(re.compile(r"infancy|toddler|puberty"))
    for elem_id in ("enhanced", "heatmap", "chart"):
        expect(page.locator(f"#{elem_id} img").first).to_be_visible()
    link = page.locator("#report a").first
    expect(link).to_have_attribute("download", "bone_age_report.pdf")
    with page.expect_download() as download:
        link.click()
    pdf = tmp_path / "report.pdf"
    download.value.save_as(pdf)
    text = subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True, text=True, check=True).stdout
    assert f"{months:.1f} months" in text
    page.screenshot(path=str(tmp_path / "result.png"), full_page=True)


def test_unknown_sex_reads_both(page, radiograph):
    page.get_by_label("Unknown").check()
    page.get_by_label("Chronological age", exact=True).fill("120")
    page.get_by_role("button", name="Assess bone age").click()
    expect(_textbox(page, "stage")).to_have_value(re.compile(r"\(F\) / .*\(M\)"), timeout=60_000)


def test_dicom_upload_prefills_sex_and_dates(page, radiograph, tmp_path):
    from synth import grey, to_16bit, write_dicom

    dicom = write_dicom(
        to_16bit(grey(radiograph)),
        tmp_path / "hand.dcm",
        PatientSex="M",
        PatientBirthDate="20130105",
        StudyDate="20230705",
        PatientName="Doe^John",
    )
    page.get_by_label("Female").check()
    _upload(page, dicom)
    expect(page.get_by_label("Male", exact=True)).to_be_checked(timeout=30_000)
    page.get_by_text("…or from dates").click()
    expect(page.get_by_label("Birth date")).to_have_value("2013-01-05")
    expect(page.get_by_label("Exam date")).to_have_value("2023-07-05")
    page.get_by_label("Chronological age", exact=True).fill("")
    page.get_by_role("button", name="Assess bone age").click()
    expect(_textbox(page, "gap")).to_have_value(
        re.compile(r"chronological age 126\.0 months"), timeout=60_000
    )
    expect(page.get_by_text("Doe")).to_have_count(0)


def test_bad_age_shows_an_error_in_the_page(page, radiograph):
    page.get_by_label("Chronological age", exact=True).fill("ten years")
    page.get_by_role("button", name="Assess bone age").click()
    expect(page.get_by_text("is not a number").first).to_be_visible(timeout=30_000)


def test_a_rejected_radiograph_says_why_and_leaves_no_earlier_reading(page, radiograph, tmp_path):
    from nonhand import other_body_part_pictures

    chest = tmp_path / "chest.png"
    chest.write_bytes(other_body_part_pictures()["chest.png"])
    _upload(page, radiograph)
    page.get_by_label("Female").check()
    page.get_by_label("Chronological age", exact=True).fill("120")
    page.get_by_role("button", name="Assess bone age").click()
    expect(_textbox(page, "bone-age")).to_have_value(re.compile(r"^\d+\.\d months"), timeout=60_000)
    _upload(page, chest)
    page.get_by_role("button", name="Assess bone age").click()
    expect(page.get_by_text("Rejected").first).to_be_visible(timeout=60_000)
    for elem_id in ("bone-age", "gap", "z-score", "stage"):
        expect(_textbox(page, elem_id)).to_have_value("")
    expect(page.locator("#heatmap img")).to_have_count(0)
