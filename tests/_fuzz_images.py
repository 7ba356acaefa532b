"""Hostile image files for the fuzz tests: every case is (name, file bytes, suffix).

Built from small valid images made here (no third-party data): random bytes behind each
format's magic number, files cut at every 10 %, flipped bytes, 0x0 / 1xN / 16-bit / float /
palette / 1-bit / grey+alpha / RGBA / CMYK / EXIF-rotated images, decompression bombs (a header
claiming 10^10 pixels, and a real 12000 x 12000 1-bit PNG of a few KB), empty files and wrong
extensions.
"""

from __future__ import annotations

import io
import struct
import zlib

import cv2
import numpy as np
from PIL import Image

Case = tuple[str, bytes, str]
FORMATS = {"png": ".png", "jpg": ".jpg", "bmp": ".bmp", "tif": ".tif"}
MAGIC = {"png": b"\x89PNG\r\n\x1a\n", "jpg": b"\xff\xd8\xff\xe0", "bmp": b"BM",
         "tif": b"II*\x00"}


def _encode(img: np.ndarray, ext: str) -> bytes:
    ok, buf = cv2.imencode(ext, img)
    assert ok, ext
    return buf.tobytes()


def _pil(img: Image.Image, fmt: str, **kwargs: object) -> bytes:
    out = io.BytesIO()
    img.save(out, fmt, **kwargs)
    return out.getvalue()


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return (struct.pack(">I", len(payload)) + kind + payload
            + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF))


def _png_claiming(width: int, height: int) -> bytes:
    """A well-formed PNG whose header claims width x height (8-bit grey), with 1 row of data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * (1 + max(width, 0)))
    return (MAGIC["png"] + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat)
            + _png_chunk(b"IEND", b""))


def valid_files(rng: np.random.Generator) -> dict[str, bytes]:
    """Small valid files: grey and colour 8-bit in every format, 16-bit PNG/TIFF."""
    grey = rng.integers(0, 256, (23, 37), dtype=np.uint8)
    colour = rng.integers(0, 256, (23, 37, 3), dtype=np.uint8)
    out = {f"grey.{k}": _encode(grey, ext) for k, ext in FORMATS.items()}
    out.update({f"colour.{k}": _encode(colour, ext) for k, ext in FORMATS.items()})
    deep = rng.integers(0, 65536, (23, 37), dtype=np.uint16)
    out.update({"deep.png": _encode(deep, ".png"), "deep.tif": _encode(deep, ".tif")})
    return out


def _random_behind_magic(rng: np.random.Generator) -> list[Case]:
    return [(f"random-{k}-{seed}", MAGIC[k] + rng.bytes(64 + 500 * seed), ext)
            for k, ext in FORMATS.items() for seed in range(8)]


def _truncated(files: dict[str, bytes]) -> list[Case]:
    return [(f"cut{pct}-{name}", data[: len(data) * pct // 100], "." + name.split(".")[1])
            for name, data in files.items() for pct in range(10, 100, 10)]


def _flipped(files: dict[str, bytes], rng: np.random.Generator) -> list[Case]:
    cases = []
    for name, data in files.items():
        for seed in range(6):
            buf = bytearray(data)
            for pos in rng.integers(len(buf) // 4, len(buf), 8):
                buf[pos] ^= 0xFF
            cases.append((f"flip{seed}-{name}", bytes(buf), "." + name.split(".")[1]))
    return cases


def _special(rng: np.random.Generator) -> list[Case]:
    grey = rng.integers(0, 256, (31, 47), dtype=np.uint8)
    rgb = Image.fromarray(rng.integers(0, 256, (31, 47, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees when displayed
    return [
        ("zero-size", _png_claiming(0, 0), ".png"),
        ("one-by-n", _encode(grey[:1], ".png"), ".png"),
        ("n-by-one", _encode(grey[:, :1], ".png"), ".png"),
        ("one-by-one", _encode(grey[:1, :1], ".bmp"), ".bmp"),
        ("header-bomb", _png_claiming(100_000, 100_000), ".png"),
        ("real-bomb", _pil(Image.new("1", (12_000, 12_000)), "PNG"), ".png"),
        ("sixteen-bit-colour", _encode(rng.integers(0, 65536, (9, 9, 3), dtype=np.uint16),
                                       ".png"), ".png"),
        ("float-tiff", _encode(rng.random((9, 9), dtype=np.float32), ".tif"), ".tif"),
        ("palette", _pil(rgb.convert("P"), "PNG"), ".png"),
        ("one-bit", _pil(rgb.convert("1"), "PNG"), ".png"),
        ("grey-alpha", _pil(rgb.convert("LA"), "PNG"), ".png"),
        ("rgba", _pil(rgb.convert("RGBA"), "PNG"), ".png"),
        ("cmyk-jpeg", _pil(rgb.convert("CMYK"), "JPEG"), ".jpg"),
        ("exif-rotated", _pil(rgb, "JPEG", exif=exif), ".jpg"),
        ("empty", b"", ".png"),
        ("gif-extension", _encode(grey, ".png"), ".gif"),
        ("png-named-jpg", _encode(grey, ".png"), ".jpg"),
        ("text", b"this is not an image\n" * 10, ".png"),
    ]


def image_cases(seed: int = 0) -> list[Case]:
    """Every hostile case (200), deterministic for a seed."""
    rng = np.random.default_rng(seed)
    files = valid_files(rng)
    return (_random_behind_magic(rng) + _truncated(files) + _flipped(files, rng)
            + _special(rng))
