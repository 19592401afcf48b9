"""The .sqz reader against hostile input: random bytes and damaged valid files.

Whatever the bytes, reading a file (`parse_sqz`, then `read_sqz` and `size_report` on what
parsed) raises nothing but SqzFormatError, returns within a deadline, and allocates no more than
the file's size allows: a fixed multiple of its length, plus the arrays its header claims, a claim
the reader caps at `MAX_WEIGHTS_PER_BYTE` weights per byte of file before allocating any of them.
Damaged files come from valid ones by bit flips (with and without CRCs made to match again, so
the flips reach the stream decoders), truncations, and header edits with both CRCs recomputed:
any field replaced by any JSON value, and enormous shapes.
"""

from __future__ import annotations

import functools
import json
import math
import struct
import tracemalloc
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sqzexplore.compress import (
    SqzFormatError,
    encode_sqz,
    make_masks,
    parse_sqz,
    quantize_params,
    read_sqz,
    size_report,
)
from sqzexplore.compress.sqzformat import MAGIC, MAX_WEIGHTS_PER_BYTE

# Fixed costs: Python objects of a parse, and a 16-bit Huffman decode table (2^16 entries).
BASE_BYTES = 4 * 2**20
# Per byte of file: the JSON header's objects and the bit-level temporaries of the decoders.
BYTES_PER_FILE_BYTE = 256
# Per decoded kernel weight: its mask (bool) and its float32 value.
BYTES_PER_WEIGHT = 6
FUZZ = settings(
    max_examples=120,
    deadline=5000,  # ms; a hang would be far longer
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,
)


@functools.cache
def valid_files() -> tuple[bytes, ...]:
    """Small files covering every layout and coding, with raw float, int and bool params."""
    rng = np.random.default_rng(0)
    params = {
        "a": {"kernel": rng.normal(size=(3, 3, 4, 6)).astype(np.float32)},
        "a_bn": {"scale": np.ones(6, np.float32)},
        "b": {"kernel": rng.normal(size=(1, 1, 6, 8)).astype(np.float32)},
        "c": {"kernel": rng.normal(size=(1, 1, 8, 4)).astype(np.float32)},
        "steps": np.arange(3, dtype=np.int64),
        "flag": np.array([True, False]),
    }
    masks = make_masks(params, {"a": 0.3, "b": 0.5})
    layers = quantize_params(params, masks, {"a": 4, "b": 3, "c": 2})
    spec = {"name": "fuzz", "num_classes": 4}
    return (
        encode_sqz(spec, layers, params, huffman="always"),
        encode_sqz(spec, layers, params, layout="bitmap"),
        encode_sqz(spec, layers, params, layout="auto", huffman=True, gap_bits=2),
        encode_sqz(spec, layers, params, gap_bits=16),
    )


def split(data: bytes) -> tuple[dict, bytes]:
    (length,) = struct.unpack_from("<I", data, 4)
    return json.loads(data[12 : 12 + length]), data[12 + length :]


def assemble(header: dict, payload: bytes, *, fix_payload_crc: bool = True) -> bytes:
    """A file with `header` and `payload`, its CRCs (and payload length) made consistent."""
    header = dict(header)
    if fix_payload_crc:
        header["payload_length"], header["payload_crc32"] = len(payload), zlib.crc32(payload)
    blob = json.dumps(header).encode()
    return MAGIC + struct.pack("<II", len(blob), zlib.crc32(blob)) + blob + payload


def read_everything(data: bytes) -> None:
    """Read `data` as a user would; assert only SqzFormatError escapes and memory stays bounded."""
    tracemalloc.start()
    claimed = None
    try:
        sqz = parse_sqz(data)
        claimed = sum(math.prod(layer.shape) for layer in sqz.layers)
        read_sqz(sqz)
        size_report(sqz)
    except SqzFormatError:
        pass
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    allowed = BASE_BYTES + BYTES_PER_FILE_BYTE * len(data)
    if claimed is not None:
        # Decoding allocates the kernels the header claims, which the parse capped.
        assert claimed <= MAX_WEIGHTS_PER_BYTE * len(data)
        allowed += BYTES_PER_WEIGHT * claimed
    assert peak <= allowed, (peak, allowed, len(data))


def test_valid_files_read_back_within_bounds():
    for data in valid_files():
        read_everything(data)
        spec, params = read_sqz(data)
        assert spec["name"] == "fuzz" and params["steps"].tolist() == [0, 1, 2]


@FUZZ
@given(st.binary(max_size=4096))
def test_random_bytes(data):
    read_everything(data)


@FUZZ
@given(st.binary(max_size=512), st.binary(max_size=2048))
def test_random_bytes_behind_a_valid_prelude_and_header(head, tail):
    # A CRC-correct random header, then random payload bytes.
    read_everything(MAGIC + struct.pack("<II", len(head), zlib.crc32(head)) + head + tail)


