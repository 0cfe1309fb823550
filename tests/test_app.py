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


def test_only_the_example_files_are_served_not_the_data_folder(app_url):
    import urllib.error
    import urllib.request

    from boneage_infer.data import example_cases

    examples = example_cases()
    assert examples
    with urllib.request.urlopen(f"{app_url}gradio_api/file={examples[0].path}", timeout=30) as answer:
        assert answer.status == 200 and answer.read() == examples[0].path.read_bytes()
    shown = {c.path.name for c in examples}
    other = next(p for p in sorted(examples[0].path.parent.iterdir()) if p.name not in shown)
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{app_url}gradio_api/file={other}", timeout=30)
    assert refused.value.code in (403, 404)


def _post_files(url: str, files: list[tuple[str, bytes]]) -> tuple[int, str]:
    import urllib.error
    import urllib.request
    import uuid

    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
        f"Content-Type: application/octet-stream\r\n\r\n".encode()
        + content
        + b"\r\n"
        for name, content in files
    ]
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    request = urllib.request.Request(
        f"{url}gradio_api/upload", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except urllib.error.URLError as error:  # refused on its Content-Length while still sending
        assert isinstance(error.reason, (BrokenPipeError, ConnectionResetError)), error
        return 413, str(error)


def test_an_upload_holds_one_radiograph_at_most(app_url, radiograph):
    status, text = _post_files(app_url, [("hand.jpg", radiograph.read_bytes())])
    assert status == 200 and "hand.jpg" in text
    status, text = _post_files(app_url, [("a.png", b"x" * 100), ("b.png", b"y" * 100)])
    assert status == 413 and "at most 1 file" in text
    # each part under the per-file limit, together over one radiograph's worth
    half = bytes(int(UPLOAD_LIMIT_MB * 0.9 * 1024 * 1024))
    status, text = _post_files(app_url, [("a.png", half), ("b.png", half)])
    assert status == 413
    assert predict(Client(app_url, verbose=False), radiograph)[8]["bone_age_months"] > 0  # still serving


def test_the_apps_files_are_readable_by_its_own_user_only(client, radiograph, app_tmpdir):
    pdf = predict(client, radiograph)[7]
    gradio_temp = app_tmpdir / f"boneage-gradio-{os.getuid()}"
    assert gradio_temp.is_dir() and (gradio_temp.stat().st_mode & 0o777) == 0o700
    from boneage_infer.data import example_cases

    examples = {c.path.name for c in example_cases()}  # Gradio's copies keep the shared files' 0444
    written = [p for p in gradio_temp.rglob("*") if p.name not in examples]
    assert any(p.name == "bone_age_report.pdf" for p in written)
    assert any(p.name == radiograph.name for p in written)  # the upload
    for path in [*written, *app_tmpdir.glob("boneage-reports-*/**/*")]:
        assert path.stat().st_mode & 0o077 == 0, path
    assert os.path.basename(pdf) == "bone_age_report.pdf"


def test_patient_names_and_long_or_inconsistent_inputs_over_the_api(client, radiograph):
    import subprocess

    def read(patient="", age="118", birth="", exam=""):
        return client.predict(
            handle_file(str(radiograph)), "F", age, birth, exam, patient, api_name="/predict"
        )

    outputs = read("Łukasz 张伟")
    text = subprocess.run(["pdftotext", outputs[7], "-"], capture_output=True, text=True, check=True).stdout
    assert "Patient: Łukasz 张伟" in text
    for patient, message in (("x" * 10_000, "at most 64"), ("Ann\x07", "control characters")):
        with pytest.raises(Exception, match=message):
            read(patient)
    with pytest.raises(Exception) as error:
        read(age="", birth="1" * 10_000, exam="2024-03-15")
    assert "(10000 characters)" in str(error.value) and "1" * 81 not in str(error.value)
    details = read(age="100", birth="2014-01-15", exam="2024-03-15")[8]
    assert details["chronological_age_months"] == 100
    assert any("typed age (100.0 months)" in w and "(122.0 months)" in w for w in details["warnings"])


def test_concurrent_clients_all_get_their_reading(app_url, radiograph):
    """The load benchmark, small: 4 gradio_client clients x 3 readings at once."""
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from load import run_load

    result = run_load(app_url, radiograph, clients=4, readings=3, timeout=600)
    assert result["requests"] == 12 and result["errors"] == 0, result["first_errors"]
    assert 0 < result["p50_s"] <= result["p95_s"]
