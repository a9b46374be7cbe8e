"""Pixel decoding: stored values of one DICOM instance, then rescale to float32 (HU for CT).

Native (uncompressed) pixel data is viewed in place with :func:`numpy.frombuffer` — no copy and
no pydicom ``pixel_array`` overhead. Compressed transfer syntaxes go through pydicom's pixel
decoder plugins; when none is installed the caller gets :class:`MissingDecoderError` naming the
pip package to install, in the way pydicom's own decoders report missing dependencies.

Batch loading and streaming assembly both turn stored values into float32 through
:func:`rescale_into`, so the two paths produce identical voxels by construction.
"""

from __future__ import annotations

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.pixels import get_decoder
from pydicom.uid import UID

from preprocessing.errors import MissingDecoderError, UnreadableInstanceError

# Which pip package provides a decoder, by transfer syntax family.
_JPEG2000 = {
    "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.4.91",
    "1.2.840.10008.1.2.4.201",
    "1.2.840.10008.1.2.4.202",
    "1.2.840.10008.1.2.4.203",
}
_JPEG_LS = {"1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"}
_JPEG = {
    "1.2.840.10008.1.2.4.50",
    "1.2.840.10008.1.2.4.51",
    "1.2.840.10008.1.2.4.57",
    "1.2.840.10008.1.2.4.70",
}
_RLE = {"1.2.840.10008.1.2.5"}


def install_hint(transfer_syntax: str) -> str:
    """The pip package that provides a decoder for ``transfer_syntax``."""
    if transfer_syntax in _JPEG2000:
        return "pylibjpeg-openjpeg"
    if transfer_syntax in _JPEG_LS:
        return "pyjpegls"
    if transfer_syntax in _JPEG:
        return "pylibjpeg-libjpeg"
    if transfer_syntax in _RLE:
        return "pylibjpeg-rle"
    return "pylibjpeg"


def decoder_available(transfer_syntax: str) -> bool:
    """True when some pydicom pixel decoder plugin can decode ``transfer_syntax`` right now."""
    try:
        return bool(get_decoder(UID(transfer_syntax)).is_available)
    except NotImplementedError:
        return False


