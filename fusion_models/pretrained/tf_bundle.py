"""Reader and writer of TensorFlow tensor bundles (``<prefix>.index`` + ``<prefix>.data-*``).

The TF1/TF2 checkpoint format, read without TensorFlow: the ``.index`` file is an SSTable
(LevelDB table format) whose keys are tensor names and whose values are ``BundleEntryProto``
messages (dtype, shape, shard, offset, size, masked CRC32C); the key ``""`` holds the
``BundleHeaderProto`` (number of shards, endianness). Each tensor's bytes sit raw (C order,
little endian) in ``<prefix>.data-<shard>-of-<num_shards>``.

Scope: uncompressed tables (what ``tf.train.Saver`` and ``tf.train.Checkpoint`` write), numeric
and bool dtypes, whole (unpartitioned) tensors. Anything else, and every inconsistency (bad
magic, CRC mismatch, truncated block, missing data file, size/shape disagreement), raises
:class:`TFBundleError` naming the file and, where there is one, the tensor.

References: tensorflow/core/util/tensor_bundle/tensor_bundle.proto and tensor_bundle.cc;
tensorflow/core/lib/io/format.cc, block_builder.cc (the LevelDB table layout); CRC32C masking
as in tensorflow/core/lib/hash/crc32c.h.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TABLE_MAGIC = 0xDB4775248B80FB57
FOOTER_SIZE = 48
_TRAILER_SIZE = 5  # 1 byte compression type + 4 bytes masked crc32c

#: TF ``DataType`` enum -> numpy dtype (little endian).
DTYPES: dict[int, np.dtype] = {
    1: np.dtype("<f4"), 2: np.dtype("<f8"), 3: np.dtype("<i4"), 4: np.dtype("u1"),
    5: np.dtype("<i2"), 6: np.dtype("i1"), 9: np.dtype("<i8"), 10: np.dtype("?"),
    17: np.dtype("<u2"), 19: np.dtype("<f2"), 22: np.dtype("<u4"), 23: np.dtype("<u8"),
}
_DTYPE_CODES = {v: k for k, v in DTYPES.items()}


class TFBundleError(ValueError):
    """A tensor bundle that cannot be read (the message names the file and what is wrong)."""


# -- CRC32C (Castagnoli), masked as TF stores it ------------------------------------------------
def _crc_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC_TABLE = _crc_table()


def crc32c(data: bytes) -> int:
    """CRC32C of ``data`` (unmasked)."""
    crc = 0xFFFFFFFF
    table = _CRC_TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    """TF's stored form: ``rotr(crc, 15) + 0xa282ead8`` (mod 2**32)."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


# -- varints and the few protobuf messages we need ----------------------------------------------
def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result, shift = 0, 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise IndexError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _put_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _fields(msg: bytes) -> dict[int, list[int | bytes]]:
    """Decode a protobuf message into {field number: [values]} (varints as ints, fixed as
    ints, length-delimited as bytes)."""
    out: dict[int, list[int | bytes]] = {}
    pos = 0
    while pos < len(msg):
        tag, pos = _varint(msg, pos)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _varint(msg, pos)
        elif wire == 1:
            value, pos = struct.unpack_from("<Q", msg, pos)[0], pos + 8
        elif wire == 5:
            value, pos = struct.unpack_from("<I", msg, pos)[0], pos + 4
        elif wire == 2:
            size, pos = _varint(msg, pos)
            value, pos = msg[pos:pos + size], pos + size
            if pos > len(msg):
                raise IndexError("truncated field")
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        out.setdefault(number, []).append(value)
    return out


@dataclass(frozen=True)
class BundleEntry:
    """Where one tensor lives: ``dtype``, ``shape``, ``shard`` file, byte ``offset``/``size``,
    masked ``crc`` of its bytes."""

    dtype: np.dtype
    shape: tuple[int, ...]
    shard: int
    offset: int
    size: int
    crc: int | None


def _parse_entry(name: str, value: bytes) -> BundleEntry:
    f = _fields(value)
    if 7 in f:
        raise TFBundleError(f"tensor {name!r} is partitioned (sliced); not supported")
    code = int(f.get(1, [0])[0])
    if code not in DTYPES:
        raise TFBundleError(f"tensor {name!r} has TF dtype {code}; only numeric/bool dtypes "
                            f"({sorted(DTYPES)}) are supported")
    shape_msg = _fields(bytes(f.get(2, [b""])[0]))
    dims = tuple(int(_fields(bytes(d)).get(1, [0])[0]) for d in shape_msg.get(2, []))
    crc = f.get(6, [None])[0]
    return BundleEntry(DTYPES[code], dims, int(f.get(3, [0])[0]), int(f.get(4, [0])[0]),
                       int(f.get(5, [0])[0]), None if crc is None else int(crc))


