"""The command line on real radiographs: predict (files, folder, CSV) and evaluate."""

from __future__ import annotations

import csv
import json

import numpy as np
from conftest import DATA, run_cli


def test_predict_json_with_age_and_a_bad_file_in_the_batch(radiographs, tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    result = run_cli(
        "predict",
        str(radiographs[0]),
        str(bad),
        str(radiographs[1]),
        "--sex",
        "F",
        "--age",
        "10y3m",
        "--json",
    )
    assert result.returncode == 1  # one failure, but the rest of the batch is read
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["file"] for line in lines] == [str(radiographs[0]), str(radiographs[1])]
    for line in lines:
        assert 0 < line["bone_age_months"] < 240
        assert line["chronological_age_months"] == 123
        assert line["bone_age_months"] == round(line["bone_age_months"], 1)  # the precision reported
        assert line["gap_months"] == round(line["bone_age_months"] - 123, 1)
        assert line["call"] in ("delayed", "within normal range", "advanced")
    assert f"{bad}: error: Not an image" in result.stderr


def test_predict_plain_text_without_age(radiograph):
    result = run_cli("predict", str(radiograph), "--sex", "m")
    assert result.returncode == 0, result.stderr
    assert "bone age" in result.stdout and "months" in result.stdout and "gap" not in result.stdout
    assert "read as the mean of the network's reading" in result.stdout  # and how it was made


def test_predict_folder_and_cases_csv_to_csv(radiographs, val_cases, tmp_path):
    cases = tmp_path / "cases.csv"
    with open(cases, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "sex", "age"])
        for row in val_cases[1:4]:
            writer.writerow([row["id"], "M" if row["male"] == "True" else "F", "120"])
        writer.writerow(["999999", "F", "120"])  # no such image
        writer.writerow([val_cases[4]["id"], "F", "-4"])  # impossible age
    out = tmp_path / "readings.csv"
    result = run_cli("predict", str(cases), "--image-dir", str(DATA / "images"), "--csv", str(out))
    assert result.returncode == 1
    rows = list(csv.DictReader(open(out)))
    assert len(rows) == 5
    assert all(float(r["bone_age_months"]) > 0 for r in rows[:3])
    assert "999999" in rows[3]["file"] and "File not found" in rows[3]["error"]
    assert "negative" in rows[4]["error"]


def test_bad_arguments_exit_nonzero(radiograph):
    result = run_cli("predict", str(radiograph), "--sex", "X")
    assert result.returncode == 2 and "invalid choice" in result.stderr
    result = run_cli("predict", str(radiograph))
    assert result.returncode == 1 and "Sex is needed: M (male), F (female) or U (unknown)" in result.stderr
    result = run_cli("predict", str(radiograph), "--sex", "F", "--age", "ten")
    assert result.returncode == 1 and "not a number" in result.stderr
    result = run_cli("calibrate", "--data", "data", "--weights", "weights", "--zooms", "1.06,0.94")
    assert result.returncode == 2 and "test_zooms must include 1.0" in result.stderr


def test_evaluate_on_a_labelled_subset(val_cases, tmp_path):
    labels, labels_male = tmp_path / "labels.csv", tmp_path / "labels_male.csv"
    with open(labels, "w", newline="") as handle, open(labels_male, "w", newline="") as handle_male:
        writer, writer_male = csv.writer(handle), csv.writer(handle_male)
        writer.writerow(["id", "boneage", "sex"])
        writer_male.writerow(["id", "boneage", "male"])
        for row in val_cases[1:17]:
            writer.writerow([row["id"], row["boneage"], "M" if row["male"] == "True" else "F"])
            writer_male.writerow([row["id"], row["boneage"], row["male"]])
    result = run_cli("evaluate", "--images", str(DATA / "images"), "--labels", str(labels), "--json")
    summary = json.loads(result.stdout)
    # a case the quality gate rejects is counted as failed and makes the exit status non-zero
    assert summary["n"] + summary["failed"] == 16 and summary["n"] >= 14
    assert result.returncode == (1 if summary["failed"] else 0), result.stderr
    assert {"mae", "rmse", "r2", "bias"} <= set(summary)
    assert summary["rmse"] >= summary["mae"] > 0
    assert abs(summary["bias"]) <= summary["mae"]
    assert 0.5 <= summary["interval_90_coverage"] <= 1 and summary["interval_90_mean_width_months"] > 10
    # the same cases with the RSNA `male` column give the same figures
    text = run_cli("evaluate", "--images", str(DATA / "images"), "--labels", str(labels_male))
    assert f"MAE    {summary['mae']:.2f} months" in text.stdout
    assert f"90% interval covers {summary['interval_90_coverage']:.1%}" in text.stdout
    assert np.isfinite(summary["r2"])


def test_unknown_sex_from_the_cli(radiograph):
    result = run_cli("predict", str(radiograph), "--sex", "U", "--age", "120", "--json")
    assert result.returncode == 0, result.stderr
    reading = json.loads(result.stdout)
    assert reading["sex"] == "U" and set(reading["bone_age_by_sex"]) == {"F", "M"}
    assert reading["z_score"] is None and any("Sex unknown" in w for w in reading["warnings"])


