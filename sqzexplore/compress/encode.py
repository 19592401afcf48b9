"""The `.sqz` file: sparse, k-means-coded, optionally Huffman-coded weights (Deep Compression's
stage 3), readable back into BIT-IDENTICAL float32 parameters.

File layout (all integers little-endian)::

    b"SQZ1"                  magic
    uint32 header_length     bytes of the JSON header
    uint32 header_crc32      zlib.crc32 of the JSON header
    header                   UTF-8 JSON, see below
    payload                  the sections the header points at (offsets relative to its start)

The header holds `format_version` (1), the `spec` (any JSON-able dict, e.g. the SqueezeNetSpec),
`payload_length` and `payload_crc32` (checked on read), then one entry per quantized conv kernel
(`layers`: name, shape, bits, gap_bits, layout, survivors, entries, fillers, the coding of each
stream and `sections` {name: [offset, length]}) and one per raw parameter (`params`: name, shape,
dtype, section). Offsets and lengths are bytes.

Per quantized layer the payload holds:

* `codebook`: the 2^bits centroids as float32.
* positions of the surviving weights, in one of three layouts:
  - `gaps` (the default, Deep Compression's): one `gap_bits`-wide relative index per stored entry.
    With M = 2^gap_bits - 1, a gap g < M means "skip g pruned positions, then a surviving weight";
    g = M is a FILLER: skip M positions and place nothing. A run of d pruned positions therefore
    costs d // M fillers and a final gap d % M. Like Deep Compression's zero-weight filler, a filler
    also takes a code slot (written 0, ignored), so codes and gaps stay in lockstep, one pair per
    entry. Unlike storing a zero weight it needs no zero centroid, so all 2^bits centroids stay
    free for k-means, and decoding is exact whatever the codebook holds.
  - `bitmap`: one bit per kernel position (MSB first); entries are the survivors only.
  - `full`: every position survives, no position data (a density-1.0 layer stored densely).
  `layout="auto"` takes the smallest per layer.
* `codes`: one code per entry, packed at `bits` bits MSB first, or canonical-Huffman coded.
* `gaps` (gaps layout): one gap per entry, packed at `gap_bits` bits, or canonical-Huffman coded.
* Huffman-coded streams have a table section: the code length (one byte, at most 16) of every
  symbol from 0 to the largest used; codes are assigned canonically (by length, then symbol).
  With `huffman=True` a stream is Huffman-coded where that (table included) is smaller than the
  fixed width; `huffman="always"` forces it.

Every other parameter (biases, BatchNorm scale/bias/mean/var, unquantized kernels) is stored raw
in its own dtype, and counted in the size.

The paper's sizes for SqueezeNet with Deep Compression are 0.66MB (8-bit codes, 33% density) and
0.47MB (6-bit); the released 8-bit file is 675,763 bytes with 4-bit gaps and no Huffman stage
(REFERENCE.md section 6). `size_report` gives this file's per-layer accounting against fp32.
"""

from __future__ import annotations

import heapq
import json
import math
import os
import struct
import tempfile
import zlib
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from sqzexplore.compress.prune import flatten_params, layer_name, unflatten_params
from sqzexplore.compress.quantize import MAX_BITS, MIN_BITS, QuantizedLayer

MAGIC = b"SQZ1"
FORMAT_VERSION = 1
_PRELUDE = struct.Struct("<4sII")  # magic, header length, header CRC32
MIN_GAP_BITS = 1
MAX_GAP_BITS = 16
LAYOUTS = ("gaps", "bitmap", "full")
HUFFMAN_MAX_CODE_LENGTH = 16  # enough for 2^16 symbols, so any 16-bit gap alphabet fits
MIB = 2**20
_RAW_DTYPE_KINDS = "biuf"


class SqzFormatError(ValueError):
    """A .sqz file (or bytes) that cannot be decoded: the message says what is wrong."""


# ---------------------------------------------------------------------- fixed-width bit packing


def pack_bits(values: np.ndarray, width: int) -> bytes:
    """Pack non-negative integers at `width` bits each, MSB first, zero-padded to a byte."""
    values = np.asarray(values, dtype=np.uint32).ravel()
    if values.size and int(values.max()) >= 1 << width:
        raise ValueError(f"value {int(values.max())} does not fit in {width} bits")
    shifts = np.arange(width - 1, -1, -1, dtype=np.uint32)
    bits = ((values[:, None] >> shifts) & 1).astype(np.uint8)
    return np.packbits(bits.ravel()).tobytes()


