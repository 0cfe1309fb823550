"""Images that are not hand radiographs: scikit-image's sample data, other modalities' and body
parts' medical images that pydicom, pydicom-data and matplotlib ship, and synthetic images."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import data_store  # pydicom-data: pydicom's larger test files, installed from PyPI
import matplotlib
import numpy as np
import pydicom
import skimage.data
from PIL import Image, ImageDraw, ImageFont

SKIMAGE_SAMPLES = [
    "astronaut", "binary_blobs", "brick", "camera", "cat", "cell", "checkerboard", "chelsea", "clock",
    "coffee", "coins", "colorwheel", "grass", "gravel", "horse", "hubble_deep_field",
    "immunohistochemistry", "logo", "microaneurysms", "moon", "page", "retina", "rocket",
    "shepp_logan_phantom", "text",
]  # fmt: skip


# pydicom's test files: real CT, MRI (abdomen), ultrasound (obstetric), nuclear medicine (whole
# body) and an OT-labelled 512x512 slice
PYDICOM_FILES = ["CT_small.dcm", "693_J2KI.dcm", "examples_overlay.dcm", "examples_palette.dcm",
                 "examples_jpeg2k.dcm", "JPEG2000.dcm", "image_dfl.dcm"]  # fmt: skip
# pydicom-data's plain radiographs (CR, DICOM WG04 set): a PA chest, and an AP lower leg and ankle
OTHER_BODY_PART_FILES = ["RG1_UNCR.dcm", "RG3_UNCR.dcm"]


def _uint8(image: np.ndarray) -> np.ndarray:
    if image.dtype == bool:
        return image.astype(np.uint8) * 255
    if image.dtype != np.uint8:
        image = image.astype(np.float64)
        return np.uint8(255 * (image - image.min()) / max(image.max() - image.min(), 1e-9))
    return image


def _png(image: np.ndarray | Image.Image) -> bytes:
    buffer = io.BytesIO()
    (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(buffer, format="PNG")
    return buffer.getvalue()


def _text_screenshot() -> Image.Image:
    image = Image.new("RGB", (900, 700), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=18)
    for line in range(30):
        draw.text(
            (20, 10 + 22 * line),
            f"Line {line}: patient list, bone age report draft, lorem ipsum",
            fill="black",
            font=font,
        )
    return image


def _dark_text_screenshot() -> Image.Image:
    image = Image.new("L", (900, 700), 20)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=18)
    for line in range(30):
        draw.text(
            (20, 10 + 22 * line), f"$ python train.py --epoch {line} loss=0.{line:03d}", fill=230, font=font
        )
    return image


def _synthetic(rng: np.random.Generator) -> dict[str, bytes]:
    y, x = np.mgrid[0:400, 0:400]
    blobs = np.zeros((400, 400))
    for _ in range(12):
        cy, cx, r = rng.integers(40, 360, 2).tolist() + [int(rng.integers(10, 60))]
        blobs += np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * r**2))
    return {
        "black": _png(np.zeros((400, 400), np.uint8)),
        "white": _png(np.full((400, 400), 255, np.uint8)),
        "grey": _png(np.full((400, 400), 128, np.uint8)),
        "nearly-uniform": _png((128 + rng.integers(0, 2, (400, 400))).astype(np.uint8)),
        "gaussian-noise": _png(np.clip(rng.normal(128, 50, (400, 400)), 0, 255).astype(np.uint8)),
        "uniform-noise": _png(rng.integers(0, 256, (400, 400), dtype=np.uint8)),
        "colour-noise": _png(rng.integers(0, 256, (300, 300, 3), dtype=np.uint8)),
        "salt-and-pepper": _png((rng.random((400, 400)) > 0.5).astype(np.uint8) * 255),
        "gradient": _png(np.uint8(x * 255 / 399)),
        "blurry-blobs": _png(_uint8(blobs)),
        "text-screenshot": _png(_text_screenshot()),
        "terminal-screenshot": _png(_dark_text_screenshot()),
        "tiny": _png(np.uint8(rng.integers(0, 256, (40, 40)))),
    }


def other_modality_dicoms() -> dict[str, bytes]:
    """name -> DICOM bytes, as a scanner would send them (headers included)."""
    folder = Path(pydicom.__file__).parent / "data" / "test_files"
    return {name: (folder / name).read_bytes() for name in PYDICOM_FILES}


def other_body_part_radiographs() -> dict[str, bytes]:
    """name -> DICOM bytes of real plain radiographs of the chest and the lower leg."""
    folder = Path(data_store.__file__).parent / "data"
    return {name: (folder / name).read_bytes() for name in OTHER_BODY_PART_FILES}


def other_body_part_pictures() -> dict[str, bytes]:
    """Those radiographs as bare PNGs (no header to help), whole and without the collimated border."""
    from boneage_infer.preprocessing import read_radiograph

    chest, leg = (read_radiograph(data).pixels for data in other_body_part_radiographs().values())
    rows, cols = chest.shape
    return {
        "chest.png": _png(chest),
        "chest-lungs.png": _png(
            chest[int(0.05 * rows) : int(0.9 * rows), int(0.05 * cols) : int(0.95 * cols)]
        ),
        "lower-leg.png": _png(leg),
        "lower-leg-no-border.png": _png(leg[:, int(0.3 * leg.shape[1]) : int(0.72 * leg.shape[1])]),
    }


def _other_modality_pictures() -> dict[str, bytes]:
    """The same pixels as plain PNGs (no header to help), plus matplotlib's brain MRI."""
    from boneage_infer.preprocessing import read_radiograph

    dicoms = other_modality_dicoms()
    images = {f"{name}.png": _png(read_radiograph(data).pixels) for name, data in dicoms.items()}
    sample = Path(matplotlib.get_data_path()) / "sample_data" / "s1045.ima.gz"
    mri = np.frombuffer(gzip.decompress(sample.read_bytes()), np.uint16).reshape(256, 256).astype(float)
    images["brain-mri.png"] = _png(np.uint8(255 * np.clip(mri / np.percentile(mri, 99.5), 0, 1)))
    return images


def non_hand_images() -> dict[str, bytes]:
    """name -> image bytes (PNG, or DICOM for the other modalities)."""
    images = {name: _png(_uint8(getattr(skimage.data, name)())) for name in SKIMAGE_SAMPLES}
    images.update(other_modality_dicoms())
    images.update(_other_modality_pictures())
    images.update(other_body_part_radiographs())
    images.update(other_body_part_pictures())
    images.update(_synthetic(np.random.default_rng(0)))
    return images
