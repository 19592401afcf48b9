"""The `.sqz` file: sparse, k-means-coded, optionally Huffman-coded weights (Deep Compression's
stage 3), readable back into BIT-IDENTICAL float32 parameters. This module holds the layout, its
limits and its error; `encode.py` writes files, `decode.py` reads them, `size.py` accounts for
their bytes. It imports nothing heavy, so argument checks and `--help` stay fast.

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

A reader trusts no size in a header: every shape, count and section is checked against the file's
length before anything is allocated, and the weights the shapes claim may be at most
`MAX_WEIGHTS_PER_BYTE` per byte of the file (the trailing pruned run of a `gaps` layer costs no
bytes, so nothing else bounds it). SqueezeNet v1.0 at 8 bits is 1.8 weights per byte; a writer
refuses a file past the limit, so every file it writes can be read back.

The paper's sizes for SqueezeNet with Deep Compression are 0.66MB (8-bit codes, 33% density) and
0.47MB (6-bit); the released 8-bit file is 675,763 bytes with 4-bit gaps and no Huffman stage
(docs/paper.md). `size.size_report` gives this file's per-layer accounting against fp32.
"""

from __future__ import annotations

import struct

MAGIC = b"SQZ1"
FORMAT_VERSION = 1
PRELUDE = struct.Struct("<4sII")  # magic, header length, header CRC32
# Code widths: codes are stored (and held in memory) as uint8.
MIN_BITS = 2
MAX_BITS = 8
MIN_GAP_BITS = 1
MAX_GAP_BITS = 16
LAYOUTS = ("gaps", "bitmap", "full")
CODINGS = ("fixed", "huffman")
HUFFMAN_MAX_CODE_LENGTH = 16  # enough for 2^16 symbols, so any 16-bit gap alphabet fits
# Raw parameters: bool, integer and float arrays of at most 8 bytes per element.
RAW_DTYPE_KINDS = "biuf"
MAX_NDIM = 8
MAX_DIM = 2**40
# Decoded weights (kernel positions and raw elements) per byte of file. A 1e-3-density
# 3x3x512x512 layer with 2-bit codes and 16-bit gaps is about 300.
MAX_WEIGHTS_PER_BYTE = 1024
MIB = 2**20


class SqzFormatError(ValueError):
    """A .sqz file (or bytes) that cannot be decoded: the message says what is wrong."""
