"""pydicom decoder plugin for 12-bit JPEG Extended (lossy, transfer syntax 1.2.840.10008.1.2.4.51).

Older CR systems store radiographs this way; neither GDCM nor Pillow decodes 12-bit
samples, libjpeg-turbo 3 (through imagecodecs, BSD licence) does. ``use_for(dataset)``
selects it for such a file; other transfer syntaxes keep pydicom's own plugins.
"""

from __future__ import annotations

import threading

from pydicom import uid

PLUGIN = "imagecodecs"
DECODER_DEPENDENCIES = {uid.JPEGExtended12Bit: ("imagecodecs",)}


def is_available(transfer_syntax: str) -> bool:
    """pydicom's plugin interface: can this plugin decode ``transfer_syntax`` here?"""
    try:
        import imagecodecs  # noqa: F401
    except ImportError:
        return False
    return transfer_syntax in DECODER_DEPENDENCIES


def decode_frame(src: bytes, runner) -> bytes:
    """pydicom's plugin interface: one encoded frame to little-endian pixel bytes."""
    import imagecodecs

    pixels = imagecodecs.jpeg8_decode(src)
    dtype = "<u2" if runner.bits_allocated > 8 else "u1"
    return pixels.astype(dtype, copy=False).tobytes()


_lock = threading.Lock()  # pydicom's add_plugin is not thread-safe, and raises when run twice


def _register() -> None:
    from pydicom.pixels.decoders import JPEGExtended12BitDecoder

    with _lock:
        if is_available(uid.JPEGExtended12Bit) and PLUGIN not in JPEGExtended12BitDecoder.available_plugins:
            JPEGExtended12BitDecoder.add_plugin(PLUGIN, (__name__, "decode_frame"))


def use_for(dataset) -> None:
    """Decode ``dataset`` with this plugin when it is JPEG Extended (pydicom would first try,
    and log the failures of, GDCM and Pillow)."""
    meta = getattr(dataset, "file_meta", None)
    if meta is not None and meta.get("TransferSyntaxUID") == uid.JPEGExtended12Bit:
        _register()
        dataset.pixel_array_options(decoding_plugin=PLUGIN)