# -- the SSTable ------------------------------------------------------------------------------
def _block(data: bytes, offset: int, size: int, where: str) -> bytes:
    """Block contents at (offset, size), its trailer's compression type and CRC checked."""
    end = offset + size
    if end + _TRAILER_SIZE > len(data):
        raise TFBundleError(f"{where}: block at {offset}+{size} runs past the end of the file")
    contents, kind = data[offset:end], data[end]
    stored = struct.unpack_from("<I", data, end + 1)[0]
    if masked_crc32c(data[offset:end + 1]) != stored:
        raise TFBundleError(f"{where}: block at {offset} fails its CRC32C check (corrupted)")
    if kind != 0:
        raise TFBundleError(f"{where}: block compression type {kind} is not supported "
                            "(only uncompressed tables)")
    return contents


def _block_entries(block: bytes) -> list[tuple[bytes, bytes]]:
    """(key, value) pairs of one block (prefix-compressed keys, restart array at the end)."""
    num_restarts = struct.unpack_from("<I", block, len(block) - 4)[0]
    limit = len(block) - 4 - 4 * num_restarts
    if limit < 0:
        raise IndexError("bad restart array")
    entries, key, pos = [], b"", 0
    while pos < limit:
        shared, pos = _varint(block, pos)
        unshared, pos = _varint(block, pos)
        vlen, pos = _varint(block, pos)
        if shared > len(key) or pos + unshared + vlen > limit:
            raise IndexError("entry runs past the block")
        key = key[:shared] + block[pos:pos + unshared]
        pos += unshared
        entries.append((key, block[pos:pos + vlen]))
        pos += vlen
    return entries


def _table(path: Path) -> list[tuple[bytes, bytes]]:
    data = path.read_bytes()
    if len(data) < FOOTER_SIZE:
        raise TFBundleError(f"{path}: {len(data)} bytes, too short for a tensor-bundle index")
    footer = data[-FOOTER_SIZE:]
    if struct.unpack_from("<Q", footer, 40)[0] != TABLE_MAGIC:
        raise TFBundleError(f"{path}: not a TensorFlow checkpoint index (bad table magic)")
    try:
        _meta_off, pos = _varint(footer, 0)
        _meta_size, pos = _varint(footer, pos)
        index_off, pos = _varint(footer, pos)
        index_size, _ = _varint(footer, pos)
        out = []
        for _, handle in _block_entries(_block(data, index_off, index_size, str(path))):
            off, pos = _varint(handle, 0)
            size, _ = _varint(handle, pos)
            out.extend(_block_entries(_block(data, off, size, str(path))))
    except (IndexError, struct.error) as exc:
        raise TFBundleError(f"{path}: corrupted tensor-bundle index ({exc})") from None
    return out


# -- public API -------------------------------------------------------------------------------
def bundle_prefix(source: str | Path) -> Path:
    """The bundle prefix for ``source``: a prefix, its ``.index`` file, or a folder holding
    exactly one bundle. Raises :class:`TFBundleError` naming what was found instead."""
    path = Path(source)
    if path.is_dir():
        found = sorted(path.glob("*.index"))
        if len(found) != 1:
            names = [p.name for p in found]
            raise TFBundleError(f"{path}: expected one '<prefix>.index' tensor bundle in the "
                                f"folder, found {len(found)} {names}")
        path = found[0]
    if path.suffix == ".index":
        path = path.with_suffix("")
    if not path.with_name(path.name + ".index").is_file():
        raise TFBundleError(f"{path}: no tensor bundle there (expected {path.name}.index and "
                            f"{path.name}.data-00000-of-0000N beside it)")
    return path


def read_entries(prefix: str | Path) -> tuple[dict[str, BundleEntry], int]:
    """Parse ``<prefix>.index``: ({tensor name: entry}, number of data shards)."""
    index = bundle_prefix(prefix)
    path = index.with_name(index.name + ".index")
    entries, shards = {}, 1
    for key, value in _table(path):
        name = key.decode("utf-8", errors="replace")
        try:
            if name == "":
                header = _fields(value)
                shards = int(header.get(1, [1])[0])
                if int(header.get(2, [0])[0]) != 0:
                    raise TFBundleError(f"{path}: big-endian bundles are not supported")
                continue
            entries[name] = _parse_entry(name, value)
        except (IndexError, ValueError, struct.error) as exc:
            if isinstance(exc, TFBundleError):
                raise TFBundleError(f"{path}: {exc}") from None
            raise TFBundleError(f"{path}: corrupted entry {name!r} ({exc})") from None
    return entries, shards


