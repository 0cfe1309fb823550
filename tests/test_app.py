"""The running app (python app.py) through gradio_client: readings and every bad input."""

from __future__ import annotations

import os
import time

import pytest
import skimage.data
from conftest import ROOT
from gradio_client import Client, handle_file
from PIL import Image

UPLOAD_LIMIT_MB = 2  # conftest starts the app with BONEAGE_MAX_UPLOAD_MB=2


@pytest.fixture(scope="module")
def client(app_url):
    return Client(app_url, verbose=False)


def predict(client, path, sex="F", age="118", birth="", exam=""):
    return client.predict(handle_file(str(path)), sex, age, birth, exam, "", api_name="/predict")


def test_reading_over_the_api(client, radiograph):
    bone_age, gap, z_score, stage, image, heatmap, chart, pdf, details, model_info = predict(
        client, radiograph, "F", "9y10m"
    )
    assert bone_age.startswith(f"{details['bone_age_months']:.1f} months ({details['bone_age_text']})")
    low, high = details["interval_90"]
    assert bone_age.endswith(f"90% interval {low:.1f}-{high:.1f}")
    assert details["chronological_age_months"] == 118
    assert gap.startswith(f"{details['gap_months']:+.1f} months")
    assert z_score.endswith(details["call"]) and details["call"] in (
        "delayed",
        "within normal range",
        "advanced",
    )
    assert stage == details["stage"]
    assert image.endswith(".png") and heatmap.endswith(".png") and chart.endswith(".png")
    assert pdf.endswith("bone_age_report.pdf")
    assert details["device"] in model_info and "Research use only" in model_info
    mean, spread = details["reference_bone_age_months"], details["reference_spread_months"]
    assert f"({mean:.1f} months, SD {spread:.1f};" in model_info  # how it was read


def test_old_pdf_reports_are_swept(client, radiograph, app_tmpdir):
    reports = app_tmpdir / f"boneage-reports-{os.getuid()}"
    stale = reports / "stale"
    stale.mkdir(parents=True, exist_ok=True)
    (stale / "bone_age_report.pdf").write_bytes(b"%PDF-1.4 old")
    two_hours_ago = time.time() - 7200
    os.utime(stale, (two_hours_ago, two_hours_ago))
    predict(client, radiograph)
    assert not stale.exists()
    assert list(reports.glob("*/bone_age_report.pdf"))  # this reading's report


def test_age_from_dates(client, radiograph):
    details = predict(client, radiograph, "M", "", "2014-01-15", "2024-03-15")[8]
    assert details["chronological_age_months"] == 122 and details["sex"] == "M"


def _bad_files(tmp_path, radiograph):
    text = tmp_path / "report.txt"
    text.write_text("this is not a radiograph")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(radiograph.read_bytes()[:3000])
    bomb = tmp_path / "bomb.png"
    Image.new("1", (10000, 10000)).save(bomb)
    gif = tmp_path / "hand.gif"
    Image.open(radiograph).save(gif)
    photo = tmp_path / "astronaut.png"
    Image.fromarray(skimage.data.astronaut()).save(photo)
    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG" + bytes(UPLOAD_LIMIT_MB * 1024 * 1024 + 10))
    return {
        "not an image": (text, "Not an image"),
        "empty": (empty, "empty"),
        "truncated": (truncated, "truncated or corrupt"),
        "too big": (big, "size|large|exceed"),
        "decompression bomb": (bomb, "over the limit"),
        "unsupported format": (gif, "Unsupported image format GIF"),
        "a photograph": (photo, "Rejected: a colour image"),
    }


def test_bad_inputs_are_clear_errors_and_the_server_survives(client, radiograph, tmp_path):
    import re

    for name, (path, message) in _bad_files(tmp_path, radiograph).items():
        with pytest.raises(Exception) as raised:
            predict(client, path)
        assert re.search(message, str(raised.value), re.I), (name, str(raised.value))
    for sex, age, message in [
        (None, "120", "Sex is needed"),
        ("F", "ten", "not a number"),
        ("F", "-3", "negative"),
        ("F", "5000", "over 30 years"),
    ]:
        with pytest.raises(Exception, match=message):
            predict(client, radiograph, sex, age)
    # still serving after all that
    assert predict(client, radiograph)[8]["bone_age_months"] > 0


def test_readme_api_example_runs(app_url, radiograph, capsys):
    """The README's HTTP API snippet, run as written against the app (only the URL and file swapped)."""
    readme = (ROOT / "README.md").read_text()
    snippet = readme.split("## HTTP API", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    snippet = snippet.replace("http://127.0.0.1:7860/", app_url).replace('"hand.png"', repr(str(radiograph)))
    namespace: dict = {}
    exec(compile(snippet, "README.md", "exec"), namespace)
    reading = namespace["reading"]
    assert namespace["bone_age"].startswith(f"{reading['bone_age_months']:.1f} months")
    assert reading["chronological_age_months"] == 123 and reading["sex"] == "F"
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    assert printed == " ".join(str(reading[key]) for key in ("bone_age_months", "z_score", "call"))