def unpack_bits(data: bytes, width: int, count: int) -> np.ndarray:
    """Inverse of `pack_bits`: `count` integers of `width` bits (int64)."""
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8))
    if bits.size < count * width:
        raise SqzFormatError(f"stream holds {bits.size} bits, needs {count * width}")
    bits = bits[: count * width].reshape(count, width).astype(np.int64)
    return bits @ (1 << np.arange(width - 1, -1, -1, dtype=np.int64))


def packed_size(count: int, width: int) -> int:
    return (count * width + 7) // 8


# ---------------------------------------------------------------------- canonical Huffman


def _huffman_lengths_unlimited(counts: np.ndarray) -> np.ndarray:
    lengths = np.zeros(counts.size, dtype=np.int64)
    used = np.flatnonzero(counts)
    if used.size == 1:
        lengths[used] = 1
        return lengths
    # Ties break on the smallest symbol in a subtree, so the tree never depends on heap internals.
    heap = [(int(counts[s]), int(s), [int(s)]) for s in used]
    heapq.heapify(heap)
    while len(heap) > 1:
        count_a, key_a, syms_a = heapq.heappop(heap)
        count_b, key_b, syms_b = heapq.heappop(heap)
        merged = syms_a + syms_b
        lengths[merged] += 1
        heapq.heappush(heap, (count_a + count_b, min(key_a, key_b), merged))
    return lengths


