"""Preprocessing on real radiographs: decoding every supported format the same way, CLAHE, bad input."""

from __future__ import annotations

import io
import logging

import cv2
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.uid import JPEGExtended12Bit, JPEGLosslessSV1
from synth import compress_jpeg12, compress_jpeg_lossless, grey, to_16bit, write_dicom, write_png16

from boneage_infer import preprocessing as pp
from boneage_infer.preprocessing import ImageError


def local_contrast(image: np.ndarray) -> float:
    """Mean standard deviation over 16x16 tiles."""
    h, w = image.shape
    tiles = image[: h // 16 * 16, : w // 16 * 16].reshape(h // 16, 16, w // 16, 16).astype(float)
    return float(tiles.std(axis=(1, 3)).mean())


def test_clahe_raises_local_contrast(radiographs):
    for path in radiographs:
        pixels = pp.read_radiograph(path).pixels
        assert local_contrast(pp.enhance(pixels)) > 1.1 * local_contrast(pixels)


def test_clahe_from_several_threads_matches_one_thread(radiographs):
    """Training decodes in parallel threads; a shared OpenCV CLAHE object mixed their images."""
    from concurrent.futures import ThreadPoolExecutor

    images = [pp.read_radiograph(path).pixels for path in radiographs] * 20
    expected = [pp.clahe(image) for image in images]
    with ThreadPoolExecutor(4) as pool:
        for got, want in zip(pool.map(pp.clahe, images), expected, strict=True):
            np.testing.assert_array_equal(got, want)


def test_zoom_magnifies_the_model_input_about_its_centre(radiograph):
    image = pp.preprocess(radiograph, 299)
    assert pp.zoom(image, 1.0) is image
    closer = pp.zoom(image, 1.25)
    assert closer.shape == image.shape and closer.dtype == np.float32
    # zoomed in by 1.25: the central 239 px of the image, resized to 299
    crop = cv2.resize(image[30:269, 30:269, 0], (299, 299), interpolation=cv2.INTER_LINEAR)
    assert np.abs(closer[20:-20, 20:-20, 0] - crop[20:-20, 20:-20]).mean() < 0.02
    assert np.abs(closer - image).mean() > 0.05  # it did move
    # zoomed out: the whole image shrunk into the centre, the edges repeated outward
    farther = pp.zoom(image, 0.8)
    inner = cv2.resize(image[..., 0], (239, 239), interpolation=cv2.INTER_AREA)
    assert np.abs(farther[40:-40, 40:-40, 0] - inner[10:-10, 10:-10]).mean() < 0.03
    assert np.allclose(farther[:30, 150, 0], farther[30, 150, 0], atol=0.02)


def test_hand_crop_takes_the_reading_area_whatever_the_field_of_view(radiographs):
    """The same hand radiographed with a wider field (collimation, a larger plate) fills less
    of the frame; cropped to the hand, it reaches the model nearly as before."""
    from boneage_infer.train import reframe

    for path in radiographs:
        pixels = pp.canonical(pp.read_radiograph(path).pixels)
        wider = reframe(pixels, 0.7)
        x, y, width, height = pp.hand_box(pixels)
        assert 0.2 * pixels.size < width * height and pp.hand_box(wider)[2] < width  # the hand, smaller
        plain = np.abs(pixels.astype(float) - wider).mean()
        cropped = np.abs(pp.crop_to_hand(pixels).astype(float) - pp.crop_to_hand(wider)).mean()
        assert cropped < 0.4 * plain
    blank = np.zeros((299, 299), np.uint8)
    assert pp.hand_box(blank) is None and pp.crop_to_hand(blank) is blank
    assert pp.enhance(pixels, hand_crop=True).shape == pp.enhance(pixels).shape


def test_training_copy_passes_through_at_canonical_size(radiograph):
    pixels = pp.read_radiograph(radiograph).pixels
    assert pixels.shape == (pp.CANONICAL_SIZE, pp.CANONICAL_SIZE) and pixels.dtype == np.uint8
    model_input = pp.preprocess(radiograph, 224)
    assert model_input.shape == (224, 224, 1) and model_input.dtype == np.float32
    assert -1.0 <= model_input.min() and model_input.max() <= 1.0
    assert model_input.max() - model_input.min() > 1.0  # CLAHE spreads the grey levels


def test_png16_and_dicom_of_same_pixels_give_same_input(radiograph, tmp_path):
    pixels16 = to_16bit(grey(radiograph))
    png = pp.preprocess(write_png16(pixels16, tmp_path / "x.png"), 224)
    plain = pp.preprocess(write_dicom(pixels16, tmp_path / "plain.dcm"), 224)
    rescaled = pp.preprocess(write_dicom(pixels16, tmp_path / "r.dcm", slope=2.0, intercept=-100.0), 224)
    inverted = pp.preprocess(write_dicom(pixels16, tmp_path / "m1.dcm", monochrome1=True), 224)
    lossless = compress_jpeg_lossless(tmp_path / "plain.dcm", tmp_path / "jpeg-lossless.dcm")
    assert pydicom.dcmread(lossless).file_meta.TransferSyntaxUID == JPEGLosslessSV1
    np.testing.assert_array_equal(png, plain)
    np.testing.assert_array_equal(png, pp.preprocess(lossless, 224))
    np.testing.assert_allclose(png, rescaled, atol=1.5 / 127.5)
    np.testing.assert_allclose(png, inverted, atol=1.5 / 127.5)
    # and they match the 8-bit original closely (same image, different bit depth)
    assert np.mean(np.abs(png - pp.preprocess(radiograph, 224))) < 0.02


def test_12bit_lossy_jpeg_dicom_is_decoded(predictor, radiograph, tmp_path, caplog):
    """JPEG Extended with 12-bit samples (older CR systems): neither GDCM nor Pillow decodes it."""
    pixels16 = to_16bit(grey(radiograph))
    plain = write_dicom(pixels16, tmp_path / "plain.dcm")
    lossy = compress_jpeg12(plain, tmp_path / "jpeg12.dcm")
    assert pydicom.dcmread(lossy).file_meta.TransferSyntaxUID == JPEGExtended12Bit
    with caplog.at_level(logging.WARNING):
        decoded = pp.read_radiograph(lossy).pixels
    assert not caplog.records  # no failed attempts by other decoders logged
    assert decoded.shape == pixels16.shape
    lossless = pp.read_radiograph(plain).pixels
    assert np.mean(np.abs(decoded.astype(float) - lossless)) < 1.5  # lossy, on a 0-255 scale
    reading = predictor.predict(lossy, "M")
    assert reading.quality["accepted"] and reading.bone_age_months > 0


def test_dicom_voi_window_is_applied(radiograph, tmp_path):
    pixels16 = to_16bit(grey(radiograph))
    low, high = np.percentile(pixels16, [20, 80])
    windowed = pp.read_radiograph(
        write_dicom(pixels16, tmp_path / "w.dcm", window=((low + high) / 2, high - low))
    ).pixels
    full = pp.read_radiograph(write_dicom(pixels16, tmp_path / "f.dcm")).pixels
    assert (windowed == 0).mean() > 0.15 and (windowed == 255).mean() > 0.15
    assert (full == 255).mean() < 0.05


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P", "LA", "I;16"])
def test_png_colour_modes_decode_to_the_same_grey(radiograph, tmp_path, mode):
    pixels = grey(radiograph)
    image = Image.fromarray(pixels)
    if mode == "I;16":
        converted = Image.fromarray(pixels.astype(np.uint16) * 257)
    else:
        converted = image.convert(mode)
    converted.save(tmp_path / "c.png")
    decoded = pp.read_radiograph(tmp_path / "c.png").pixels
    reference = pp.read_radiograph(radiograph).pixels  # the JPEG, stretched to 0..255
    assert np.mean(np.abs(decoded.astype(int) - reference)) < 2.0


def test_jpeg_exif_orientation_is_applied(radiograph, tmp_path):
    upright = Image.open(radiograph)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: the viewer turns the stored image 90 degrees clockwise
    upright.save(tmp_path / "upright.jpg", quality=95)
    upright.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "tagged.jpg", quality=95, exif=exif)
    tagged = pp.read_radiograph(tmp_path / "tagged.jpg")
    difference = np.abs(tagged.pixels.astype(float) - pp.read_radiograph(tmp_path / "upright.jpg").pixels)
    assert tagged.source_format == "JPEG" and difference.mean() < 2