@FUZZ
@given(
    st.sampled_from(range(4)),
    st.lists(st.integers(min_value=0), min_size=1, max_size=8),
    st.booleans(),
)
def test_bit_flips(which, positions, fix_crcs):
    data = bytearray(valid_files()[which])
    for position in positions:
        data[position % len(data)] ^= 1 << (position // len(data) % 8)
    if fix_crcs:
        # Flips in the payload with its CRC made right again reach the stream decoders.
        (length,) = struct.unpack_from("<I", data, 4)
        try:
            header = json.loads(bytes(data[12 : 12 + length]))
        except ValueError:
            header = None
        if isinstance(header, dict):
            data = bytearray(assemble(header, bytes(data[12 + length :])))
    read_everything(bytes(data))


@FUZZ
@given(
    st.sampled_from(range(4)),
    st.lists(st.tuples(st.integers(min_value=0), st.integers(1, 255)), min_size=1, max_size=6),
)
def test_payload_damage_behind_matching_crcs(which, edits):
    # Only the payload changes and its CRC matches again: every edit reaches the stream decoders
    # (codebooks, Huffman tables and streams, gaps, bitmaps, raw arrays).
    header, payload = split(valid_files()[which])
    payload = bytearray(payload)
    for position, xor in edits:
        payload[position % len(payload)] ^= xor
    read_everything(assemble(header, bytes(payload)))


@FUZZ
@given(st.sampled_from(range(4)), st.integers(min_value=0), st.binary(max_size=16))
def test_truncations_and_appended_bytes(which, cut, extra):
    data = valid_files()[which]
    read_everything(data[: cut % len(data)])
    read_everything(data + extra)


def _paths(node, prefix=()):
    """Every path into a JSON tree (keys and list indices), containers included."""
    yield prefix
    if isinstance(node, dict):
        for key, child in node.items():
            yield from _paths(child, (*prefix, key))
    elif isinstance(node, list):
        for index, child in enumerate(node):
            yield from _paths(child, (*prefix, index))


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.sampled_from([0, 1, 2**31, 2**40, 2**62, 10**300])
    | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=8,
)


@FUZZ
@given(st.sampled_from(range(4)), st.data(), st.lists(JSON_VALUES, min_size=1, max_size=3))
def test_header_edits_with_recomputed_crcs(which, data, values):
    header, payload = split(valid_files()[which])
    for value in values:
        paths = [p for p in _paths(header) if p]
        path = data.draw(st.sampled_from(paths))
        node = header
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    read_everything(assemble(header, payload, fix_payload_crc=False))


@FUZZ
@given(
    st.sampled_from(range(4)),
    st.data(),
    st.lists(st.integers(min_value=0, max_value=2**64), min_size=1, max_size=9),
)
def test_enormous_shapes(which, data, shape):
    header, payload = split(valid_files()[which])
    entries = header["layers"] + header["params"]
    entry = entries[data.draw(st.integers(0, len(entries) - 1))]
    entry["shape"] = shape
    read_everything(assemble(header, payload))


@pytest.mark.parametrize("which", range(4))
def test_a_huge_kernel_is_refused_before_any_allocation(which):
    header, payload = split(valid_files()[which])
    header["layers"][0]["shape"] = [4096, 4096, 64, 64]  # 2^36 weights: 256 GiB as float32
    data = assemble(header, payload)
    tracemalloc.start()
    try:
        with pytest.raises(SqzFormatError, match="layer 'a/kernel'|more than the 1024 per byte"):
            read_sqz(data)
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert peak < BASE_BYTES + BYTES_PER_FILE_BYTE * len(data)


def test_each_header_size_is_checked_against_the_file():
    header, payload = split(valid_files()[0])

    def refused(edit, message):
        edited = json.loads(json.dumps(header))
        edit(edited)
        with pytest.raises(SqzFormatError, match=message):
            parse_sqz(assemble(edited, payload))

    def layer(key, value):
        return lambda h: h["layers"][0].__setitem__(key, value)

    refused(layer("entries", 10**12), r"layer 'a/kernel': entries \d+ is not an integer in")
    refused(layer("survivors", 10**12), r"layer 'a/kernel': survivors \d+ is not an integer")
    refused(layer("bits", 9), r"layer 'a/kernel': bits 9 is not an integer in \[2, 8\]")
    refused(layer("gap_bits", 17), r"gap_bits 17 is not an integer in \[1, 16\]")
    refused(layer("shape", [-1, 3]), r"layer 'a/kernel': shape \[-1, 3\] is not a list")
    refused(layer("shape", [1] * 9), "is not a list of at most 8 sizes")
    refused(layer("layout", "zip"), "layout 'zip' is not one of")
    refused(layer("codes_coding", "lz"), "codes_coding 'lz' is not one of")
    refused(
        lambda h: h["layers"][0]["sections"].__setitem__("codebook", [0, 8]),
        r"codebook has 8 bytes, not 2\^4 float32 values",
    )
    refused(
        lambda h: h["layers"][0]["sections"].__setitem__("codes_table", [0, 10**9]),
        "section 'codes_table' .* outside the payload",
    )
    refused(
        lambda h: h["params"][0].__setitem__("shape", [10**6]),
        r"parameter 'a_bn/scale': section has 24 bytes, shape \[1000000\] of float32 needs",
    )
    refused(lambda h: h["params"][0].__setitem__("dtype", "<U4"), "dtype <U4 is not a bool")
    refused(lambda h: h["params"][0].__setitem__("dtype", ["f4"]), r"dtype \['f4'\] is not")
    refused(lambda h: h["params"][0].__setitem__("name", "a/kernel"), "'a/kernel' is stored twice")
    refused(
        lambda h: h["params"][0].__setitem__("name", "a/kernel/x"),
        "'a/kernel/x' lies inside the stored array 'a/kernel'",
    )
    # 4M weights in a trailing pruned run cost no bytes: the per-byte cap catches them.
    refused(layer("shape", [4096, 1024, 1, 1]), "more than the 1024 per byte")


def test_deeply_nested_header_is_a_format_error():
    blob = b"[" * 100_000 + b"]" * 100_000
    data = MAGIC + struct.pack("<II", len(blob), zlib.crc32(blob)) + blob
    with pytest.raises(SqzFormatError, match="corrupted .sqz header"):
        parse_sqz(data)
