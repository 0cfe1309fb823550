"""Gradio web app: upload a hand radiograph, get the bone age and how it compares with age.

``python app.py`` serves on 127.0.0.1:7860 (GRADIO_SERVER_NAME / GRADIO_SERVER_PORT override).
The named API endpoint ``/predict`` takes (file, sex, age, birth date, exam date, report name).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

from boneage_infer.server import UploadLimits, private_folder, private_gradio_temp

private_gradio_temp()  # before gradio is imported, which reads GRADIO_TEMP_DIR

import gradio as gr  # noqa: E402
from starlette.middleware import Middleware  # noqa: E402

from boneage_infer import clinical, report  # noqa: E402
from boneage_infer.data import ExampleCase, example_cases  # noqa: E402
from boneage_infer.predictor import BoneAgePredictor  # noqa: E402
from boneage_infer.preprocessing import MAX_FILE_BYTES, ImageError, read_radiograph  # noqa: E402

SEX_CHOICES = [("Female", "F"), ("Male", "M"), ("Unknown", "U")]
KEEP_FILES_SECONDS = 900  # reports and Gradio's copies of uploads are deleted after 15 minutes
CLEAN_EVERY_SECONDS = 300
MAX_UPLOAD_BYTES = MAX_FILE_BYTES + (1 << 20)  # one radiograph and its multipart framing


def report_folder() -> Path:
    """A fresh folder for one PDF report; report folders older than KEEP_FILES_SECONDS are removed."""
    reports = private_folder("boneage-reports")
    for old in reports.iterdir():
        if old.stat().st_mtime < time.time() - KEEP_FILES_SECONDS:
            shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(dir=reports))


def make_predict(predictor: BoneAgePredictor):
    """The UI/API handler bound to a loaded predictor."""

    def predict(
        radiograph: str | None,
        sex: str | None,
        chronological_age: str | None,
        birth_date: str | None = None,
        exam_date: str | None = None,
        patient: str | None = None,
        progress: gr.Progress = gr.Progress(),
    ):
        if not radiograph:
            raise gr.Error("Upload a hand radiograph (PNG, JPEG or DICOM).")
        try:
            age, age_warning = clinical.chronological_age(chronological_age, birth_date, exam_date)
            patient = report.check_patient(patient)
            progress(0.1, desc="Decoding, checking and enhancing (CLAHE)")
            prepared = predictor.prepare(radiograph)
            progress(0.4, desc="Estimating bone age")
            reading = predictor.predict_prepared(prepared, sex, age, file=os.path.basename(radiograph))
        except (ImageError, ValueError) as exc:
            raise gr.Error(str(exc)) from None
        reading.warnings += [w for w in (age_warning, report.unprintable_warning(patient)) if w]
        progress(0.6, desc="Heatmap, chart and report")
        heat = predictor.heatmap_overlay(prepared, reading.sex)
        pdf = report.pdf_report(
            reading, prepared.enhanced, heat, report_folder() / "bone_age_report.pdf", patient
        )
        for warning in reading.warnings:
            gr.Warning(warning)
        details = reading.to_dict()
        return (
            *_texts(details),
            prepared.enhanced,
            heat,
            report.growth_chart(reading),
            str(pdf),
            details,
            _model_text(details),
        )

    return predict


def _texts(details: dict) -> tuple[str, str, str, str]:
    """Bone age, gap, z-score and stage as text, from the same rounded figures as the details
    JSON (so a value at a rounding boundary reads the same in both)."""
    bone_age = f"{details['bone_age_months']:.1f} months ({details['bone_age_text']})"
    if details["interval_90"]:
        bone_age += f", 90% interval {details['interval_90'][0]:.1f}-{details['interval_90'][1]:.1f}"
    if details["gap_months"] is None:
        gap, z = "enter the chronological age to compare", "-"
    else:
        gap = (
            f"{details['gap_months']:+.1f} months "
            f"(bone age − chronological age {details['chronological_age_months']:.1f} months)"
        )
        z_score = details["z_score"]
        z = f"{z_score:+.2f} SD: {details['call']}" if z_score is not None else details["call"]
    return bone_age, gap, z, details["stage"]


def _model_text(details: dict) -> str:
    """Which weights and device made the reading, and how the bone age was made."""
    parts = report.how_read(details)
    made = f" Bone age: the {parts}." if parts else ""
    return f"Model {details['model_version']} on {details['device']}.{made} {report.DISCLAIMER}"


def cleared_outputs() -> tuple:
    """Empty results: bone age, gap, z-score, stage, three images, report, details, model."""
    return ("",) * 4 + (None,) * 5 + ("",)


def dicom_defaults(radiograph: str | None):
    """Prefill sex and dates from a DICOM upload (the user can change them)."""
    unchanged = (gr.update(), gr.update(), gr.update())
    if not radiograph:
        return unchanged
    try:
        meta = read_radiograph(radiograph)
    except ImageError:
        return unchanged  # the reading explains what is wrong
    if meta.source_format != "DICOM":
        return unchanged
    return (
        gr.update(value=meta.sex) if meta.sex else gr.update(),
        gr.update(value=meta.birth_date.isoformat()) if meta.birth_date else gr.update(),
        gr.update(value=meta.study_date.isoformat()) if meta.study_date else gr.update(),
    )


def build_app(predictor: BoneAgePredictor, examples: list[ExampleCase]) -> gr.Blocks:
    with gr.Blocks(
        title="Bone age assessment", delete_cache=(CLEAN_EVERY_SECONDS, KEEP_FILES_SECONDS)
    ) as demo:
        gr.Markdown(
            "# Bone age from a hand radiograph\n"
            "Upload a left-hand radiograph (PNG, JPEG or DICOM) as acquired, neither cropped tight "
            "around the hand nor padded, choose the sex and enter the "
            "chronological age. The reading compares bone age with age against the Greulich & Pyle "
            f"standard deviations. *{report.DISCLAIMER}*"
        )
        with gr.Row():
            with gr.Column():
                radiograph = gr.File(
                    label="Hand radiograph (PNG, JPEG or DICOM)", type="filepath", elem_id="radiograph"
                )
                sex = gr.Radio(SEX_CHOICES, label="Sex")
                age = gr.Textbox(
                    label="Chronological age",
                    placeholder="months (e.g. 123) or years and months (e.g. 10y3m)",
                )
                with gr.Accordion("…or from dates (prefilled from DICOM)", open=False):
                    birth_date = gr.Textbox(label="Birth date", placeholder="YYYY-MM-DD")
                    exam_date = gr.Textbox(label="Exam date", placeholder="YYYY-MM-DD")
                patient = gr.Textbox(label="Name or ID to print on the report (optional)", max_lines=1)
                button = gr.Button("Assess bone age", variant="primary")
            with gr.Column():
                bone_age = gr.Textbox(label="Bone age", elem_id="bone-age")
                gap = gr.Textbox(label="Gap to chronological age", elem_id="gap")
                z_score = gr.Textbox(label="Z-score and call", elem_id="z-score")
                stage = gr.Textbox(label="Developmental stage", elem_id="stage")
                pdf = gr.File(label="PDF report", elem_id="report")
                model_info = gr.Markdown()
        with gr.Row():
            enhanced = gr.Image(
                label="Image as the model saw it (CLAHE)", type="numpy", format="png", elem_id="enhanced"
            )
            heatmap = gr.Image(
                label="Grad-CAM: where the model looked", type="numpy", format="png", elem_id="heatmap"
            )
            chart = gr.Image(
                label="Growth chart (Greulich & Pyle ±2 SD)", type="numpy", format="png", elem_id="chart"
            )
        details = gr.JSON(label="Full reading")
        inputs = [radiograph, sex, age, birth_date, exam_date, patient]
        outputs = [bone_age, gap, z_score, stage, enhanced, heatmap, chart, pdf, details, model_info]
        # a reading is never left beside an image or inputs it was not made from (a rejected
        # upload, a bad age): results are cleared on a new upload and before every reading
        clear = {"fn": cleared_outputs, "outputs": outputs, "queue": False, "api_visibility": "private"}
        radiograph.change(**clear)
        button.click(**clear).then(make_predict(predictor), inputs, outputs, api_name="predict")
        radiograph.upload(dicom_defaults, radiograph, [sex, birth_date, exam_date], api_visibility="private")
        if examples:
            gr.Examples(
                [[str(c.path), c.sex, f"{c.chronological_age_months:g}"] for c in examples],
                [radiograph, sex, age],
                label="Examples from the RSNA validation split (normal, delayed, advanced)",
            )
    return demo


def main() -> None:
    os.umask(0o077)  # every file the app writes, Gradio's included, readable by its own user only
    predictor = BoneAgePredictor()
    examples = example_cases()
    demo = build_app(predictor, examples)
    demo.queue(default_concurrency_limit=int(os.environ.get("BONEAGE_CONCURRENCY", "2"))).launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        server_port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
        max_file_size=MAX_FILE_BYTES,
        show_error=True,
        allowed_paths=[str(c.path) for c in examples],  # the example files, not their folder
        app_kwargs={"middleware": [Middleware(UploadLimits, max_bytes=MAX_UPLOAD_BYTES)]},
    )


if __name__ == "__main__":
    main()