def huffman_code_lengths(
    counts: np.ndarray, max_length: int = HUFFMAN_MAX_CODE_LENGTH
) -> np.ndarray:
    """Huffman code length per symbol (0 for unused symbols), none longer than `max_length`.

    Over-long codes come from very skewed counts; halving the counts (keeping used symbols >= 1)
    flattens them until the tree fits, ending at worst in a balanced tree.
    """
    counts = np.asarray(counts, dtype=np.int64)
    used = int(np.count_nonzero(counts))
    if used == 0:
        return np.zeros(counts.size, dtype=np.int64)
    if used > 1 << max_length:
        raise ValueError(f"{used} symbols cannot have Huffman codes of at most {max_length} bits")
    while True:
        lengths = _huffman_lengths_unlimited(counts)
        if lengths.max() <= max_length:
            return lengths
        counts = np.where(counts > 0, (counts + 1) // 2, 0)


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """Canonical Huffman code values for code `lengths` (by length, then symbol)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    codes = np.zeros(lengths.size, dtype=np.int64)
    code, previous = 0, 0
    for symbol in sorted(np.flatnonzero(lengths), key=lambda s: (lengths[s], s)):
        code <<= int(lengths[symbol]) - previous
        previous = int(lengths[symbol])
        codes[symbol] = code
        code += 1
    return codes


def _check_kraft(lengths: np.ndarray, where: str) -> None:
    used = lengths[lengths > 0]
    if used.size and (used.max() > HUFFMAN_MAX_CODE_LENGTH or (2.0**-used).sum() > 1.0):
        raise SqzFormatError(f"{where}: Huffman table is not a valid prefix code")


def huffman_encode(symbols: np.ndarray, lengths: np.ndarray) -> bytes:
    """Canonical-Huffman-code `symbols` with code `lengths`, MSB first, zero-padded."""
    symbols = np.asarray(symbols, dtype=np.int64)
    if symbols.size == 0:
        return b""
    codes = canonical_codes(lengths)
    sym_lengths = lengths[symbols]
    if sym_lengths.min() <= 0:
        raise ValueError("symbol without a Huffman code")
    width = int(sym_lengths.max())
    # Left-align each code in `width` bits, then keep its first `length` bits, row by row.
    aligned = codes[symbols] << (width - sym_lengths)
    shifts = np.arange(width - 1, -1, -1, dtype=np.int64)
    bits = ((aligned[:, None] >> shifts) & 1).astype(np.uint8)
    keep = np.arange(width)[None, :] < sym_lengths[:, None]
    return np.packbits(bits[keep]).tobytes()


def huffman_decode(data: bytes, lengths: np.ndarray, count: int, where: str) -> np.ndarray:
    """Decode `count` symbols; every bit position's symbol comes from one table lookup, and only
    the walk from code to code is sequential."""
    lengths = np.asarray(lengths, dtype=np.int64)
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    _check_kraft(lengths, where)
    if not np.any(lengths):
        raise SqzFormatError(f"{where}: empty Huffman table for {count} symbols")
    width = int(lengths.max())
    codes = canonical_codes(lengths)
    table_symbol = np.full(1 << width, -1, dtype=np.int64)
    table_length = np.zeros(1 << width, dtype=np.int64)
    for symbol in np.flatnonzero(lengths):
        length = int(lengths[symbol])
        start = int(codes[symbol]) << (width - length)
        table_symbol[start : start + (1 << (width - length))] = symbol
        table_length[start : start + (1 << (width - length))] = length
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8)).astype(np.int64)
    total_bits = bits.size
    padded = np.concatenate([bits, np.zeros(width, dtype=np.int64)])
    window = np.zeros(total_bits, dtype=np.int64)
    for offset in range(width):
        window = (window << 1) | padded[offset : offset + total_bits]
    step = table_length[window].tolist()
    starts = np.empty(count, dtype=np.int64)
    position = 0
    for i in range(count):
        if position >= total_bits:
            raise SqzFormatError(f"{where}: Huffman stream ends after {i} of {count} symbols")
        starts[i] = position
        length = step[position]
        if length == 0:
            raise SqzFormatError(f"{where}: invalid Huffman code at bit {position}")
        position += length
    if position > total_bits or total_bits - position >= 8:
        raise SqzFormatError(
            f"{where}: Huffman stream has {total_bits} bits, its {count} symbols use {position}"
        )
    return table_symbol[window[starts]]


# ---------------------------------------------------------------------- one layer


def gap_entries(mask: np.ndarray, gap_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Gap stream of a mask and, per surviving weight, the index of its entry (see module doc)."""
    positions = np.flatnonzero(np.asarray(mask).ravel())
    max_gap = (1 << gap_bits) - 1
    skipped = np.diff(positions, prepend=-1) - 1
    fillers = skipped // max_gap
    real_index = np.arange(positions.size) + np.cumsum(fillers)
    gaps = np.full(positions.size + int(fillers.sum()), max_gap, dtype=np.int64)
    gaps[real_index] = skipped % max_gap
    return gaps, real_index


def positions_from_gaps(
    gaps: np.ndarray, gap_bits: int, size: int, where: str
) -> tuple[np.ndarray, np.ndarray]:
    """Flat positions of the surviving weights and a bool array of which entries are real."""
    max_gap = (1 << gap_bits) - 1
    gaps = np.asarray(gaps, dtype=np.int64)
    if gaps.size and (gaps.min() < 0 or gaps.max() > max_gap):
        raise SqzFormatError(f"{where}: gap outside [0, {max_gap}]")
    real = gaps < max_gap
    advance = np.where(real, gaps + 1, max_gap)
    ends = np.cumsum(advance) - 1
    positions = ends[real]
    if positions.size and positions[-1] >= size:
        raise SqzFormatError(
            f"{where}: gaps run to position {int(positions[-1])}, past the kernel's {size} weights"
        )
    return positions, real


class _PayloadWriter:
    def __init__(self):
        self.chunks: list[bytes] = []
        self.offset = 0

    def add(self, data: bytes) -> list[int]:
        section = [self.offset, len(data)]
        self.chunks.append(data)
        self.offset += len(data)
        return section


def _encode_stream(symbols: np.ndarray, width: int, huffman: bool | str) -> dict[str, Any]:
    """Fixed-width or Huffman bytes of a symbol stream, whichever `huffman` asks for."""
    fixed = {"coding": "fixed", "data": pack_bits(symbols, width), "table": b""}
    if not huffman or symbols.size == 0:
        return fixed
    counts = np.bincount(symbols, minlength=1)
    lengths = huffman_code_lengths(counts)
    table = bytes(lengths.astype(np.uint8).tolist())
    coded = {"coding": "huffman", "data": huffman_encode(symbols, lengths), "table": table}
    if huffman == "always":
        return coded
    smaller = len(coded["data"]) + len(table) < len(fixed["data"])
    return coded if smaller else fixed


def _encode_layer(
    layer: QuantizedLayer, gap_bits: int, huffman: bool | str, layout: str
) -> dict[str, Any]:
    """The layer's streams as bytes in the requested layout ("auto": the smallest one)."""
    mask = layer.mask.ravel()
    candidates = {}
    if layout in ("gaps", "auto"):
        gaps, real_index = gap_entries(mask, gap_bits)
        codes = np.zeros(gaps.size, dtype=np.int64)
        codes[real_index] = layer.codes
        candidates["gaps"] = {
            "entries": int(gaps.size),
            "codes": _encode_stream(codes, layer.bits, huffman),
            "gaps": _encode_stream(gaps, gap_bits, huffman),
        }
    codes = layer.codes.astype(np.int64)
    if layout in ("bitmap", "auto"):
        candidates["bitmap"] = {
            "entries": int(codes.size),
            "codes": _encode_stream(codes, layer.bits, huffman),
            "bitmap": np.packbits(mask).tobytes(),
        }
    if layout == "full" or (layout == "auto" and mask.all()):
        if not mask.all():
            raise ValueError(f"layout 'full' needs every weight of {layer.name!r} to survive")
        candidates["full"] = {
            "entries": int(codes.size),
            "codes": _encode_stream(codes, layer.bits, huffman),
        }

    def size(candidate: dict[str, Any]) -> int:
        total = len(candidate.get("bitmap", b""))
        for stream in ("codes", "gaps"):
            if stream in candidate:
                total += len(candidate[stream]["data"]) + len(candidate[stream]["table"])
        return total

    # Ties go to the earlier layout in LAYOUTS (gaps, the paper's, first).
    best = min(candidates, key=lambda name: (size(candidates[name]), LAYOUTS.index(name)))
    return {"layout": best, **candidates[best]}


# ---------------------------------------------------------------------- whole file


def _check_gap_bits(gap_bits: Any) -> int:
    if isinstance(gap_bits, bool) or not isinstance(gap_bits, (int, np.integer)):
        raise ValueError(f"gap_bits must be an integer in [{MIN_GAP_BITS}, {MAX_GAP_BITS}]")
    if not MIN_GAP_BITS <= int(gap_bits) <= MAX_GAP_BITS:
        raise ValueError(f"gap_bits must be in [{MIN_GAP_BITS}, {MAX_GAP_BITS}], got {gap_bits}")
    return int(gap_bits)


def _raw_array(name: str, value: Any) -> np.ndarray:
    array = np.asarray(jax.device_get(value))
    if array.dtype.kind not in _RAW_DTYPE_KINDS:
        raise ValueError(
            f"parameter {name!r} has dtype {array.dtype}; only bool, integer and float arrays "
            "can be stored (convert bfloat16 to float32 first)"
        )
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))


