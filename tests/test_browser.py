"""The page in a real headless browser (Playwright driving Debian's chromium)."""

from __future__ import annotations

import re

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


def _textbox(page, elem_id: str):
    return page.locator(f"#{elem_id} textarea")


def test_upload_choose_sex_and_age_read_the_result(page, radiograph, tmp_path):
    page.locator("input[type=file]").first.set_input_files(str(radiograph))
    page.get_by_label("Female").check()
    page.get_by_label("Chronological age", exact=True).fill("10y3m")
    page.get_by_role("button", name="Assess bone age").click()
    bone_age = _textbox(page, "bone-age")
    expect(bone_age).to_have_value(re.compile(r"^\d+\.\d months \(\d+ y \d+ m\)$"), timeout=60_000)
    months = float(bone_age.input_value().split()[0])
    assert 0 < months < 240
    expect(_textbox(page, "gap")).to_have_value(re.compile(rf"^{months - 123:+.1f} months"))
    expect(_textbox(page, "z-score")).to_have_value(
        re.compile(r"SD: (delayed|within normal range|advanced)$")
    )
    expect(page.get_by_text("Research use only").first).to_be_visible()
    page.screenshot(path=str(tmp_path / "result.png"), full_page=True)


def test_bad_age_shows_an_error_in_the_page(page, radiograph):
    page.get_by_label("Chronological age", exact=True).fill("ten years")
    page.get_by_role("button", name="Assess bone age").click()
    expect(page.get_by_text("is not a number").first).to_be_visible(timeout=30_000)
