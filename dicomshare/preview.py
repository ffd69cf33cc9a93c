"""Preview images: one frame of an instance as an 8-bit PNG of at most 512 px.

The frame is read on its own (highdicom's :class:`highdicom.io.ImageFileReader` builds the
frame offsets from the header and reads just that frame item), decoded by pydicom's pixel
handlers (pylibjpeg, pyjpegls for the compressed transfer syntaxes), and made displayable
as a viewer would (PS3.4 N.2 grayscale pipeline):

1. Modality LUT (Rescale Slope/Intercept or Modality LUT Sequence), PS3.3 C.11.1;
2. VOI: the file's VOI LUT Sequence, else its first Window Center/Width (PS3.3 C.11.2.1.2,
   linear), else a modality default (:data:`DEFAULT_WINDOWS`), else the 0.5-99.5
   percentile range of the frame;
3. MONOCHROME1 inverted; PALETTE COLOR through its palette (YBR frames arrive as RGB).

Pure domain: the caller hands in a seekable file (local or S3 ranged reads).
"""

from __future__ import annotations

import io
from typing import BinaryIO

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.filebase import DicomFileLike
from pydicom.multival import MultiValue
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut

MAX_SIZE = 512

DEFAULT_WINDOWS = {
    "CT": (40.0, 400.0),
    "PT": None,
    "NM": None,
}
"""Modality -> (center, width) used when the file has no VOI; None: use the percentiles."""


class NoPreview(Exception):
    """The instance has no renderable frame; ``reason`` is machine-readable and identifies nothing."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)


def preview_frame_index(number_of_frames: int) -> int:
    """The frame shown: the middle one (for a multi-frame volume, the most representative)."""
    return max(0, (number_of_frames - 1) // 2)


def render_file(fp: BinaryIO, io_errors: tuple[type[BaseException], ...] = ()) -> bytes:
    """PNG preview of the DICOM file ``fp`` (seekable), reading only its header and one frame.

    Raises :class:`NoPreview` when the file has no renderable frame. An error of a type in
    ``io_errors`` (the storage client's), even wrapped by the reader, propagates instead:
    a failed read is worth a retry, an undecodable file is not.
    """
    from highdicom.io import ImageFileReader

    try:
        reader = ImageFileReader(DicomFileLike(fp))
        reader.open()
        metadata = reader.metadata
        frame = reader.read_frame(preview_frame_index(int(reader.number_of_frames)), correct_color=False)
    except Exception as error:
        cause: BaseException | None = error
        while cause is not None:
            if isinstance(cause, io_errors):
                raise cause from None
            cause = cause.__cause__ or cause.__context__
        not_image = isinstance(error, ValueError) and "image information entity" in str(error)
        raise NoPreview("not_an_image" if not_image else "undecodable") from error
    return render_png(frame, metadata)


def render_png(frame: np.ndarray, ds: Dataset) -> bytes:
    """An 8-bit PNG (longest side at most :data:`MAX_SIZE`) of one decoded frame."""
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric.startswith("MONOCHROME"):
        pixels = grayscale(frame, ds)
        if photometric == "MONOCHROME1":
            pixels = 255 - pixels
        image = Image.fromarray(pixels, mode="L")
    else:
        image = Image.fromarray(color(frame, ds, photometric), mode="RGB")
    image.thumbnail((MAX_SIZE, MAX_SIZE), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=False)
    return out.getvalue()


def grayscale(frame: np.ndarray, ds: Dataset) -> np.ndarray:
    values = apply_modality_lut(frame, ds).astype(np.float64)
    if "VOILUTSequence" in ds:
        values = apply_voi_lut(values, ds, index=0).astype(np.float64)
        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        return _scale(values, 0.0, float(2**bits - 1))
    window = _file_window(ds) or DEFAULT_WINDOWS.get(str(ds.get("Modality", "")))
    if window is None:
        low, high = np.percentile(values, (0.5, 99.5))
        return _scale(values, float(low), float(high))
    center, width = window
    # PS3.3 C.11.2.1.2.1: linear window, output range [0, 255].
    low, high = center - 0.5 - (width - 1) / 2, center - 0.5 + (width - 1) / 2
    return _scale(values, low, high)


def color(frame: np.ndarray, ds: Dataset, photometric: str) -> np.ndarray:
    """RGB bytes of a color frame (the decoder already returns YBR frames as RGB)."""
    if photometric == "PALETTE COLOR":
        frame = apply_color_lut(frame, ds)
    if frame.dtype != np.uint8:
        top = float(frame.max()) or 1.0
        frame = (np.clip(frame.astype(np.float64) / top, 0, 1) * 255).astype(np.uint8)
    return np.ascontiguousarray(frame)


def _file_window(ds: Dataset) -> tuple[float, float] | None:
    """The first Window Center/Width pair of the file, if any (PS3.3 C.11.2.1.2)."""
    if "WindowCenter" not in ds or "WindowWidth" not in ds:
        return None
    center, width = ds.WindowCenter, ds.WindowWidth
    center = float(center[0] if isinstance(center, MultiValue) else center)
    width = float(width[0] if isinstance(width, MultiValue) else width)
    return (center, width) if width >= 1 else None


def _scale(values: np.ndarray, low: float, high: float) -> np.ndarray:
    if high <= low:
        high = low + 1.0
    return (np.clip((values - low) / (high - low), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