def test_full_size_upload_is_stretched_like_training(radiograph):
    small = grey(radiograph)
    tall = cv2.resize(small, (1200, 1600), interpolation=cv2.INTER_CUBIC)  # a portrait full-size upload
    ok, data = cv2.imencode(".png", tall)
    big = pp.preprocess(data.tobytes(), 224)
    assert np.mean(np.abs(big - pp.preprocess(radiograph, 224))) < 0.08  # a few grey levels of 255


def _jpeg_bytes(radiograph) -> bytes:
    return radiograph.read_bytes()


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: b"", "empty"),
        (lambda p: b"hello, this is a text file\n" * 20, "Not an image"),
        (lambda p: p.read_bytes()[: len(p.read_bytes()) // 3], "truncated or corrupt"),
        (lambda p: p.read_bytes()[:1000] + bytes(len(p.read_bytes()) - 1000), "truncated or corrupt"),
        (lambda p: _encode(Image.open(p), "GIF"), "Unsupported image format GIF"),
        (lambda p: _encode(Image.new("L", (20, 20)), "PNG"), "at least 64 px"),
        (lambda p: b"\x00" * 128 + b"DICM" + b"\x00" * 64, "DICOM file is corrupt"),
    ],
    ids=["empty", "text", "truncated", "corrupt", "gif", "tiny", "bad-dicom"],
)
def test_bad_input_is_a_clear_error(radiograph, make, message):
    with pytest.raises(ImageError, match=message):
        pp.read_radiograph(make(radiograph))


def _encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def test_decompression_bomb_is_refused_before_decoding():
    # 10000 x 10000 declared pixels in a few hundred bytes of PNG
    buffer = io.BytesIO()
    Image.new("1", (10000, 10000)).save(buffer, format="PNG")
    with pytest.raises(ImageError, match="over the limit"):
        pp.read_radiograph(buffer.getvalue())


def test_missing_file(tmp_path):
    with pytest.raises(ImageError, match="not found"):
        pp.read_radiograph(tmp_path / "nope.png")