def encode_sqz(
    spec_dict: Mapping[str, Any],
    quantized_layers: Mapping[str, QuantizedLayer],
    other_params: Any = None,
    *,
    gap_bits: int = 4,
    huffman: bool | str = False,
    layout: str = "gaps",
) -> bytes:
    """The bytes of a .sqz file (see the module docstring; `write_sqz` writes them atomically).

    `other_params` (nested or flat dict, or nnx.State) is stored raw; its leaves that are
    quantized kernels are skipped, so the whole parameter tree can be passed.
    """
    gap_bits = _check_gap_bits(gap_bits)
    if huffman not in (False, True, "always"):
        raise ValueError(f"huffman must be False, True or 'always', got {huffman!r}")
    if layout not in (*LAYOUTS, "auto"):
        raise ValueError(f"layout must be one of {(*LAYOUTS, 'auto')}, got {layout!r}")
    try:
        spec_json = json.loads(json.dumps(dict(spec_dict), allow_nan=False))
    except (TypeError, ValueError) as err:
        raise ValueError(f"spec_dict must be a JSON-serialisable dict: {err}") from err
    payload = _PayloadWriter()
    layer_entries = []
    for path, layer in quantized_layers.items():
        if not isinstance(layer, QuantizedLayer):
            raise TypeError(f"quantized_layers[{path!r}] must be a QuantizedLayer")
        if path != layer.name:
            raise ValueError(f"quantized_layers key {path!r} differs from its layer's name")
        encoded = _encode_layer(layer, gap_bits, huffman, layout)
        sections = {"codebook": payload.add(layer.codebook.astype("<f4").tobytes())}
        entry = {
            "name": layer.name,
            "shape": list(layer.shape),
            "bits": layer.bits,
            "gap_bits": gap_bits if encoded["layout"] == "gaps" else None,
            "layout": encoded["layout"],
            "survivors": layer.num_surviving,
            "entries": encoded["entries"],
            "fillers": encoded["entries"] - layer.num_surviving,
        }
        for stream in ("codes", "gaps"):
            if stream in encoded:
                entry[f"{stream}_coding"] = encoded[stream]["coding"]
                sections[stream] = payload.add(encoded[stream]["data"])
                if encoded[stream]["coding"] == "huffman":
                    sections[f"{stream}_table"] = payload.add(encoded[stream]["table"])
        if "bitmap" in encoded:
            sections["bitmap"] = payload.add(encoded["bitmap"])
        entry["sections"] = sections
        layer_entries.append(entry)
    param_entries = []
    for path, value in flatten_params({} if other_params is None else other_params).items():
        if path in quantized_layers:
            continue
        array = _raw_array(path, value)
        param_entries.append(
            {
                "name": path,
                "shape": list(array.shape),
                "dtype": array.dtype.str,
                "section": payload.add(array.tobytes()),
            }
        )
    body = b"".join(payload.chunks)
    header = {
        "format": "sqz",
        "format_version": FORMAT_VERSION,
        "spec": spec_json,
        "payload_length": len(body),
        "payload_crc32": zlib.crc32(body),
        "layers": layer_entries,
        "params": param_entries,
    }
    header_bytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    prelude = _PRELUDE.pack(MAGIC, len(header_bytes), zlib.crc32(header_bytes))
    return prelude + header_bytes + body


