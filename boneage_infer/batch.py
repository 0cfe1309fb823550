"""Reading an archive: rows written as they are read, a progress bar, and resuming a run.

A readings CSV has fixed columns (``CSV_FIELDS``), one row per radiograph, written and
flushed as soon as its batch is read; a process killed mid-write leaves at most a torn last
line, which ``ReadingsCsv`` cuts off on resume before skipping the files already there.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path

from .predictor import BoneAgePredictor, Reading, RejectedImage

CSV_FIELDS = ["file", *(f.name for f in fields(Reading) if f.name != "file"), "error", "heatmap"]

Case = tuple[Path, str | None, str | None]  # file, sex, chronological age as given


def result_row(file: Path, result: Reading | Exception) -> dict:
    """A reading's ``to_dict``, or the file, its error and, for a rejection, the quality verdict."""
    if not isinstance(result, Exception):
        return result.to_dict()
    row = {"file": str(file), "error": str(result)}
    if isinstance(result, RejectedImage):
        row["quality"] = result.quality.to_dict()
    return row


class ReadingsCsv:
    """A readings CSV opened to append (``resume``) or written anew."""

    def __init__(self, path: Path, resume: bool = False):
        self.path = Path(path)
        self.done: set[str] = set()
        if resume and self.path.is_file() and self.path.stat().st_size:
            self.done = self._recover()
        else:
            with open(self.path, "w", newline="") as handle:
                csv.writer(handle).writerow(CSV_FIELDS)
        self.handle = open(self.path, "a", newline="")
        self.writer = csv.DictWriter(self.handle, fieldnames=CSV_FIELDS)

    def _recover(self) -> set[str]:
        """Cut a torn last line; the files already read. ValueError for another kind of CSV."""
        data = self.path.read_bytes()
        if not data.endswith(b"\n"):
            with open(self.path, "r+b") as handle:
                handle.truncate(data.rfind(b"\n") + 1)
        with open(self.path, newline="") as handle:
            reader = csv.DictReader(handle)
            if reader.fieldnames != CSV_FIELDS:
                raise ValueError(f"{self.path} is not a readings CSV of this version: cannot resume it")
            return {row["file"] for row in reader}

    def write(self, row: dict) -> None:
        flat = {
            key: json.dumps(value) if isinstance(value, (list, dict)) else value for key, value in row.items()
        }
        flat = {
            key: value.replace("\n", " ") if isinstance(value, str) else value for key, value in flat.items()
        }
        self.writer.writerow(flat)
        self.handle.flush()

    def close(self) -> None:
        self.handle.close()


def read_cases(
    predictor: BoneAgePredictor, cases: list[Case], batch_size: int = 8, progress: bool = False
) -> Iterator[tuple[Case, Reading | Exception]]:
    """Each case with its reading (or error) as soon as it is read, with a progress bar on
    stderr (count, rate, ETA) if ``progress``."""
    from tqdm import tqdm

    results = predictor.predict_stream(
        (c[0] for c in cases), (c[1] or "" for c in cases), (c[2] for c in cases), batch_size
    )
    with tqdm(total=len(cases), unit="radiograph", disable=not progress, dynamic_ncols=True) as bar:
        for case, result in zip(cases, results):
            bar.update()
            yield case, result
