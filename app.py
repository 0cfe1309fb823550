"""Gradio web app: upload a hand radiograph, get the bone age and how it compares with age.

``python app.py`` serves on 127.0.0.1:7860 (GRADIO_SERVER_NAME / GRADIO_SERVER_PORT override).
The named API endpoint ``/predict`` takes (file, sex, age, birth date, exam date).
"""

from __future__ import annotations

import os

import gradio as gr

from boneage_infer import clinical
from boneage_infer.data import example_cases
from boneage_infer.predictor import BoneAgePredictor
from boneage_infer.preprocessing import MAX_FILE_BYTES, ImageError

SEX_CHOICES = [("Female", "F"), ("Male", "M")]
DISCLAIMER = "Research use only, not a medical device. Bone age by the Greulich & Pyle standard."


def make_predict(predictor: BoneAgePredictor):
    """The UI/API handler bound to a loaded predictor."""

    def predict(
        radiograph: str | None,
        sex: str | None,
        chronological_age: str | None,
        birth_date: str | None = None,
        exam_date: str | None = None,
        progress: gr.Progress = gr.Progress(),
    ):
        if not radiograph:
            raise gr.Error("Upload a hand radiograph (PNG, JPEG or DICOM).")
        if not sex:
            raise gr.Error("Choose the sex: the standards differ for girls and boys.")
        try:
            sex = clinical.check_sex(sex)
            age = clinical.chronological_age(chronological_age, birth_date, exam_date)
            progress(0.2, desc="Decoding and enhancing (CLAHE)")
            prepared = predictor.prepare(radiograph)
            progress(0.6, desc="Estimating bone age")
            reading = predictor.predict_prepared(prepared, sex, age, file=os.path.basename(radiograph))
        except (ImageError, ValueError) as exc:
            raise gr.Error(str(exc)) from None
        for warning in reading.warnings:
            gr.Warning(warning)
        return _outputs(reading, prepared.enhanced, predictor)

    return predict


def _outputs(reading, enhanced, predictor: BoneAgePredictor):
    bone_age = f"{reading.bone_age_months:.1f} months ({reading.bone_age_text})"
    if reading.gap_months is None:
        gap = "enter the chronological age to compare"
        z = "-"
    else:
        gap = (
            f"{reading.gap_months:+.1f} months "
            f"(bone age − chronological age {reading.chronological_age_months:.1f} months)"
        )
        z = (
            f"{reading.z_score:+.2f} SD: {reading.call}"
            if reading.z_score is not None
            else f"{reading.call}: {'; '.join(reading.warnings)}"
        )
    model = f"Model {reading.model_version} on {reading.device}. {DISCLAIMER}"
    return bone_age, gap, z, reading.stage, enhanced, reading.to_dict(), model


def build_app(predictor: BoneAgePredictor) -> gr.Blocks:
    with gr.Blocks(title="Bone age assessment") as demo:
        gr.Markdown(
            "# Bone age from a hand radiograph\n"
            "Upload a left-hand radiograph (PNG, JPEG or DICOM), choose the sex and enter the "
            "chronological age. The reading compares bone age with age against the Greulich & Pyle "
            f"standard deviations. *{DISCLAIMER}*"
        )
        with gr.Row():
            with gr.Column():
                radiograph = gr.File(label="Hand radiograph (PNG, JPEG or DICOM)", type="filepath")
                sex = gr.Radio(SEX_CHOICES, label="Sex")
                age = gr.Textbox(
                    label="Chronological age",
                    placeholder="months (e.g. 123) or years and months (e.g. 10y3m)",
                )
                with gr.Accordion("…or from dates", open=False):
                    birth_date = gr.Textbox(label="Birth date", placeholder="YYYY-MM-DD")
                    exam_date = gr.Textbox(label="Exam date", placeholder="YYYY-MM-DD")
                button = gr.Button("Assess bone age", variant="primary")
            with gr.Column():
                bone_age = gr.Textbox(label="Bone age", elem_id="bone-age")
                gap = gr.Textbox(label="Gap to chronological age", elem_id="gap")
                z_score = gr.Textbox(label="Z-score and call", elem_id="z-score")
                stage = gr.Textbox(label="Developmental stage", elem_id="stage")
                enhanced = gr.Image(label="Image as the model saw it (CLAHE)", type="numpy", format="png")
                details = gr.JSON(label="Full reading")
                model_info = gr.Markdown()
        inputs = [radiograph, sex, age, birth_date, exam_date]
        outputs = [bone_age, gap, z_score, stage, enhanced, details, model_info]
        button.click(make_predict(predictor), inputs, outputs, api_name="predict")
        examples = example_cases()
        if examples:
            gr.Examples(
                [[str(c.path), c.sex, f"{c.chronological_age_months:g}", "", ""] for c in examples],
                inputs,
                label="Examples from the RSNA validation split (delayed, normal, advanced)",
            )
    return demo


def main() -> None:
    predictor = BoneAgePredictor()
    demo = build_app(predictor)
    demo.queue(default_concurrency_limit=2).launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        server_port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
        max_file_size=MAX_FILE_BYTES,
        show_error=True,
        allowed_paths=sorted({str(c.path.parent) for c in example_cases()}),
    )


if __name__ == "__main__":
    main()
