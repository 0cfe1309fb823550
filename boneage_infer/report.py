"""Growth chart and one-page PDF report for a reading."""

from __future__ import annotations

import io
import unicodedata
from datetime import date
from functools import cache
from pathlib import Path

import cv2
import numpy as np

from . import clinical
from .reference import NEIGHBOURS

DISCLAIMER = "Research use only, not a medical device."
MAX_PATIENT_CHARS = 64
# DejaVu Sans (shipped with matplotlib: Latin, Greek, Cyrillic and more) prints the report;
# Debian's Droid Sans Fallback (fonts-droid-fallback) adds Chinese and Japanese, Nanum Gothic
# (fonts-nanum) Korean, where they are installed (the Dockerfile and .ci/run install both).
FALLBACK_FONTS = (
    Path("/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf"),
    Path("/usr/share/fonts/truetype/nanum/NanumGothic.ttf"),
)
STYLES = {"": "DejaVuSans.ttf", "B": "DejaVuSans-Bold.ttf", "I": "DejaVuSans-Oblique.ttf"}


def _font_dir() -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


@cache
def _covered() -> frozenset[int]:
    """Code points that the report's fonts (all styles and the fallbacks found) can print."""
    from fontTools.ttLib import TTFont

    fonts = [_font_dir() / name for name in STYLES.values()]
    fonts += [path for path in FALLBACK_FONTS if path.is_file()]
    common = None
    for style in fonts[: len(STYLES)]:
        points = set(TTFont(style, lazy=True).getBestCmap())
        common = points if common is None else common & points
    for fallback in fonts[len(STYLES) :]:
        common |= set(TTFont(fallback, lazy=True).getBestCmap())
    return frozenset(common)


def check_patient(text: str | None) -> str | None:
    """The name or ID to print, stripped (None if empty); ValueError if too long or it holds
    control characters."""
    value = (text or "").strip()
    if not value:
        return None
    if len(value) > MAX_PATIENT_CHARS:
        raise ValueError(
            f"The name or ID is {len(value)} characters long; at most {MAX_PATIENT_CHARS} are printed."
        )
    if any(unicodedata.category(ch).startswith("C") for ch in value):
        raise ValueError("The name or ID holds control characters (tab, newline, ...): type it on one line.")
    return value


def unprintable(text: str | None) -> str:
    """The characters of ``text`` that no report font can print (they print as '?')."""
    covered = _covered()
    return "".join(dict.fromkeys(ch for ch in text or "" if ord(ch) not in covered and not ch.isspace()))


def unprintable_warning(patient: str | None) -> str | None:
    """A warning naming the characters of the name that the report cannot print, or None."""
    missing = unprintable(patient)
    if not missing:
        return None
    return (
        f"The report has no font for {missing!r} in the name or ID: they print as '?'. "
        "Check the name on the PDF, or type it in Latin letters."
    )