def test_evaluate_names_every_excluded_radiograph_and_strict_stops_at_the_first(val_cases, tmp_path):
    """Three real radiographs, a lower-leg film (the feature gate), a blank image (an image
    check) and a truncated file (unreadable)."""
    import cv2
    from nonhand import other_body_part_pictures

    images = tmp_path / "images"
    images.mkdir()
    rows = [[row["id"], row["boneage"], row["male"]] for row in val_cases[1:5]]
    for case_id, *_ in rows[:3]:
        (images / f"{case_id}.jpg").symlink_to(DATA / "images" / f"{case_id}.jpg")
    broken = rows[3][0]
    (images / f"{broken}.jpg").write_bytes((DATA / "images" / f"{broken}.jpg").read_bytes()[:300])
    (images / "leg.png").write_bytes(other_body_part_pictures()["lower-leg-no-border.png"])
    cv2.imwrite(str(images / "blank.png"), np.full((300, 300), 128, np.uint8))
    labels = tmp_path / "labels.csv"
    with open(labels, "w", newline="") as handle:
        csv.writer(handle).writerows(
            [["id", "boneage", "male"], *rows, ["leg", 120, "True"], ["blank", 60, "False"]]
        )
    result = run_cli("evaluate", "--images", str(images), "--labels", str(labels), "--json")
    assert result.returncode == 1
    summary = json.loads(result.stdout)
    assert (summary["n"], summary["rejected"], summary["unreadable"], summary["failed"]) == (3, 2, 1, 3)
    excluded = {row["id"]: row for row in summary["excluded"]}
    assert excluded["leg"]["kind"] == "rejected" and excluded["leg"]["file"].endswith("leg.png")
    assert excluded["leg"]["check"] == "novelty" and excluded["leg"]["value"] > excluded["leg"]["limit"] == 1
    assert (
        excluded["blank"]["check"] == "grey_level_std"
        and excluded["blank"]["value"] < excluded["blank"]["limit"]
    )
    assert excluded[broken]["kind"] == "unreadable" and excluded[broken]["error"]
    text = run_cli("evaluate", "--images", str(images), "--labels", str(labels))
    assert "n      3  (rejected 2, unreadable 1)" in text.stdout
    assert "rejected blank " in text.stdout and "(grey_level_std: 0 against the limit 4)" in text.stdout
    assert f"unreadable {broken} " in text.stdout
    strict = run_cli("evaluate", "--images", str(images), "--labels", str(labels), "--json", "--strict")
    assert strict.returncode == 1 and strict.stdout == "" and "--strict" in strict.stderr


def test_a_batch_killed_part_way_and_resumed_reads_every_radiograph_once(val_cases, tmp_path):
    """Rows are flushed as they are read: kill the run after a few, tear its last row as a kill
    mid-write would, and --resume reads the rest, each radiograph exactly once."""
    import signal
    import subprocess
    import sys
    import time

    from conftest import ROOT

    folder = tmp_path / "archive"
    folder.mkdir()
    for row in val_cases[1:21]:
        (folder / f"{row['id']}.jpg").symlink_to(DATA / "images" / f"{row['id']}.jpg")
    (folder / "broken.png").write_bytes(b"\x89PNG not really")
    out = tmp_path / "readings.csv"
    command = [sys.executable, "-m", "boneage_infer", "predict", str(folder), "--sex", "F", "--csv", str(out)]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and (not out.is_file() or out.read_text().count("\n") < 9):
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    written = out.read_text().count("\n") - 1
    assert 8 <= written < 21  # killed part-way, the rows so far on disk
    with open(out, "a") as handle:
        handle.write(f"{folder}/torn-row.jpg,F,12")  # a row cut off mid-write
    result = run_cli("predict", str(folder), "--sex", "F", "--csv", str(out), "--resume", "--progress")
    assert result.returncode == 1  # the broken file
    assert f"{written} read before, {21 - written} to read" in result.stderr
    assert "21/21" in result.stderr or f"{21 - written}/{21 - written}" in result.stderr  # tqdm's bar
    rows = list(csv.DictReader(open(out)))
    files = [row["file"] for row in rows]
    assert sorted(files) == sorted(str(p) for p in folder.iterdir()) and len(set(files)) == 21
    assert all(float(r["bone_age_months"]) > 0 for r in rows if not r["file"].endswith("broken.png"))
    assert [r["error"] for r in rows if r["file"].endswith("broken.png")][0]
    again = run_cli("predict", str(folder), "--sex", "F", "--csv", str(out), "--resume", "--quiet")
    assert "21 read before, 0 to read" in again.stderr and len(list(csv.DictReader(open(out)))) == 21
    refused = run_cli("predict", str(folder), "--sex", "F", "--resume")
    assert refused.returncode == 2 and "--resume needs --csv" in refused.stderr
