"""Reading `.sqz` files (layout in `sqzformat`), trusting nothing in them.

`parse_sqz` checks the prelude, both CRCs and EVERY field of the header before anything is
allocated: each shape, count and section length against the file's length and against the other
fields, the names against each other, and the weights all shapes claim against the format's limit
(`MAX_WEIGHTS_PER_BYTE`). What it returns (`SqzFile`) can be compared with a model
(`SqzFile.leaves`) before a single array is built; only then does `SqzFile.decode` allocate, and
nothing it allocates is larger than a fixed multiple of the file. Every defect is a
`SqzFormatError` that names the layer or parameter and the field.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from sqzexplore.compress.coding import huffman_decode, packed_size, positions_from_gaps, unpack_bits
from sqzexplore.compress.prune import flatten_params, unflatten_params
from sqzexplore.compress.quantize import QuantizedLayer
from sqzexplore.compress.sqzformat import (
    CODINGS,
    FORMAT_VERSION,
    LAYOUTS,
    MAGIC,
    MAX_BITS,
    MAX_DIM,
    MAX_GAP_BITS,
    MAX_NDIM,
    MAX_WEIGHTS_PER_BYTE,
    MIN_BITS,
    MIN_GAP_BITS,
    PRELUDE,
    RAW_DTYPE_KINDS,
    SqzFormatError,
)

Section = tuple[int, int]  # (offset, length) in the payload


@dataclasses.dataclass(frozen=True)
class Stream:
    """One symbol stream of a layer: `count` symbols below 2^`width`, fixed-width or Huffman."""

    coding: str
    width: int
    count: int
    section: Section
    table: Section | None


@dataclasses.dataclass(frozen=True)
class LayerEntry:
    """A quantized kernel's header entry, checked (see `parse_sqz`)."""

    name: str
    shape: tuple[int, ...]
    bits: int
    layout: str
    gap_bits: int | None
    survivors: int
    entries: int
    codebook: Section
    codes: Stream
    gaps: Stream | None
    bitmap: Section | None

    @property
    def size(self) -> int:
        return math.prod(self.shape)