def growth_chart(reading, dpi: int = 110) -> np.ndarray:
    """Bone age against chronological age with the G&P ±2 SD band for the sex; RGB uint8."""
    from matplotlib.figure import Figure  # no pyplot: safe in the app's worker threads

    fig = Figure(figsize=(5.2, 4.2), dpi=dpi)
    ax = fig.add_subplot()
    sexes = ("F", "M") if reading.sex not in clinical.SEXES else (reading.sex,)
    for sex, colour in zip(sexes, ("tab:red", "tab:blue") if len(sexes) == 2 else ("tab:green",)):
        ages = np.linspace(clinical.ATLAS_MIN_MONTHS, clinical.ATLAS_MAX_MONTHS[sex], 200)
        sd = np.array([clinical.sd_for_age(a, sex) for a in ages])
        label = {"F": "girls", "M": "boys"}[sex]
        ax.fill_between(
            ages / 12,
            (ages - 2 * sd) / 12,
            (ages + 2 * sd) / 12,
            color=colour,
            alpha=0.15,
            label=f"±2 SD, {label} (Greulich & Pyle)",
        )
        mean = [clinical.mean_skeletal_age(a, sex) for a in ages]
        ax.plot(ages / 12, np.array(mean) / 12, ":", color=colour, lw=1, label=f"Brush mean, {label}")
    ax.plot([0, 19], [0, 19], "k-", lw=0.8, label="bone age = age")
    bone_age = reading.bone_age_months / 12
    if reading.chronological_age_months is not None:
        age = reading.chronological_age_months / 12
        if reading.interval_90:
            low, high = (v / 12 for v in reading.interval_90)
            ax.errorbar(
                [age],
                [bone_age],
                yerr=[[bone_age - low], [high - bone_age]],
                fmt="none",
                ecolor="black",
                capsize=4,
                label="90% interval",
            )
        ax.plot([age], [bone_age], "D", color="black", ms=7, label="this child")
    else:
        ax.axhline(bone_age, color="black", ls="--", lw=1, label="bone age (no age given)")
    ax.set(xlabel="chronological age (years)", ylabel="bone age (years)", xlim=(0, 19), ylim=(0, 20))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return cv2.cvtColor(
        cv2.imdecode(np.frombuffer(buffer.getvalue(), np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB
    )


def _png(picture: np.ndarray) -> io.BytesIO:
    image = cv2.cvtColor(picture, cv2.COLOR_RGB2BGR) if picture.ndim == 3 else picture
    return io.BytesIO(cv2.imencode(".png", image)[1].tobytes())


def _printable(text: str) -> str:
    covered = _covered()
    return "".join(ch if ord(ch) in covered or ch.isspace() else "?" for ch in text)


def how_read(details: dict) -> str | None:
    """How a reading's bone age was made (reference.py), from its ``to_dict()``; None without
    a reference set."""
    if details.get("reference_bone_age_months") is None:
        return None
    return (
        f"mean of the network's reading ({details['network_bone_age_months']:.1f} months) and the "
        f"mean bone age of the {NEIGHBOURS} training radiographs it finds most alike "
        f"({details['reference_bone_age_months']:.1f} months, SD {details['reference_spread_months']:.1f}; "
        "the wider their spread, the wider the 90% interval)"
    )


def report_lines(reading) -> list[tuple[str, str]]:
    """The figures on the report, as (label, value) rows."""
    rows = [("Bone age", f"{reading.bone_age_months:.1f} months ({reading.bone_age_text})")]
    if reading.interval_90:
        rows.append(("90% interval", f"{reading.interval_90[0]:.1f} - {reading.interval_90[1]:.1f} months"))
    if reading.reference_bone_age_months is not None:  # the two halves of the bone age
        rows.append(("  network's reading", f"{reading.network_bone_age_months:.1f} months"))
        mean, spread = reading.reference_bone_age_months, reading.reference_spread_months
        rows.append((f"  {NEIGHBOURS} most alike train films", f"{mean:.1f} months (mean; SD {spread:.1f})"))
    rows.append(("Sex", {"F": "female", "M": "male"}.get(reading.sex, "unknown")))
    if reading.chronological_age_months is not None:
        rows.append(
            (
                "Chronological age",
                f"{reading.chronological_age_months:.1f} months "
                f"({clinical.format_months(reading.chronological_age_months)})",
            )
        )
        rows.append(("Gap (bone - chronological)", f"{reading.gap_months:+.1f} months"))
        rows.append(("Z-score (G&P SD)", "-" if reading.z_score is None else f"{reading.z_score:+.2f}"))
        rows.append(("Call", reading.call))
    rows.append(("Developmental stage", reading.stage))
    rows.append(("Model", f"{reading.model_version} on {reading.device}"))
    rows.append(("Date", date.today().isoformat()))
    return rows


def pdf_report(
    reading, enhanced: np.ndarray, heat_overlay: np.ndarray, path: Path, patient: str | None = None
) -> Path:
    """One page: radiograph and heatmap, the figures, the growth chart, the disclaimer.
    ``patient`` (``check_patient``) prints in Unicode; characters no font has print as '?'
    under a note that says so."""
    from fpdf import FPDF

    patient = check_patient(patient)
    pdf = FPDF(format="A4")
    for style, name in STYLES.items():
        pdf.add_font("report", style, _font_dir() / name)
    fallbacks = [font for font in FALLBACK_FONTS if font.is_file()]
    for n, font in enumerate(fallbacks):
        for style in STYLES:
            pdf.add_font(f"fallback{n}", style, font)
    pdf.set_fallback_fonts([f"fallback{n}" for n in range(len(fallbacks))], exact_match=False)
    pdf.set_auto_page_break(False)
    pdf.add_page()
    pdf.set_font("report", "B", 16)
    pdf.cell(0, 10, "Bone age report (Greulich & Pyle)", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("report", "B", 10)
    pdf.set_text_color(160, 0, 0)
    pdf.cell(0, 6, DISCLAIMER, new_x="LMARGIN", new_y="NEXT")
    pdf.set_text_color(0, 0, 0)
    if patient:
        pdf.set_font("report", "", 10)
        pdf.cell(0, 6, _printable(f"Patient: {patient}"), new_x="LMARGIN", new_y="NEXT")
    top = pdf.get_y() + 2
    pdf.image(_png(enhanced), x=10, y=top, w=60, h=60)
    pdf.image(_png(heat_overlay), x=75, y=top, w=60, h=60)
    pdf.set_font("report", "", 8)
    pdf.set_xy(10, top + 61)
    pdf.cell(60, 4, "Radiograph as the model saw it (CLAHE)")
    pdf.set_xy(75, top + 61)
    pdf.cell(60, 4, "Grad-CAM: where the model looked")
    pdf.set_xy(10, top + 68)
    for label, value in report_lines(reading):
        pdf.set_font("report", "B", 10)
        pdf.cell(55, 6, _printable(label))
        pdf.set_font("report", "", 10)
        pdf.cell(0, 6, _printable(str(value)), new_x="LMARGIN", new_y="NEXT")
    for warning in [*reading.warnings, unprintable_warning(patient)]:
        if warning:
            pdf.set_font("report", "I", 8)
            pdf.multi_cell(0, 4, _printable(f"Note: {warning}"), new_x="LMARGIN", new_y="NEXT")
    pdf.image(_png(growth_chart(reading)), x=10, y=max(pdf.get_y() + 2, 190), w=110)
    pdf.output(str(path))
    return Path(path)