def write_sqz(
    path: str | os.PathLike,
    spec_dict: Mapping[str, Any],
    quantized_layers: Mapping[str, QuantizedLayer],
    other_params: Any = None,
    *,
    gap_bits: int = 4,
    huffman: bool | str = False,
    layout: str = "gaps",
) -> dict[str, Any]:
    """Write a .sqz file atomically (temporary file, then `os.replace`); returns `size_report`."""
    data = encode_sqz(
        spec_dict, quantized_layers, other_params, gap_bits=gap_bits, huffman=huffman, layout=layout
    )
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return size_report(data)


# ---------------------------------------------------------------------- reading


def _parse(data: bytes) -> tuple[dict[str, Any], bytes, int]:
    """Header dict, payload bytes and header size (prelude included), all checks done."""
    # A file shorter than the magic but agreeing with it is truncated, not foreign.
    if data[: len(MAGIC)] != MAGIC[: len(data)]:
        raise SqzFormatError(f"not a .sqz file: magic is {bytes(data[:4])!r}, expected {MAGIC!r}")
    if len(data) < _PRELUDE.size:
        raise SqzFormatError(f"truncated .sqz file: {len(data)} bytes, prelude needs 12")
    _, header_length, header_crc = _PRELUDE.unpack_from(data)
    header_end = _PRELUDE.size + header_length
    if len(data) < header_end:
        raise SqzFormatError(
            f"truncated .sqz file: {len(data)} bytes, header ends at byte {header_end}"
        )
    header_bytes = data[_PRELUDE.size : header_end]
    if zlib.crc32(header_bytes) != header_crc:
        raise SqzFormatError("corrupted .sqz header: CRC32 mismatch")
    try:
        header = json.loads(header_bytes.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SqzFormatError(f"corrupted .sqz header: {err}") from err
    if not isinstance(header, dict) or header.get("format") != "sqz":
        raise SqzFormatError("corrupted .sqz header: not a sqz header object")
    version = header.get("format_version")
    if version != FORMAT_VERSION:
        raise SqzFormatError(
            f"unsupported .sqz format_version {version!r}; this reader supports {FORMAT_VERSION}"
        )
    payload = data[header_end:]
    expected = header.get("payload_length")
    if not isinstance(expected, int) or len(payload) < expected:
        raise SqzFormatError(
            f"truncated .sqz file: payload has {len(payload)} bytes, header says {expected}"
        )
    if len(payload) > expected:
        raise SqzFormatError(
            f"corrupted .sqz file: {len(payload) - expected} bytes after the payload"
        )
    if zlib.crc32(payload) != header.get("payload_crc32"):
        raise SqzFormatError("corrupted .sqz payload: CRC32 mismatch")
    return header, payload, header_end


def _section(payload: bytes, bounds: Any, what: str, where: str) -> bytes:
    """The payload bytes at `bounds` = [offset, length], checked to lie inside the payload."""
    if (
        not isinstance(bounds, list)
        or len(bounds) != 2
        or not all(isinstance(b, int) and b >= 0 for b in bounds)
        or bounds[0] + bounds[1] > len(payload)
    ):
        raise SqzFormatError(f"{where}: section {what!r} is missing or outside the payload")
    return payload[bounds[0] : bounds[0] + bounds[1]]


def _layer_section(payload: bytes, entry: Mapping[str, Any], key: str, where: str) -> bytes:
    sections = entry.get("sections")
    bounds = sections.get(key) if isinstance(sections, Mapping) else None
    return _section(payload, bounds, key, where)


def _expect(condition: bool, where: str, what: str) -> None:
    if not condition:
        raise SqzFormatError(f"{where}: {what}")


def _decode_stream(
    payload: bytes, entry: Mapping[str, Any], stream: str, width: int, count: int, where: str
) -> np.ndarray:
    data = _layer_section(payload, entry, stream, where)
    coding = entry.get(f"{stream}_coding")
    if coding == "fixed":
        _expect(
            len(data) == packed_size(count, width),
            where,
            f"{stream} section has {len(data)} bytes, {count} x {width} bits need "
            f"{packed_size(count, width)}",
        )
        return unpack_bits(data, width, count)
    if coding == "huffman":
        table = np.frombuffer(_layer_section(payload, entry, f"{stream}_table", where), np.uint8)
        symbols = huffman_decode(data, table.astype(np.int64), count, f"{where} {stream}")
        _expect(
            not symbols.size or int(symbols.max()) < 1 << width,
            where,
            f"{stream} value overflows {width} bits",
        )
        return symbols
    raise SqzFormatError(f"{where}: unknown {stream}_coding {coding!r}")


def _decode_layer(payload: bytes, entry: Mapping[str, Any]) -> QuantizedLayer:
    name = entry.get("name")
    where = f"layer {name!r}"
    _expect(isinstance(name, str), where, "missing name")
    shape = entry.get("shape")
    _expect(
        isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape),
        where,
        f"bad shape {shape!r}",
    )
    size = math.prod(shape)
    bits = entry.get("bits")
    _expect(
        isinstance(bits, int) and MIN_BITS <= bits <= MAX_BITS,
        where,
        f"bits {bits!r} outside [{MIN_BITS}, {MAX_BITS}]",
    )
    survivors, entries = entry.get("survivors"), entry.get("entries")
    _expect(
        isinstance(survivors, int) and isinstance(entries, int) and 0 <= survivors <= entries,
        where,
        f"bad survivors/entries {survivors!r}/{entries!r}",
    )
    codebook_bytes = _layer_section(payload, entry, "codebook", where)
    _expect(len(codebook_bytes) == 4 << bits, where, f"codebook is not 2^{bits} float32 values")
    codebook = np.frombuffer(codebook_bytes, dtype="<f4").astype(np.float32)
    codes = _decode_stream(payload, entry, "codes", bits, entries, where)
    layout = entry.get("layout")
    if layout == "gaps":
        gap_bits = entry.get("gap_bits")
        _expect(
            isinstance(gap_bits, int) and MIN_GAP_BITS <= gap_bits <= MAX_GAP_BITS,
            where,
            f"gap_bits {gap_bits!r} outside [{MIN_GAP_BITS}, {MAX_GAP_BITS}]",
        )
        gaps = _decode_stream(payload, entry, "gaps", gap_bits, entries, where)
        positions, real = positions_from_gaps(gaps, gap_bits, size, where)
        codes = codes[real]
    elif layout == "bitmap":
        bitmap = _layer_section(payload, entry, "bitmap", where)
        _expect(len(bitmap) == (size + 7) // 8, where, "bitmap size does not match the shape")
        positions = np.flatnonzero(np.unpackbits(np.frombuffer(bitmap, np.uint8))[:size])
    elif layout == "full":
        positions = np.arange(size)
    else:
        raise SqzFormatError(f"{where}: unknown layout {layout!r}")
    _expect(
        positions.size == survivors and codes.size == survivors,
        where,
        f"positions give {positions.size} surviving weights, header says {survivors}",
    )
    mask = np.zeros(size, dtype=bool)
    mask[positions] = True
    return QuantizedLayer(name, bits, codebook, codes.astype(np.uint8), mask.reshape(shape))


def _decode_param(payload: bytes, entry: Mapping[str, Any]) -> tuple[str, np.ndarray]:
    name = entry.get("name")
    where = f"parameter {name!r}"
    shape, dtype = entry.get("shape"), entry.get("dtype")
    _expect(
        isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape),
        where,
        f"bad shape {shape!r}",
    )
    try:
        dtype = np.dtype(dtype)
    except TypeError as err:
        raise SqzFormatError(f"{where}: bad dtype {entry.get('dtype')!r}") from err
    _expect(dtype.kind in _RAW_DTYPE_KINDS, where, f"unsupported dtype {dtype}")
    data = _section(payload, entry.get("section"), "section", where)
    _expect(len(data) == math.prod(shape) * dtype.itemsize, where, "size does not match shape")
    array = np.frombuffer(data, dtype=dtype).reshape(shape)
    return name, array.astype(dtype.newbyteorder("="))


