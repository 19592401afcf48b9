"""Bit-level streams of the `.sqz` format: fixed-width packing, canonical Huffman coding (length
limited, table-driven decoding) and the relative-index gap stream with fillers (see `sqzformat`).

Decoders raise `SqzFormatError` for any stream that does not hold what its header says; their
memory is a fixed multiple of the stream's length (at most 2^16 table entries for Huffman).
"""

from __future__ import annotations

import heapq

import numpy as np

from sqzexplore.compress.sqzformat import HUFFMAN_MAX_CODE_LENGTH, SqzFormatError

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
    table_length = np.zeros(1 << width, dtype=np.int8)  # code lengths are at most 16
    for symbol in np.flatnonzero(lengths):
        length = int(lengths[symbol])
        start = int(codes[symbol]) << (width - length)
        table_symbol[start : start + (1 << (width - length))] = symbol
        table_length[start : start + (1 << (width - length))] = length
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8))
    total_bits = bits.size
    padded = np.concatenate([bits, np.zeros(width, dtype=np.uint8)])
    # The next `width` bits at every bit position (width <= 16, so int32 holds them).
    window = np.zeros(total_bits, dtype=np.int32)
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


# ---------------------------------------------------------------------- the gap stream


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
