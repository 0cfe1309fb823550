"""Example cases: found in the data folder or the Hub repo, hidden with neither."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

from conftest import DATA, ROOT
from hub_server import HubServer

from boneage_infer.data import example_cases


def test_examples_show_a_delayed_a_normal_and_an_advanced_case(predictor):
    cases = example_cases()
    assert sorted(c.shows for c in cases) == ["advanced", "delayed", "within normal range"]
    for case in cases:
        assert case.path.is_file() and DATA in case.path.parents  # read from ../shared, never the repo
        reading = predictor.predict(case.path, case.sex, case.chronological_age_months)
        assert reading.call == case.shows, (case, reading.bone_age_months)


def test_no_data_and_no_hub_means_no_examples(monkeypatch, tmp_path):
    monkeypatch.setenv("BONEAGE_DATA_DIR", str(tmp_path / "missing"))
    monkeypatch.delenv("BONEAGE_HF_REPO", raising=False)
    assert example_cases() == []


def test_examples_from_the_hub_repo(tmp_path):
    repo = tmp_path / "repo"
    (repo / "examples").mkdir(parents=True)
    for case_id in ("1710", "2181", "1472"):
        shutil.copy(DATA / "images" / f"{case_id}.jpg", repo / "examples" / f"{case_id}.jpg")
    code = (
        "import json; from boneage_infer.data import example_cases; "
        "print(json.dumps([str(c.path) for c in example_cases()]))"
    )
    with HubServer("boneage/xception-rsna", repo) as hub:
        env = {
            "PATH": "/usr/bin:/bin",
            "BONEAGE_DATA_DIR": str(tmp_path / "missing"),
            "BONEAGE_HF_REPO": "boneage/xception-rsna",
            "HF_ENDPOINT": hub.url,
            "HF_HOME": str(tmp_path / "hf"),
        }
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    paths = json.loads(out.stdout)
    assert len(paths) == 3 and all(str(tmp_path / "hf") in p for p in paths)
