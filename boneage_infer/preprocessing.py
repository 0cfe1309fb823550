"""Radiograph decoding and enhancement, shared by training and serving.

Every image reaches the model the same way:

1. decode (PNG 8/16-bit, grey/RGB/RGBA/palette, JPEG, or DICOM with rescale,
   VOI LUT/window and MONOCHROME1 inversion) to a greyscale array;
2. stretch linearly to the full 8-bit range;
3. resize to ``CANONICAL_SIZE`` x ``CANONICAL_SIZE`` *without* keeping the aspect
   ratio, because the RSNA training copy was stretched that way;
4. for a model trained that way (``ModelConfig.hand_crop``), crop to a square around the
   hand, so that how much of the frame the hand fills does not change the reading;
5. CLAHE (OpenCV) for local contrast;
6. resize to the model input size and scale to [-1, 1].
"""

from __future__ import annotations

import io
import os
import threading
from dataclasses import dataclass, field, replace
from datetime import date
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .clinical import age_between

PREPROCESSING_VERSION = 2  # bump when the pixels reaching the model change (invalidates caches)
CANONICAL_SIZE = 299
CLAHE_CLIP_LIMIT = 2.0
CLAHE_TILE_GRID = (8, 8)
HAND_MARGIN = 0.05  # of the hand's longer side, on each side of the crop
MIN_HAND_AREA = 0.08  # of the frame: a smaller bright region is a marker or noise, not the hand
# A film scanned on a bed or lightbox larger than the film: a uniform grey frame around it.
FRAME_MAX_STD = 4.0  # grey levels along the outer edge
FRAME_TOLERANCE = 12  # grey levels: a pixel further from the frame's grey is film
MAX_FILM_AREA = 0.85  # of the image: a film filling more is read as it is
MIN_FILM_AREA = 0.15
FILM_NOTE = "Film scan: read inside the film, without the uniform border around it."
MAX_PIXELS = 60_000_000  # larger than any plain radiograph; guards against decompression bombs
MIN_SIDE = 64  # smaller images cannot show the growth plates
MAX_FILE_BYTES = int(float(os.environ.get("BONEAGE_MAX_UPLOAD_MB", "100")) * 1024 * 1024)

Image.MAX_IMAGE_PIXELS = MAX_PIXELS

_DICOM_MAGIC_OFFSET = 128


class ImageError(ValueError):
    """The file is not a radiograph this tool can read; the message says why."""


@dataclass
class Radiograph:
    """A decoded radiograph: greyscale pixels plus what the file said about the patient."""

    pixels: np.ndarray  # 2-D, uint8
    source_format: str
    sex: str | None = None  # "M" / "F" from DICOM PatientSex
    birth_date: date | None = None
    study_date: date | None = None
    laterality: str | None = None  # "L" / "R" from DICOM (Image)Laterality
    modality: str | None = None  # DICOM Modality, e.g. "CR", "DX", "US"
    body_part: str | None = None  # DICOM BodyPartExamined, e.g. "HAND"
    colourfulness: float = 0.0  # Hasler & Süsstrunk 2003; 0 for grey images
    original_levels: int = 256  # distinct grey levels spanned before stretching (contrast)
    notes: list[str] = field(default_factory=list)


def _read_bytes(source: str | Path | bytes) -> bytes:
    if isinstance(source, bytes):
        data = source
    else:
        path = Path(source)
        if not path.is_file():
            raise ImageError(f"File not found: {path}")
        if path.stat().st_size > MAX_FILE_BYTES:
            raise ImageError(f"File is larger than {MAX_FILE_BYTES // 2**20} MiB: {path.name}")
        data = path.read_bytes()
    if not data:
        raise ImageError("The file is empty.")
    return data


def _is_dicom(data: bytes) -> bool:
    return data[_DICOM_MAGIC_OFFSET : _DICOM_MAGIC_OFFSET + 4] == b"DICM"


def _check_size(width: int, height: int) -> None:
    if width * height > MAX_PIXELS:
        raise ImageError(f"Image is {width}x{height} pixels, over the limit of {MAX_PIXELS:,} pixels.")
    if min(width, height) < MIN_SIDE:
        raise ImageError(f"Image is only {width}x{height} pixels; at least {MIN_SIDE} px per side is needed.")


