"""Test files made from real radiographs: 16-bit PNGs and DICOMs built with pydicom."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid


def grey(path: Path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)


def to_16bit(pixels: np.ndarray) -> np.ndarray:
    """Spread 8-bit values over 12 bits, as a detector would store them."""
    return (pixels.astype(np.uint16) * 16 + 7).astype(np.uint16)


def write_png16(pixels16: np.ndarray, path: Path) -> Path:
    assert cv2.imwrite(str(path), pixels16)
    return path


def write_dicom(
    pixels16: np.ndarray,
    path: Path,
    monochrome1: bool = False,
    slope: float = 1.0,
    intercept: float = 0.0,
    window: tuple[float, float] | None = None,
    **attributes,
) -> Path:
    """A single-frame DICOM whose modality-LUT output equals ``pixels16``."""
    stored = (pixels16.astype(np.float64) - intercept) / slope
    if monochrome1:
        stored = stored.max() - stored + stored.min()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.Rows, ds.Columns = pixels16.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    if slope != 1.0 or intercept != 0.0:
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    for key, value in attributes.items():
        setattr(ds, key, value)
    ds.PixelData = np.round(stored).astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def compress_jpeg_lossless(path: Path, out: Path) -> Path:
    """Re-encode a DICOM file as JPEG Lossless (Process 14, SV1), as many CR/DX systems store them."""
    import gdcm

    reader = gdcm.ImageReader()
    reader.SetFileName(str(path))
    assert reader.Read(), path
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGLosslessProcess14_1))
    change.SetInput(reader.GetImage())
    assert change.Change()
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(out))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    assert writer.Write()
    return out


def compress_jpeg12(path: Path, out: Path, quality: int = 90) -> Path:
    """Re-encode a 12-bit DICOM file as JPEG Extended (lossy, 12-bit), as older CR systems do."""
    import imagecodecs
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGExtended12Bit

    ds = pydicom.dcmread(path)
    pixels = ds.pixel_array
    assert pixels.max() < 4096, "12-bit samples only"
    ds.PixelData = encapsulate([imagecodecs.jpeg8_encode(pixels, level=quality, bitspersample=12)])
    ds["PixelData"].VR = "OB"
    ds.BitsStored, ds.HighBit = 12, 11
    ds.file_meta.TransferSyntaxUID = JPEGExtended12Bit
    ds.save_as(out, enforce_file_format=True)
    return out
