"""Image files in and out: one reader for every source image of every data set.

:func:`read_image` returns ``(H, W, C)`` arrays with ``C`` in {1, 3}, RGB channel order and the
stored sample type (``uint8`` or ``uint16``). Grey images stored as three equal channels (the
``tno`` set) come back with ``C == 1``; alpha is dropped; palette images are expanded to RGB.
EXIF orientation is ignored on purpose: the two sources of a pair are registered as stored, and
rotating one of them would break the registration.

Before OpenCV decodes a file, its container structure is walked (PNG chunks, JPEG markers, BMP
pixel-array size, TIFF strip/tile extents), so a file cut short raises :class:`ImageReadError`
instead of decoding into a partly grey picture (older OpenCV builds decode a truncated JPEG with
only a warning on stderr). :func:`probe_image` does the same checks plus the header size without
decoding pixels, which is what :func:`fusion_models.data.pairs.open_pair_set` uses.
"""

from __future__ import annotations

import io
import os
import struct
import tempfile
import warnings
import zlib
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

# Decoding errors are reported as one ImageReadError naming the file; OpenCV's own log lines
# ("[ERROR:0@...] TIFF_Error ...") would only repeat them on stderr.
cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
#: Largest image accepted, in pixels (W x H), read from ``FUSION_MAX_IMAGE_PIXELS`` (default
#: 100 million: 10000 x 10000): a header claiming more is refused before any pixel is decoded
#: (a "decompression bomb" of a few kilobytes can otherwise ask for gigabytes).
MAX_IMAGE_PIXELS = int(os.environ.get("FUSION_MAX_IMAGE_PIXELS", 100_000_000))
_EXPECTED = "a complete 8- or 16-bit PNG, JPEG, BMP or TIFF image"
_SIXTEEN_BIT_EXTENSIONS = {".png", ".tif", ".tiff"}


class DataError(ValueError):
    """Base class of every error raised by :mod:`fusion_models.data` for bad input data."""


class ImageReadError(DataError):
    """An image file is missing, of an unknown type, truncated or otherwise undecodable."""


def _fail(path: Path, why: str) -> ImageReadError:
    return ImageReadError(f"cannot read image '{path}': {why}; expected {_EXPECTED}")


def _check_extension(path: Path) -> None:
    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        accepted = ", ".join(IMAGE_EXTENSIONS)
        raise ImageReadError(
            f"cannot read image '{path}': unknown extension '{path.suffix}'; "
            f"accepted extensions (any case): {accepted}"
        )