def _as_bytes(source: str | os.PathLike | bytes) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source)
    with open(source, "rb") as f:
        return f.read()


def decode_sqz(
    source: str | os.PathLike | bytes,
) -> tuple[dict[str, Any], dict[str, QuantizedLayer], dict[str, np.ndarray]]:
    """`(spec_dict, quantized layers by kernel path, raw params flat)` from a file or bytes."""
    return _decode(*_parse(_as_bytes(source))[:2])


def _decode(
    header: Mapping[str, Any], payload: bytes
) -> tuple[dict[str, Any], dict[str, QuantizedLayer], dict[str, np.ndarray]]:
    layers_field, params_field = header.get("layers"), header.get("params")
    if not isinstance(layers_field, list) or not isinstance(params_field, list):
        raise SqzFormatError("corrupted .sqz header: layers/params are not lists")
    if not isinstance(header.get("spec"), dict):
        raise SqzFormatError("corrupted .sqz header: spec is not an object")
    layers = {}
    for entry in layers_field:
        _expect(isinstance(entry, dict), "header", "layer entry is not an object")
        layer = _decode_layer(payload, entry)
        layers[layer.name] = layer
    others = {}
    for entry in params_field:
        _expect(isinstance(entry, dict), "header", "parameter entry is not an object")
        name, array = _decode_param(payload, entry)
        _expect(isinstance(name, str) and name not in others, "header", f"bad name {name!r}")
        others[name] = array
    return header["spec"], layers, others


