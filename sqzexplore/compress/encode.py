"""Writing `.sqz` files (layout in `sqzformat`): per quantized layer the smallest requested
layout of its survivors' positions, codes and gaps at a fixed width or Huffman-coded, then every
other parameter raw; `encode_sqz` returns the bytes, `write_sqz` writes them atomically.
"""

from __future__ import annotations

import json
import math
import os
import zlib
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from sqzexplore import rundir
from sqzexplore.compress.coding import gap_entries, huffman_code_lengths, huffman_encode, pack_bits
from sqzexplore.compress.prune import flatten_params
from sqzexplore.compress.quantize import QuantizedLayer
from sqzexplore.compress.size import size_report
from sqzexplore.compress.sqzformat import (
    FORMAT_VERSION,
    LAYOUTS,
    MAGIC,
    MAX_GAP_BITS,
    MAX_NDIM,
    MAX_WEIGHTS_PER_BYTE,
    MIN_GAP_BITS,
    PRELUDE,
    RAW_DTYPE_KINDS,
)


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
    if array.dtype.kind not in RAW_DTYPE_KINDS:
        raise ValueError(
            f"parameter {name!r} has dtype {array.dtype}; only bool, integer and float arrays "
            "can be stored (convert bfloat16 to float32 first)"
        )
    if array.ndim > MAX_NDIM:
        raise ValueError(f"parameter {name!r} has {array.ndim} dimensions; at most {MAX_NDIM}")
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
    prelude = PRELUDE.pack(MAGIC, len(header_bytes), zlib.crc32(header_bytes))
    data = prelude + header_bytes + body
    weights = sum(math.prod(e["shape"]) for e in (*layer_entries, *param_entries))
    if weights > MAX_WEIGHTS_PER_BYTE * len(data):
        # Readers refuse such a file (see sqzformat), so it is never written.
        raise ValueError(
            f"{weights:,} weights in a {len(data):,}-byte file: more than the format's "
            f"{MAX_WEIGHTS_PER_BYTE} per byte (prune less)"
        )
    return data


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
    """Write a .sqz file atomically, with the umask's mode (`rundir.write_bytes`); returns its
    `size.size_report`."""
    data = encode_sqz(
        spec_dict, quantized_layers, other_params, gap_bits=gap_bits, huffman=huffman, layout=layout
    )
    rundir.write_bytes(path, data)
    return size_report(data)
