"""Byte accounting of a `.sqz` file against fp32: per layer (codes, position data, codebook, the
layer's raw biases and BatchNorm) and in total, and the table `sqz compress` prints."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

from tabulate import tabulate

from sqzexplore.compress.decode import ParamEntry, SqzFile, Stream, parse_sqz
from sqzexplore.compress.prune import layer_name
from sqzexplore.compress.sqzformat import MIB

_SUMMED = (
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


def _owner(param_path: str, layer_names: list[str]) -> str | None:
    # "fire2/squeeze/bias" and "fire2/squeeze_bn/scale" belong to layer "fire2/squeeze".
    for layer in layer_names:
        if param_path.startswith(layer + "/") or param_path.startswith(layer + "_bn/"):
            return layer
    return None


def _raw_counts(entries: list[ParamEntry]) -> tuple[int, int]:
    return sum(math.prod(e.shape) for e in entries), sum(e.section[1] for e in entries)


def _stream_bytes(stream: Stream | None) -> int:
    """A stream's bytes, its Huffman table included."""
    if stream is None:
        return 0
    return stream.section[1] + (stream.table[1] if stream.table else 0)


def size_report(source: str | os.PathLike | bytes | SqzFile) -> dict[str, Any]:
    """Byte accounting of a .sqz file (path, bytes or parsed), per layer and in total, vs fp32.

    Per layer: params (kernel weights), surviving, density, bits, gap_bits, layout, entries,
    fillers, code_bytes, gap_bytes (position data: gaps incl. fillers, or the bitmap; Huffman tables
    included in both), codebook_bytes, bias_bytes (raw params of the layer: bias, BatchNorm),
    total_bytes, fp32_bytes. Totals add `header_bytes` (prelude + JSON), `other_bytes` (raw params
    of no quantized layer) and `file_bytes`, which is the file's exact size.
    """
    sqz = source if isinstance(source, SqzFile) else parse_sqz(source)
    sqz.decode()  # every stream decodes: the accounting below is of a sound file
    names = [layer_name(layer.name) for layer in sqz.layers]
    raw_by_layer: dict[str | None, list[ParamEntry]] = {}
    for entry in sqz.params:
        raw_by_layer.setdefault(_owner(entry.name, names), []).append(entry)
    rows = {}
    for name, layer in zip(names, sqz.layers):
        raw_count, raw_bytes = _raw_counts(raw_by_layer.get(name, []))
        row = {
            "params": layer.size,
            "surviving": layer.survivors,
            "density": layer.survivors / layer.size if layer.size else 0.0,
            "bits": layer.bits,
            "gap_bits": layer.gap_bits,
            "layout": layer.layout,
            "entries": layer.entries,
            "fillers": layer.entries - layer.survivors,
            "huffman": any(s and s.coding == "huffman" for s in (layer.codes, layer.gaps)),
            "code_bytes": _stream_bytes(layer.codes),
            "gap_bytes": _stream_bytes(layer.gaps) + (layer.bitmap[1] if layer.bitmap else 0),
            "codebook_bytes": layer.codebook[1],
            "bias_bytes": raw_bytes,
            "fp32_bytes": 4 * (layer.size + raw_count),
        }
        row["total_bytes"] = (
            row["code_bytes"] + row["gap_bytes"] + row["codebook_bytes"] + row["bias_bytes"]
        )
        rows[name] = row
    other_count, other_bytes = _raw_counts(raw_by_layer.get(None, []))
    summed = {key: sum(row[key] for row in rows.values()) for key in _SUMMED}
    fp32_bytes = summed["fp32_bytes"] + 4 * other_count
    total = {
        **summed,
        "density": summed["surviving"] / summed["params"] if summed["params"] else 0.0,
        "other_bytes": other_bytes,
        "header_bytes": sqz.header_size,
        "payload_bytes": len(sqz.payload),
        "file_bytes": sqz.file_size,
        "file_mib": sqz.file_size / MIB,
        "fp32_bytes": fp32_bytes,
        "fp32_mib": fp32_bytes / MIB,
        "compression_ratio": fp32_bytes / sqz.file_size,
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

    rows = [
        [name] + [cell(row, key) for _, key in columns[1:]]
        for name, row in report["layers"].items()
    ]
    total = report["total"]
    rows.append(["total"] + [cell(total, key) if key != "bits" else "" for _, key in columns[1:]])
    # tablefmt "simple": the layer column left-aligned, the numbers right-aligned; the cells are
    # already formatted (thousands separators, percentages), so tabulate must not reparse them.
    table = tabulate(
        rows,
        headers=[c[0] for c in columns],
        tablefmt="simple",
        colalign=("left",) + ("right",) * (len(columns) - 1),
        disable_numparse=True,
    )
    text = [table]
    text.append(
        f"file {total['file_bytes']:,} B ({total['file_mib']:.3f} MiB; header "
        f"{total['header_bytes']:,} B, other params {total['other_bytes']:,} B) vs fp32 "
        f"{total['fp32_bytes']:,} B ({total['fp32_mib']:.2f} MiB): "
        f"{total['compression_ratio']:.1f}x smaller"
    )
    return "\n".join(text)