def read_sqz(source: str | os.PathLike | bytes) -> tuple[dict[str, Any], dict[str, Any]]:
    """`(spec_dict, params)`: params a nested dict of NumPy arrays, kernels dequantized exactly
    as `QuantizedLayer.dequantize` does (bit-identical)."""
    spec, layers, others = decode_sqz(source)
    flat = {path: layer.dequantize() for path, layer in layers.items()}
    overlap = set(flat) & set(others)
    if overlap:
        raise SqzFormatError(f"parameters stored twice: {sorted(overlap)}")
    flat.update(others)
    return spec, unflatten_params(flatten_params(flat))


# ---------------------------------------------------------------------- size accounting


def _owner(param_path: str, layer_names: list[str]) -> str | None:
    # "fire2/squeeze/bias" and "fire2/squeeze_bn/scale" belong to layer "fire2/squeeze".
    for layer in layer_names:
        if param_path.startswith(layer + "/") or param_path.startswith(layer + "_bn/"):
            return layer
    return None


def size_report(source: str | os.PathLike | bytes) -> dict[str, Any]:
    """Byte accounting of a .sqz file (path or bytes), per layer and in total, against fp32.

    Per layer: params (kernel weights), surviving, density, bits, gap_bits, layout, entries,
    fillers, code_bytes, gap_bytes (position data: gaps incl. fillers, or the bitmap; Huffman tables
    included in both), codebook_bytes, bias_bytes (raw params of the layer: bias, BatchNorm),
    total_bytes, fp32_bytes. Totals add `header_bytes` (prelude + JSON), `other_bytes` (raw params
    of no quantized layer) and `file_bytes`, which is the file's exact size.
    """
    data = _as_bytes(source)
    header, payload, header_size = _parse(data)
    _decode(header, payload)  # full validation, so the accounting below reads a sound header
    names = [layer_name(entry["name"]) for entry in header["layers"]]
    raw_by_layer: dict[str | None, list[Mapping[str, Any]]] = {}
    for entry in header["params"]:
        raw_by_layer.setdefault(_owner(entry["name"], names), []).append(entry)

    def section_bytes(entry: Mapping[str, Any], *keys: str) -> int:
        return sum(entry["sections"][k][1] for k in keys if k in entry["sections"])

    def raw_counts(entries: list[Mapping[str, Any]]) -> tuple[int, int]:
        count = sum(math.prod(e["shape"]) for e in entries)
        return count, sum(e["section"][1] for e in entries)

    rows = {}
    for name, entry in zip(names, header["layers"]):
        weights = math.prod(entry["shape"])
        raw_count, raw_bytes = raw_counts(raw_by_layer.get(name, []))
        row = {
            "params": weights,
            "surviving": entry["survivors"],
            "density": entry["survivors"] / weights if weights else 0.0,
            "bits": entry["bits"],
            "gap_bits": entry["gap_bits"],
            "layout": entry["layout"],
            "entries": entry["entries"],
            "fillers": entry["fillers"],
            "huffman": "huffman" in (entry.get("codes_coding"), entry.get("gaps_coding")),
            "code_bytes": section_bytes(entry, "codes", "codes_table"),
            "gap_bytes": section_bytes(entry, "gaps", "gaps_table", "bitmap"),
            "codebook_bytes": section_bytes(entry, "codebook"),
            "bias_bytes": raw_bytes,
            "fp32_bytes": 4 * (weights + raw_count),
        }
        row["total_bytes"] = (
            row["code_bytes"] + row["gap_bytes"] + row["codebook_bytes"] + row["bias_bytes"]
        )
        rows[name] = row
    other_count, other_bytes = raw_counts(raw_by_layer.get(None, []))
    summed = {
        key: sum(row[key] for row in rows.values())
        for key in (
            "params",
            "surviving",
            "entries",
            "fillers",
            "code_bytes",
            "gap_bytes",
            "codebook_bytes",
            "bias_bytes",
            "total_bytes",
            "fp32_bytes",
        )
    }
    fp32_bytes = summed["fp32_bytes"] + 4 * other_count
    total = {
        **summed,
        "density": summed["surviving"] / summed["params"] if summed["params"] else 0.0,
        "other_bytes": other_bytes,
        "header_bytes": header_size,
        "payload_bytes": len(payload),
        "file_bytes": len(data),
        "file_mib": len(data) / MIB,
        "fp32_bytes": fp32_bytes,
        "fp32_mib": fp32_bytes / MIB,
        "compression_ratio": fp32_bytes / len(data),
    }
    return {"layers": rows, "total": total}