def read_bundle(prefix: str | Path) -> dict[str, np.ndarray]:
    """Every tensor of a bundle, by name, as numpy arrays (CRC-checked).

    Raises:
        TFBundleError: unreadable index, a missing or short data file, a CRC mismatch.
    """
    base = bundle_prefix(prefix)
    entries, shards = read_entries(base)
    blobs: dict[int, bytes] = {}
    out = {}
    for name, e in sorted(entries.items()):
        if e.shard not in blobs:
            data = base.with_name(f"{base.name}.data-{e.shard:05d}-of-{shards:05d}")
            if not data.is_file():
                raise TFBundleError(f"{data}: data file missing (tensor {name!r} is in it)")
            blobs[e.shard] = data.read_bytes()
        raw = blobs[e.shard][e.offset:e.offset + e.size]
        expected = int(np.prod(e.shape, dtype=np.int64)) * e.dtype.itemsize
        if len(raw) != e.size or e.size != expected:
            raise TFBundleError(f"{base}: tensor {name!r} has {len(raw)} bytes in shard "
                                f"{e.shard}, expected {expected} for shape {e.shape}")
        if e.crc is not None and masked_crc32c(raw) != e.crc:
            raise TFBundleError(f"{base}: tensor {name!r} fails its CRC32C check (corrupted "
                                "data file)")
        out[name] = np.frombuffer(raw, dtype=e.dtype).reshape(e.shape).copy()
    return out


def _entry_proto(arr: np.ndarray, offset: int, crc: int) -> bytes:
    dims = b"".join(b"\x12" + _put_varint(len(d)) + d
                    for d in (b"\x08" + _put_varint(int(s)) for s in arr.shape))
    shape = b"\x12" + _put_varint(len(dims)) + dims
    return (b"\x08" + _put_varint(_DTYPE_CODES[arr.dtype.newbyteorder("<")]) + shape
            + b"\x20" + _put_varint(offset) + b"\x28" + _put_varint(arr.nbytes)
            + b"\x35" + struct.pack("<I", crc))


def _write_block(out: bytearray, entries: list[tuple[bytes, bytes]]) -> bytes:
    """Append one uncompressed block (every entry a restart point); return its handle."""
    body, restarts = bytearray(), []
    for key, value in entries:
        restarts.append(len(body))
        body += _put_varint(0) + _put_varint(len(key)) + _put_varint(len(value)) + key + value
    body += b"".join(struct.pack("<I", r) for r in restarts or [0])
    body += struct.pack("<I", len(restarts or [0]))
    handle = _put_varint(len(out)) + _put_varint(len(body))
    out += body + b"\x00" + struct.pack("<I", masked_crc32c(bytes(body) + b"\x00"))
    return handle


def write_bundle(prefix: str | Path, tensors: dict[str, np.ndarray]) -> None:
    """Write ``tensors`` as a one-shard bundle TensorFlow can read (tests and fixtures)."""
    prefix = Path(prefix)
    data, rows = bytearray(), [(b"", b"\x08\x01\x1a\x02\x08\x01")]  # 1 shard, LE, producer 1
    for name in sorted(tensors):
        arr = np.asarray(tensors[name])
        arr = np.ascontiguousarray(arr).reshape(arr.shape)  # keeps 0-d scalars 0-d
        arr = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
        if arr.dtype not in _DTYPE_CODES:
            raise TFBundleError(f"tensor {name!r}: dtype {arr.dtype} has no TF bundle code; "
                                f"supported: {sorted(str(d) for d in _DTYPE_CODES)}")
        raw = arr.tobytes()
        rows.append((name.encode(), _entry_proto(arr, len(data), masked_crc32c(raw))))
        data += raw
    table = bytearray()
    data_handle = _write_block(table, rows)
    meta_handle = _write_block(table, [])
    index_handle = _write_block(table, [(rows[-1][0] + b"\x00", data_handle)])
    footer = (meta_handle + index_handle).ljust(40, b"\x00") + struct.pack("<Q", TABLE_MAGIC)
    prefix.with_name(prefix.name + ".index").write_bytes(bytes(table + footer))
    prefix.with_name(prefix.name + ".data-00000-of-00001").write_bytes(bytes(data))