@dataclasses.dataclass(frozen=True)
class ParamEntry:
    """A raw parameter's header entry, checked."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    section: Section


def _fail(where: str, what: str) -> SqzFormatError:
    return SqzFormatError(f"{where}: {what}")


def _int(entry: Mapping[str, Any], key: str, where: str, low: int, high: int) -> int:
    value = entry.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _fail(where, f"{key} {value!r} is not an integer in [{low}, {high}]")
    return value


def _shape(entry: Mapping[str, Any], where: str) -> tuple[int, ...]:
    shape = entry.get("shape")
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_NDIM
        or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape)
        or not all(0 <= d <= MAX_DIM for d in shape)
    ):
        raise _fail(
            where, f"shape {shape!r} is not a list of at most {MAX_NDIM} sizes in [0, {MAX_DIM}]"
        )
    return tuple(shape)


def _section(bounds: Any, payload_length: int, what: str, where: str) -> Section:
    if (
        not isinstance(bounds, list)
        or len(bounds) != 2
        or not all(isinstance(b, int) and not isinstance(b, bool) and b >= 0 for b in bounds)
        or bounds[0] + bounds[1] > payload_length
    ):
        raise _fail(where, f"section {what!r} {bounds!r} is missing or outside the payload")
    return bounds[0], bounds[1]


def _stream(
    entry: Mapping[str, Any], name: str, width: int, count: int, payload_length: int, where: str
) -> Stream:
    sections = entry["sections"]
    coding = entry.get(f"{name}_coding")
    if coding not in CODINGS:
        raise _fail(where, f"{name}_coding {coding!r} is not one of {CODINGS}")
    data = _section(sections.get(name), payload_length, name, where)
    table = None
    if coding == "fixed" and data[1] != packed_size(count, width):
        raise _fail(
            where,
            f"{name} section has {data[1]} bytes, {count} x {width} bits need "
            f"{packed_size(count, width)}",
        )
    if coding == "huffman":
        table = _section(sections.get(f"{name}_table"), payload_length, f"{name}_table", where)
        # Symbols are below 2^width, and every code is 1 to 16 bits long.
        if not 1 <= table[1] <= 1 << width:
            raise _fail(where, f"{name}_table has {table[1]} entries, not 1 to {1 << width}")
        if not count <= 8 * data[1] <= 16 * count + 7:
            raise _fail(where, f"{name} section of {data[1]} bytes cannot hold {count} codes")
    return Stream(coding, width, count, data, table)


def _layer_entry(entry: Any, payload_length: int) -> LayerEntry:
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise _fail("header", "a layer entry is not an object with a name")
    name = entry["name"]
    where = f"layer {name!r}"
    if not isinstance(entry.get("sections"), dict):
        raise _fail(where, "sections is not an object")
    shape = _shape(entry, where)
    size = math.prod(shape)
    bits = _int(entry, "bits", where, MIN_BITS, MAX_BITS)
    layout = entry.get("layout")
    if layout not in LAYOUTS:
        raise _fail(where, f"layout {layout!r} is not one of {LAYOUTS}")
    survivors = _int(entry, "survivors", where, 0, size)
    entries = _int(entry, "entries", where, survivors, max(survivors, 8 * payload_length))
    _int(entry, "fillers", where, entries - survivors, entries - survivors)
    codebook = _section(entry["sections"].get("codebook"), payload_length, "codebook", where)
    if codebook[1] != 4 << bits:
        raise _fail(where, f"codebook has {codebook[1]} bytes, not 2^{bits} float32 values")
    codes = _stream(entry, "codes", bits, entries, payload_length, where)
    gap_bits = gaps = bitmap = None
    if layout == "gaps":
        gap_bits = _int(entry, "gap_bits", where, MIN_GAP_BITS, MAX_GAP_BITS)
        # Every filler skips 2^gap_bits - 1 pruned positions, every survivor one position.
        if (entries - survivors) * ((1 << gap_bits) - 1) + survivors > size:
            raise _fail(where, f"{entries} entries cover more than the kernel's {size} weights")
        gaps = _stream(entry, "gaps", gap_bits, entries, payload_length, where)
    elif entries != survivors or (layout == "full" and survivors != size):
        raise _fail(
            where, f"{layout} layout with {survivors} of {size} weights in {entries} entries"
        )
    if layout == "bitmap":
        bitmap = _section(entry["sections"].get("bitmap"), payload_length, "bitmap", where)
        if bitmap[1] != (size + 7) // 8:
            raise _fail(
                where, f"bitmap has {bitmap[1]} bytes, shape {list(shape)} needs {(size + 7) // 8}"
            )
    return LayerEntry(
        name, shape, bits, layout, gap_bits, survivors, entries, codebook, codes, gaps, bitmap
    )


def _param_entry(entry: Any, payload_length: int) -> ParamEntry:
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise _fail("header", "a parameter entry is not an object with a name")
    where = f"parameter {entry['name']!r}"
    shape = _shape(entry, where)
    try:
        if not isinstance(entry.get("dtype"), str):
            raise TypeError
        dtype = np.dtype(entry["dtype"])
    except (TypeError, ValueError):
        raise _fail(where, f"dtype {entry.get('dtype')!r} is not a NumPy dtype") from None
    if dtype.kind not in RAW_DTYPE_KINDS or dtype.itemsize > 8:
        raise _fail(where, f"dtype {dtype} is not a bool, integer or float of at most 8 bytes")
    section = _section(entry.get("section"), payload_length, "section", where)
    if section[1] != math.prod(shape) * dtype.itemsize:
        raise _fail(
            where,
            f"section has {section[1]} bytes, shape {list(shape)} of {dtype} needs "
            f"{math.prod(shape) * dtype.itemsize}",
        )
    return ParamEntry(entry["name"], shape, dtype, section)


def _check_names(names: list[str]) -> None:
    """Names are distinct '/'-paths and none runs through another (they form one tree)."""
    seen = set()
    for name in names:
        if not name or "" in name.split("/"):
            raise _fail("header", f"name {name!r} is not a '/'-separated path")
        if name in seen:
            raise _fail("header", f"{name!r} is stored twice")
        seen.add(name)
    for name in names:
        parts = name.split("/")
        for k in range(1, len(parts)):
            if "/".join(parts[:k]) in seen:
                raise _fail(
                    "header", f"{name!r} lies inside the stored array {'/'.join(parts[:k])!r}"
                )


# ---------------------------------------------------------------------- the checked file


@dataclasses.dataclass(frozen=True)
class SqzFile:
    """A .sqz file whose header passed every check; nothing decoded yet."""

    spec: dict[str, Any]
    layers: tuple[LayerEntry, ...]
    params: tuple[ParamEntry, ...]
    payload: bytes
    header_size: int  # prelude + JSON header
    file_size: int

    def leaves(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """`{path: (shape, dtype)}` of every array `read_sqz` would return."""
        out = {layer.name: (layer.shape, np.dtype(np.float32)) for layer in self.layers}
        out.update({p.name: (p.shape, p.dtype.newbyteorder("=")) for p in self.params})
        return out

    def decode(self) -> tuple[dict[str, QuantizedLayer], dict[str, np.ndarray]]:
        """`(quantized layers by kernel path, raw params flat)`."""
        layers = {entry.name: self._decode_layer(entry) for entry in self.layers}
        return layers, {entry.name: self._decode_param(entry) for entry in self.params}

    def _bytes(self, section: Section) -> bytes:
        return self.payload[section[0] : section[0] + section[1]]

    def _decode_stream(self, stream: Stream, where: str) -> np.ndarray:
        data = self._bytes(stream.section)
        if stream.coding == "fixed":
            return unpack_bits(data, stream.width, stream.count)
        table = np.frombuffer(self._bytes(stream.table), np.uint8).astype(np.int64)
        symbols = huffman_decode(data, table, stream.count, where)
        if symbols.size and int(symbols.max()) >= 1 << stream.width:
            raise _fail(where, f"a symbol overflows {stream.width} bits")
        return symbols

    def _decode_layer(self, entry: LayerEntry) -> QuantizedLayer:
        where = f"layer {entry.name!r}"
        codebook = np.frombuffer(self._bytes(entry.codebook), dtype="<f4").astype(np.float32)
        codes = self._decode_stream(entry.codes, f"{where} codes")
        if entry.layout == "gaps":
            gaps = self._decode_stream(entry.gaps, f"{where} gaps")
            positions, real = positions_from_gaps(gaps, entry.gap_bits, entry.size, where)
            codes = codes[real]
        elif entry.layout == "bitmap":
            bitmap = np.frombuffer(self._bytes(entry.bitmap), np.uint8)
            positions = np.flatnonzero(np.unpackbits(bitmap)[: entry.size])
        else:
            positions = np.arange(entry.size)
        if positions.size != entry.survivors or codes.size != entry.survivors:
            raise _fail(
                where,
                f"positions give {positions.size} surviving weights, header says {entry.survivors}",
            )
        mask = np.zeros(entry.size, dtype=bool)
        mask[positions] = True
        return QuantizedLayer(
            entry.name, entry.bits, codebook, codes.astype(np.uint8), mask.reshape(entry.shape)
        )

    def _decode_param(self, entry: ParamEntry) -> np.ndarray:
        array = np.frombuffer(self._bytes(entry.section), dtype=entry.dtype).reshape(entry.shape)
        return array.astype(entry.dtype.newbyteorder("="))


def _as_bytes(source: str | os.PathLike | bytes) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source)
    with open(source, "rb") as f:
        return f.read()


def _header(data: bytes) -> tuple[dict[str, Any], int]:
    """The JSON header and where it ends, after the prelude and both CRCs are checked."""
    # A file shorter than the magic but agreeing with it is truncated, not foreign.
    if data[: len(MAGIC)] != MAGIC[: len(data)]:
        raise SqzFormatError(f"not a .sqz file: magic is {bytes(data[:4])!r}, expected {MAGIC!r}")
    if len(data) < PRELUDE.size:
        raise SqzFormatError(f"truncated .sqz file: {len(data)} bytes, prelude needs 12")
    _, header_length, header_crc = PRELUDE.unpack_from(data)
    header_end = PRELUDE.size + header_length
    if len(data) < header_end:
        raise SqzFormatError(
            f"truncated .sqz file: {len(data)} bytes, header ends at byte {header_end}"
        )
    header_bytes = data[PRELUDE.size : header_end]
    if zlib.crc32(header_bytes) != header_crc:
        raise SqzFormatError("corrupted .sqz header: CRC32 mismatch")
    try:
        header = json.loads(header_bytes.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise SqzFormatError(f"corrupted .sqz header: {str(err)[:200]}") from None
    if not isinstance(header, dict) or header.get("format") != "sqz":
        raise SqzFormatError("corrupted .sqz header: not a sqz header object")
    version = header.get("format_version")
    if version != FORMAT_VERSION:
        raise SqzFormatError(
            f"unsupported .sqz format_version {version!r}; this reader supports {FORMAT_VERSION}"
        )
    return header, header_end


def parse_sqz(source: str | os.PathLike | bytes) -> SqzFile:
    """The checked header and payload of a .sqz file or its bytes (see the module docstring)."""
    data = _as_bytes(source)
    header, header_end = _header(data)
    payload = data[header_end:]
    expected = header.get("payload_length")
    if isinstance(expected, bool) or not isinstance(expected, int) or len(payload) < expected:
        raise SqzFormatError(
            f"truncated .sqz file: payload has {len(payload)} bytes, header says {expected!r}"
        )
    if len(payload) > expected:
        raise SqzFormatError(
            f"corrupted .sqz file: {len(payload) - expected} bytes after the payload"
        )
    if zlib.crc32(payload) != header.get("payload_crc32"):
        raise SqzFormatError("corrupted .sqz payload: CRC32 mismatch")
    if not isinstance(header.get("layers"), list) or not isinstance(header.get("params"), list):
        raise SqzFormatError("corrupted .sqz header: layers/params are not lists")
    if not isinstance(header.get("spec"), dict):
        raise SqzFormatError("corrupted .sqz header: spec is not an object")
    layers = tuple(_layer_entry(entry, len(payload)) for entry in header["layers"])
    params = tuple(_param_entry(entry, len(payload)) for entry in header["params"])
    _check_names([entry.name for entry in (*layers, *params)])
    weights = sum(layer.size for layer in layers) + sum(math.prod(p.shape) for p in params)
    if weights > MAX_WEIGHTS_PER_BYTE * len(data):
        raise SqzFormatError(
            f"corrupted .sqz header: its shapes hold {weights:,} weights, more than the "
            f"{MAX_WEIGHTS_PER_BYTE} per byte a {len(data):,}-byte file can hold"
        )
    return SqzFile(header["spec"], layers, params, payload, header_end, len(data))


def decode_sqz(
    source: str | os.PathLike | bytes,
) -> tuple[dict[str, Any], dict[str, QuantizedLayer], dict[str, np.ndarray]]:
    """`(spec_dict, quantized layers by kernel path, raw params flat)` from a file or bytes."""
    sqz = parse_sqz(source)
    return (sqz.spec, *sqz.decode())


def read_sqz(source: str | os.PathLike | bytes | SqzFile) -> tuple[dict[str, Any], dict[str, Any]]:
    """`(spec_dict, params)`: params a nested dict of NumPy arrays, kernels dequantized exactly
    as `QuantizedLayer.dequantize` does (bit-identical)."""
    sqz = source if isinstance(source, SqzFile) else parse_sqz(source)
    layers, others = sqz.decode()
    flat = {path: layer.dequantize() for path, layer in layers.items()}
    flat.update(others)  # names are distinct paths of one tree (`_check_names`)
    return sqz.spec, unflatten_params(flatten_params(flat))