def _read_bytes(path: Path) -> bytes:
    _check_extension(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise _fail(path, f"the file cannot be opened ({exc.strerror or exc})") from exc
    if not data:
        raise _fail(path, "the file is empty (0 bytes)")
    return data


def _sniff(data: bytes) -> str | None:
    """Container format from the magic bytes: PNG, JPEG, BMP, TIFF or None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data.startswith(b"BM"):
        return "BMP"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    return None


def _png_problem(data: bytes) -> str | None:
    """Walk the chunks: each must fit in the file and match its CRC, up to IEND (libpng would
    otherwise print its own error on stderr before OpenCV gives up)."""
    pos = 8
    while pos + 8 <= len(data):
        length, ctype = struct.unpack(">I4s", data[pos : pos + 8])
        end = pos + 12 + length
        if end > len(data):
            return (
                f"the PNG data is cut off: chunk {ctype.decode('latin-1')!r} needs bytes up to "
                f"{end} but the file has {len(data)} (truncated file)"
            )
        (crc,) = struct.unpack(">I", data[end - 4 : end])
        if zlib.crc32(data[pos + 4 : end - 4]) & 0xFFFFFFFF != crc:
            return (f"the PNG chunk {ctype.decode('latin-1')!r} at byte {pos} fails its CRC "
                    "check (corrupt file)")
        if ctype == b"IEND":
            return None
        pos = end
    return f"the PNG data ends after {len(data)} bytes without an IEND chunk (truncated file)"


def _jpeg_problem(data: bytes) -> str | None:
    """Walk the JPEG markers; entropy-coded data may only hold FF00 stuffing and RSTn markers."""
    pos, n = 2, len(data)
    while pos + 2 <= n:
        if data[pos] != 0xFF:  # stray bytes between segments: libjpeg skips them too
            pos = data.find(b"\xff", pos)
            if pos < 0:
                break
            continue
        marker = data[pos + 1]
        if marker == 0xD9:
            return None
        if marker == 0xFF or 0xD0 <= marker <= 0xD7 or marker == 0x01:
            pos += 1 if marker == 0xFF else 2
            continue
        if pos + 4 > n:
            break
        (seg_len,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        pos += 2 + seg_len
        if marker != 0xDA:
            continue
        while True:  # scan data: find the next marker that is not stuffing or a restart
            pos = data.find(b"\xff", pos)
            if pos < 0 or pos + 1 >= n:
                pos = n
                break
            nxt = data[pos + 1]
            if nxt == 0x00 or 0xD0 <= nxt <= 0xD7 or nxt == 0xFF:
                pos += 1 if nxt == 0xFF else 2
                continue
            break
    return (
        f"the JPEG data ends after {n} bytes without the end-of-image marker FFD9 (truncated file)"
    )


def _bmp_problem(data: bytes) -> str | None:
    if len(data) < 34:
        return f"the BMP header is cut off ({len(data)} bytes) (truncated file)"
    file_size, _, offset, dib_size, width, height, _, bpp, compression = struct.unpack(
        "<I4sIIiiHHI", data[2:34]
    )
    # BI_RGB, BI_BITFIELDS, BI_ALPHABITFIELDS are uncompressed: the size follows from the header
    if dib_size >= 40 and compression in (0, 3, 6):
        need = offset + ((bpp * abs(width) + 31) // 32) * 4 * abs(height)
    else:
        need = file_size
    if len(data) < need:
        return (
            f"the BMP pixel data needs {need} bytes but the file has {len(data)} (truncated file)"
        )
    return None


def _tiff_ifd_problem(data: bytes) -> str | None:
    if len(data) < 8:
        return f"the TIFF header is cut off ({len(data)} bytes) (truncated file)"
    (ifd,) = struct.unpack("<I" if data[:2] == b"II" else ">I", data[4:8])
    if ifd + 2 > len(data):
        return (
            f"the TIFF directory at byte {ifd} lies beyond the end of the file "
            f"({len(data)} bytes) (truncated file)"
        )
    return None


def _tiff_problem(img: Image.Image, size: int) -> str | None:
    tags = getattr(img, "tag_v2", {})
    for off_tag, cnt_tag in ((273, 279), (324, 325)):  # strips, tiles
        offsets, counts = tags.get(off_tag), tags.get(cnt_tag)
        if offsets is None or counts is None:
            continue
        offsets = offsets if isinstance(offsets, tuple) else (offsets,)
        counts = counts if isinstance(counts, tuple) else (counts,)
        need = max(o + c for o, c in zip(offsets, counts, strict=False))
        if need > size:
            return (
                f"the TIFF image data needs {need} bytes but the file has {size} (truncated file)"
            )
    return None


def _open_checked(path: Path) -> tuple[bytes, Image.Image]:
    """Read the file, check its container is complete, and open its header with PIL (lazy)."""
    data = _read_bytes(path)
    fmt = _sniff(data)
    if fmt is None:
        raise _fail(path, f"the content is not PNG, JPEG, BMP or TIFF (starts with {data[:8]!r})")
    checks = {"PNG": _png_problem, "JPEG": _jpeg_problem, "BMP": _bmp_problem}
    problem = checks.get(fmt, _tiff_ifd_problem)(data)
    if problem:
        raise _fail(path, problem)
    try:
        with warnings.catch_warnings():  # PIL warns about what we then report as an error
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit
            img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        why = (f"its header claims more than {2 * Image.MAX_IMAGE_PIXELS} pixels, above the "
               f"limit of {MAX_IMAGE_PIXELS} (FUSION_MAX_IMAGE_PIXELS)")
        raise _fail(path, why) from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise _fail(path, f"Pillow cannot parse the {fmt} header (corrupt file)") from exc
    if fmt == "TIFF" and (problem := _tiff_problem(img, len(data))):
        raise _fail(path, problem)
    if (problem := _size_problem(*img.size)) is not None:
        raise _fail(path, problem)
    return data, img


def _size_problem(width: int, height: int) -> str | None:
    if width < 1 or height < 1:
        return f"its header gives a size of {width}x{height} pixels (no pixels)"
    if width * height > MAX_IMAGE_PIXELS:
        return (f"its header gives {width}x{height} = {width * height} pixels, above the limit "
                f"of {MAX_IMAGE_PIXELS} (set FUSION_MAX_IMAGE_PIXELS to raise it)")
    return None


def probe_image(path: str | os.PathLike[str]) -> tuple[int, int]:
    """Check a file's extension, container completeness and header without decoding pixels.

    Args:
        path: image file.

    Returns:
        ``(width, height)`` in pixels, from the header.

    Raises:
        ImageReadError: unknown extension, unreadable, truncated or unparsable file.
    """
    _, img = _open_checked(Path(path))
    return img.size


def _to_rgb_layout(arr: np.ndarray) -> np.ndarray:
    """OpenCV's BGR(A)/grey layout -> (H, W, C), C in {1, 3}, RGB, equal channels folded to 1."""
    if arr.ndim == 2:
        return arr[:, :, None]
    if arr.shape[2] == 2:  # grey + alpha
        return np.ascontiguousarray(arr[:, :, :1])
    if arr.shape[2] == 1:
        return arr
    bgr = arr[:, :, :3]
    if np.array_equal(bgr[:, :, 0], bgr[:, :, 1]) and np.array_equal(bgr[:, :, 0], bgr[:, :, 2]):
        return np.ascontiguousarray(bgr[:, :, :1])
    return np.ascontiguousarray(bgr[:, :, ::-1])


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Decode one image file.

    Args:
        path: ``.png``, ``.jpg``, ``.jpeg``, ``.bmp``, ``.tif`` or ``.tiff`` file (any case).

    Returns:
        Array of shape (H, W, C), C = 1 (grey, including grey stored as three equal channels)
        or 3 (RGB order; alpha dropped, palette expanded), dtype ``uint8`` or ``uint16`` as stored.

    Raises:
        ImageReadError: unknown extension, missing, empty, truncated or undecodable file, or a
            sample type other than 8/16-bit unsigned.
    """
    path = Path(path)
    data, header = _open_checked(path)
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise _fail(path, "OpenCV could not decode the pixel data (corrupt file)")
    if arr.dtype not in (np.uint8, np.uint16):
        raise _fail(path, f"the samples are {arr.dtype}, not 8- or 16-bit unsigned integers")
    if (arr.shape[1], arr.shape[0]) != header.size:
        raise _fail(path, f"decoded size {arr.shape[1]}x{arr.shape[0]} != header {header.size}")
    return _to_rgb_layout(arr)


def to_float255(img: np.ndarray) -> np.ndarray:
    """Convert a stored image to float32 on the 0..255 scale.

    Args:
        img: array of any shape, ``uint8`` (kept as is) or ``uint16`` (divided by 257, so
            65535 maps to 255.0).

    Returns:
        float32 array of the same shape, values in [0, 255].

    Raises:
        DataError: any other dtype.
    """
    if img.dtype == np.uint8:
        return img.astype(np.float32)
    if img.dtype == np.uint16:
        return (img.astype(np.float32) / np.float32(257.0)).astype(np.float32)
    raise DataError(f"to_float255 expects a uint8 or uint16 image, got {img.dtype}")


def to_tensor255(img: np.ndarray) -> torch.Tensor:
    """(H, W, C) uint8/uint16 image -> (C, H, W) float32 tensor on the 0..255 scale."""
    return torch.from_numpy(np.ascontiguousarray(to_float255(img).transpose(2, 0, 1)))


def write_image(path: str | os.PathLike[str], img: np.ndarray) -> None:
    """Encode an image and write it atomically (temporary file, then rename).

    Args:
        path: destination; the extension picks the format (see :data:`IMAGE_EXTENSIONS`).
            Parent folders are created.
        img: (H, W), (H, W, 1) or (H, W, 3) RGB; ``uint8``, ``uint16`` (PNG/TIFF only) or
            float on the 0..255 scale (rounded and clipped to ``uint8``).

    Raises:
        DataError: unsupported shape, dtype or extension.
    """
    path = Path(path)
    ext = path.suffix.lower()
    if ext not in IMAGE_EXTENSIONS:
        raise DataError(f"cannot write '{path}': extension must be one of {IMAGE_EXTENSIONS}")
    if img.ndim == 3 and img.shape[2] in (1, 3):
        img = img[:, :, 0] if img.shape[2] == 1 else img[:, :, ::-1]  # RGB -> BGR for OpenCV
    elif img.ndim != 2:
        raise DataError(f"cannot write '{path}': shape {img.shape} is not (H, W[, 1 or 3])")
    if np.issubdtype(img.dtype, np.floating):
        img = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    if img.dtype == np.uint16 and ext not in _SIXTEEN_BIT_EXTENSIONS:
        raise DataError(f"cannot write '{path}': 16-bit images need a .png or .tif name")
    if img.dtype not in (np.uint8, np.uint16):
        raise DataError(f"cannot write '{path}': dtype {img.dtype} is not uint8/uint16/float")
    ok, buf = cv2.imencode(ext, np.ascontiguousarray(img))
    if not ok:
        raise DataError(f"cannot write '{path}': OpenCV failed to encode {ext}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(buf.tobytes())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