class PixelSource:
    """Stored pixel values of one instance, decoded at most once, shared by its frames.

    Attributes:
        ds: The dataset holding the pixel data.
        frames: Number of frames (1 for single-frame instances).
        rows: Rows per frame.
        columns: Columns per frame.
    """

    def __init__(
        self, ds: Dataset, *, frames: int, rows: int, columns: int, sop_uid: str, series_uid: str
    ) -> None:
        self.ds = ds
        self.frames = frames
        self.rows = rows
        self.columns = columns
        self._sop_uid = sop_uid
        self._series_uid = series_uid
        self._stored: np.ndarray | None = None

    def stored(self, frame: int) -> np.ndarray:
        """Stored values of one frame, shape ``(rows, columns)``, integer dtype."""
        if self._stored is None:
            self._stored = self._decode_all()
        values: np.ndarray = self._stored[frame]
        return values

    def _fail(self, detail: str) -> UnreadableInstanceError:
        return UnreadableInstanceError(
            f"instance {self._sop_uid}: {detail}", series_uid=self._series_uid
        )

    def _decode_all(self) -> np.ndarray:
        ts = _transfer_syntax(self.ds)
        if ts is not None and ts.is_compressed:
            return self._decode_compressed(ts)
        return self._decode_native(ts)

    def _decode_native(self, ts: UID | None) -> np.ndarray:
        ds = self.ds
        try:
            bits_allocated = int(ds.BitsAllocated)
            bits_stored = int(ds.get("BitsStored", bits_allocated))
            signed = int(ds.PixelRepresentation) == 1
            data = ds.PixelData
        except Exception as exc:  # pydicom's lazy values raise any type: a typed error instead
            raise self._fail(f"pixel attributes unreadable ({type(exc).__name__})") from exc
        if bits_allocated not in (8, 16, 32):
            raise self._fail(f"BitsAllocated {bits_allocated} is not supported (8, 16 or 32)")
        if not 1 <= bits_stored <= bits_allocated:
            raise self._fail(f"BitsStored {bits_stored} outside 1..{bits_allocated}")
        little = ts is None or ts.is_little_endian
        dtype = np.dtype(f"{'i' if signed else 'u'}{bits_allocated // 8}")
        dtype = dtype.newbyteorder("<" if little else ">")
        count = self.frames * self.rows * self.columns
        if not isinstance(data, bytes | bytearray) or len(data) < count * dtype.itemsize:
            size = len(data) if isinstance(data, bytes | bytearray) else 0
            raise self._fail(
                f"PixelData holds {size} bytes, {count * dtype.itemsize} expected "
                f"({self.frames} x {self.rows} x {self.columns} x {bits_allocated} bits)"
            )
        stored = np.frombuffer(data, dtype=dtype, count=count)
        stored = stored.reshape(self.frames, self.rows, self.columns)
        return _fix_unused_bits(stored, bits_stored, signed)

    def _decode_compressed(self, ts: UID) -> np.ndarray:
        if not decoder_available(ts):
            raise MissingDecoderError(
                f"instance {self._sop_uid}: no decoder for {ts.name} ({ts})",
                transfer_syntax=str(ts),
                install=install_hint(ts),
                series_uid=self._series_uid,
            )
        try:
            arr = self.ds.pixel_array
        except (RuntimeError, NotImplementedError) as exc:
            if "plugin" in str(exc) or "missing" in str(exc).lower():
                raise MissingDecoderError(
                    f"instance {self._sop_uid}: no decoder could decode {ts.name} ({ts})",
                    transfer_syntax=str(ts),
                    install=install_hint(ts),
                    series_uid=self._series_uid,
                ) from exc
            raise self._fail(f"{ts.name} pixel data cannot be decoded") from exc
        except Exception as exc:  # decoder plugins fail on bad data with any type
            raise self._fail(f"{ts.name} pixel data cannot be decoded") from exc
        arr = np.asarray(arr)
        expected = (self.frames, self.rows, self.columns)
        if arr.size != self.frames * self.rows * self.columns:
            raise self._fail(f"decoded pixel data has shape {arr.shape}, expected {expected}")
        return arr.reshape(expected)


def _transfer_syntax(ds: Dataset) -> UID | None:
    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    if ts is not None:
        return UID(ts)
    # A dataset built in memory without file meta: pydicom records how it was read/encoded.
    if getattr(ds, "is_little_endian", None) is False:
        return pydicom.uid.ExplicitVRBigEndian
    return None


def _fix_unused_bits(stored: np.ndarray, bits_stored: int, signed: bool) -> np.ndarray:
    """Mask (unsigned) or sign-extend (signed) values whose BitsStored < BitsAllocated."""
    bits_allocated = stored.dtype.itemsize * 8
    if bits_stored >= bits_allocated:
        return stored
    if signed:
        shift = bits_allocated - bits_stored
        native = stored.astype(stored.dtype.newbyteorder("="))
        extended: np.ndarray = (native << shift) >> shift
        return extended
    masked: np.ndarray = stored & stored.dtype.type((1 << bits_stored) - 1)
    return masked


def rescale_into(stored: np.ndarray, slope: float, intercept: float, out: np.ndarray) -> None:
    """Write ``stored * slope + intercept`` into the float32 ``out`` (HU for CT).

    Arithmetic is float32 in a fixed order so every caller gets bit-identical voxels.
    """
    if slope == 1.0:
        # One pass: integer → float32 is exact, then a single float32 addition.
        np.add(stored, np.float32(intercept), out=out, dtype=np.float32, casting="unsafe")
        return
    np.multiply(stored, np.float32(slope), out=out, dtype=np.float32, casting="unsafe")
    if intercept != 0.0:
        out += np.float32(intercept)


def decode_frame(stored: np.ndarray, slope: float, intercept: float) -> np.ndarray:
    """A new float32 ``(rows, columns)`` array of rescaled values (HU for CT)."""
    out = np.empty(stored.shape, dtype=np.float32)
    rescale_into(stored, slope, intercept, out)
    return out