def _to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Stretch any bit depth linearly to the full 0..255 range (min -> 0, max -> 255).

    Applied to every image, 8-bit included, so the same radiograph stored at any
    bit depth or linear scaling reaches the model identically.
    """
    if pixels.dtype == np.uint8 and pixels.min() == 0 and pixels.max() == 255:
        return pixels
    pixels = pixels.astype(np.float64)
    low, high = float(pixels.min()), float(pixels.max())
    if high <= low:
        return np.zeros(pixels.shape, np.uint8)
    return np.round((pixels - low) * (255.0 / (high - low))).astype(np.uint8)


def _decode_raster(data: bytes) -> Radiograph:
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageError("Not an image this tool can read: upload PNG, JPEG or DICOM.") from None
    except Image.DecompressionBombError as exc:
        raise ImageError(f"Image is too large: {exc}") from None
    if image.format not in ("PNG", "JPEG"):
        raise ImageError(f"Unsupported image format {image.format}: upload PNG, JPEG or DICOM.")
    _check_size(*image.size)
    try:
        image.load()
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"The {image.format} file is truncated or corrupt ({exc}).") from None
    source_format = image.format
    image = ImageOps.exif_transpose(image)  # upright as a viewer shows it (camera/PACS export tag)
    colourfulness = 0.0
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "L"):
        pixels = np.asarray(image)
    else:  # RGB, RGBA, LA, P, CMYK, 1 ...
        if "A" in image.getbands() or image.mode == "P":
            image = image.convert("RGBA")
            background = Image.new("RGBA", image.size, (0, 0, 0, 255))
            image = Image.alpha_composite(background, image)
        colourfulness = _colourfulness(np.asarray(image.convert("RGB")))
        pixels = np.asarray(image.convert("L"))
    return _radiograph(np.asarray(pixels), source_format, colourfulness=colourfulness)


def _colourfulness(rgb: np.ndarray) -> float:
    """Hasler & Süsstrunk (2003) colourfulness: about 0 for grey images, > 30 for colour photos."""
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    rg, yb = r - g, 0.5 * (r + g) - b
    return float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))


def _radiograph(pixels: np.ndarray, source_format: str, **metadata) -> Radiograph:
    """Stretch to uint8 and record how many grey levels the original spanned."""
    full_scale = 255.0 if pixels.dtype == np.uint8 else float(max(pixels.max(), 1))
    levels = int(round(256 * (float(pixels.max()) - float(pixels.min())) / full_scale))
    return Radiograph(
        pixels=_to_uint8(pixels), source_format=source_format, original_levels=levels, **metadata
    )


def _dicom_date(value: object) -> date | None:
    text = str(value or "").strip()
    if len(text) < 8 or not text[:8].isdigit():
        return None
    try:
        return date(int(text[:4]), int(text[4:6]), int(text[6:8]))
    except ValueError:
        return None


def _decode_dicom(data: bytes) -> Radiograph:
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    from . import dicom_jpeg12

    try:
        dataset = pydicom.dcmread(io.BytesIO(data))
        rows, columns = int(dataset.Rows), int(dataset.Columns)
    except Exception as exc:  # pydicom raises many types for damaged files
        raise ImageError(f"The DICOM file is corrupt or has no image ({exc}).") from None
    _check_size(columns, rows)
    try:
        dicom_jpeg12.use_for(dataset)
        pixels = dataset.pixel_array
    except Exception as exc:
        raise ImageError(f"Cannot read the DICOM pixel data ({exc}).") from None
    if pixels.ndim == 3 and pixels.shape[-1] in (3, 4):
        pixels = cv2.cvtColor(_to_uint8(pixels[..., :3]), cv2.COLOR_RGB2GRAY)
    elif pixels.ndim != 2:
        raise ImageError("Multi-frame DICOM is not supported: export a single frame.")
    pixels = apply_modality_lut(pixels, dataset)
    pixels = apply_voi_lut(pixels, dataset)
    pixels = np.asarray(pixels, np.float64)
    if str(dataset.get("PhotometricInterpretation", "")) == "MONOCHROME1":
        pixels = pixels.max() + pixels.min() - pixels

    def text(keyword: str) -> str | None:
        return str(dataset.get(keyword, "") or "").strip().upper() or None

    sex = text("PatientSex")
    birth_date = _dicom_date(dataset.get("PatientBirthDate"))
    study_date = _dicom_date(
        dataset.get("StudyDate") or dataset.get("AcquisitionDate") or dataset.get("ContentDate")
    )
    notes = []
    if birth_date and study_date:
        try:
            age_between(birth_date, study_date)
        except ValueError as exc:
            notes.append(f"DICOM birth and study dates ignored: {exc}")
            birth_date = study_date = None
    return _radiograph(
        pixels,
        "DICOM",
        sex=sex if sex in ("M", "F") else None,
        birth_date=birth_date,
        study_date=study_date,
        laterality=text("ImageLaterality") or text("Laterality"),
        modality=text("Modality"),
        body_part=text("BodyPartExamined"),
        notes=notes,
    )


def read_radiograph(source: str | Path | bytes) -> Radiograph:
    """Decode a PNG, JPEG or DICOM file (path or bytes) to a greyscale radiograph."""
    data = _read_bytes(source)
    radiograph = _decode_dicom(data) if _is_dicom(data) else _decode_raster(data)
    if radiograph.laterality == "R":
        radiograph.pixels = np.ascontiguousarray(radiograph.pixels[:, ::-1])
        radiograph.notes.append("DICOM says right hand: image flipped to match a left hand.")
    return radiograph


_per_thread = threading.local()  # an OpenCV CLAHE object keeps working buffers: one per thread


def canonical(pixels: np.ndarray) -> np.ndarray:
    """Stretch a uint8 greyscale radiograph to the canonical square (aspect ratio not kept)."""
    if pixels.shape == (CANONICAL_SIZE, CANONICAL_SIZE):
        return pixels
    shrinking = min(pixels.shape) >= CANONICAL_SIZE
    return cv2.resize(
        pixels,
        (CANONICAL_SIZE, CANONICAL_SIZE),
        interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR,
    )


def clahe(pixels: np.ndarray) -> np.ndarray:
    """CLAHE (OpenCV) on a uint8 image; safe to call from several threads at once."""
    if not hasattr(_per_thread, "clahe"):
        _per_thread.clahe = cv2.createCLAHE(clipLimit=CLAHE_CLIP_LIMIT, tileGridSize=CLAHE_TILE_GRID)
    return _per_thread.clahe.apply(np.ascontiguousarray(pixels))


def _largest_bright_region(blurred: np.ndarray, within: np.ndarray | None = None):
    """Stats (x, y, width, height, area) and mask of the largest region brighter than Otsu's
    threshold (taken over ``within`` only, if given), after a 7x7 opening; None if none."""
    values = blurred[within] if within is not None else blurred
    threshold, _ = cv2.threshold(values.reshape(-1, 1), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    bright = blurred > threshold if within is None else (blurred > threshold) & within
    bright = cv2.morphologyEx(bright.astype(np.uint8), cv2.MORPH_OPEN, np.ones((7, 7), np.uint8))
    count, labels, stats, _ = cv2.connectedComponentsWithStats(bright)
    if count < 2:
        return None
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return stats[largest], labels == largest


def hand_box(pixels: np.ndarray) -> tuple[int, int, int, int] | None:
    """The hand's bounding box (x, y, width, height) in a uint8 radiograph: the largest region
    brighter than Otsu's threshold, or, when that region is a plate or a collimated field (it
    fills more than 80 % of its box), the largest one inside it by a second threshold. None
    when nothing of at least ``MIN_HAND_AREA`` of the frame stands out."""
    blurred = cv2.GaussianBlur(pixels, (5, 5), 0)
    region = _largest_bright_region(blurred)
    if region is not None and region[0][4] > 0.8 * region[0][2] * region[0][3]:
        region = _largest_bright_region(blurred, within=region[1])
    if region is None:
        return None
    x, y, width, height, _ = (int(v) for v in region[0])
    return (x, y, width, height) if width * height >= MIN_HAND_AREA * pixels.size else None


def film_box(pixels: np.ndarray) -> tuple[int, int, int, int] | None:
    """The film's rectangle (x, y, width, height) in a scan where a uniform grey frame (the
    scanner bed or lightbox) surrounds it; None when there is no such frame."""
    ring = np.concatenate(
        [pixels[:2].ravel(), pixels[-2:].ravel(), pixels[:, :2].ravel(), pixels[:, -2:].ravel()]
    )
    grey = float(np.median(ring))
    if ring.std() > FRAME_MAX_STD:
        return None
    film = np.abs(cv2.medianBlur(pixels, 5).astype(np.int16) - grey) > FRAME_TOLERANCE
    count, _, stats, _ = cv2.connectedComponentsWithStats(film.astype(np.uint8))
    if count < 2:
        return None
    x, y, width, height, _ = (int(v) for v in stats[1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))])
    share = width * height / pixels.size
    return (x, y, width, height) if MIN_FILM_AREA <= share <= MAX_FILM_AREA else None


def crop_to_film(radiograph: Radiograph) -> Radiograph:
    """The radiograph inside its film (``film_box``), with a note; unchanged without a frame."""
    box = film_box(radiograph.pixels)
    if box is None:
        return radiograph
    x, y, width, height = box
    pixels = _to_uint8(radiograph.pixels[y : y + height, x : x + width])
    return replace(radiograph, pixels=pixels, notes=[*radiograph.notes, FILM_NOTE])


def crop_to_hand(pixels: np.ndarray) -> np.ndarray:
    """A square around the hand (``hand_box`` plus ``HAND_MARGIN``), resized to the input's
    size; beyond the frame it is filled with the frame's median edge grey. Unchanged if no
    hand is found."""
    box = hand_box(pixels)
    if box is None:
        return pixels
    x, y, width, height = box
    side = max(width, height) * (1 + 2 * HAND_MARGIN)
    size = pixels.shape[0]
    k = size / side
    left, top = x + width / 2 - side / 2, y + height / 2 - side / 2
    matrix = np.float32([[k, 0, -left * k], [0, k, -top * k]])
    edges = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    return cv2.warpAffine(
        pixels,
        matrix,
        (size, size),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=int(np.median(edges)),
    )


def enhance(pixels: np.ndarray, hand_crop: bool = False) -> np.ndarray:
    """Stretch a uint8 greyscale radiograph to the canonical square, crop it to the hand if
    ``hand_crop``, and apply CLAHE."""
    pixels = canonical(pixels)
    return clahe(crop_to_hand(pixels) if hand_crop else pixels)


def scale(pixels):  # numpy array or tf tensor
    """Map 0..255 to the model's range [-1, 1]."""
    return pixels / 127.5 - 1.0


def to_model_input(enhanced: np.ndarray, size: int) -> np.ndarray:
    """Resize an enhanced canonical image to ``size`` and scale it: (size, size, 1) float32."""
    if enhanced.shape != (size, size):
        enhanced = cv2.resize(enhanced, (size, size), interpolation=cv2.INTER_AREA)
    return scale(enhanced.astype(np.float32))[..., None]


def zoom(model_input: np.ndarray, factor: float) -> np.ndarray:
    """A model input magnified by ``factor`` about its centre (below 1: shrunk, the edges
    repeated outward), at the same size; a test-time view (``ModelConfig.test_zooms``)."""
    if factor == 1.0:
        return model_input
    height, width, channels = model_input.shape
    cx, cy = width / 2, height / 2
    matrix = np.float32([[factor, 0, cx - factor * cx], [0, factor, cy - factor * cy]])
    out = cv2.warpAffine(
        model_input, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    return out.reshape(height, width, channels)


def preprocess(source: str | Path | bytes, size: int, hand_crop: bool = False) -> np.ndarray:
    """Full path from a file to one model input."""
    return to_model_input(enhance(read_radiograph(source).pixels, hand_crop), size)