def format_size_table(report: Mapping[str, Any]) -> str:
    """A plain-text table of `size_report` for the CLI."""
    columns = [
        ("layer", None),
        ("params", "params"),
        ("kept", "surviving"),
        ("density", "density"),
        ("bits", "bits"),
        ("codes B", "code_bytes"),
        ("gaps B", "gap_bytes"),
        ("codebook B", "codebook_bytes"),
        ("bias B", "bias_bytes"),
        ("total B", "total_bytes"),
        ("fp32 B", "fp32_bytes"),
    ]

    def cell(row: Mapping[str, Any], key: str) -> str:
        value = row.get(key, "")
        if key == "density":
            return f"{100 * value:.1f}%"
        return f"{value:,}" if isinstance(value, int) else str(value)

    lines = [[c[0] for c in columns]]
    for name, row in report["layers"].items():
        lines.append([name] + [cell(row, key) for _, key in columns[1:]])
    total = report["total"]
    lines.append(["total"] + [cell(total, key) if key != "bits" else "" for _, key in columns[1:]])
    widths = [max(len(line[i]) for line in lines) for i in range(len(columns))]
    text = [
        "  ".join(
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(line, widths))
        )
        for line in lines
    ]
    text.append(
        f"file {total['file_bytes']:,} B ({total['file_mib']:.3f} MiB; header "
        f"{total['header_bytes']:,} B, other params {total['other_bytes']:,} B) vs fp32 "
        f"{total['fp32_bytes']:,} B ({total['fp32_mib']:.2f} MiB): "
        f"{total['compression_ratio']:.1f}x smaller"
    )
    return "\n".join(text)
