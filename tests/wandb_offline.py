"""Read an offline wandb run back (tests only): the records of its `run-<id>.wandb` file.

wandb writes an offline run as a LevelDB-style log of protobuf `Record`s (a 7-byte file header
':W&B' + magic + version, then 32 KiB blocks of chunks, each with a 7-byte header: CRC-32,
length, type FULL/FIRST/MIDDLE/LAST). wandb 0.2x's Go core no longer ships the Python reader, so
this is one; it checks every chunk's checksum as wandb does.
"""

from __future__ import annotations

import json
import struct
import time
import zlib
from pathlib import Path
from typing import Any

BLOCK = 32 * 1024
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: str | Path) -> list[Any]:
    """Every `wandb_internal_pb2.Record` in an offline run file, in order."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    ident, magic, version = struct.unpack("<4sHB", data[:HEADER])
    assert ident == b":W&B" and magic == 0xBEE1 and version == 0, "not a wandb run file"
    out, pos, pending = [], HEADER, b""
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # block trailer padding
            pos += left
            continue
        checksum, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        if length == 0 and kind == 0:  # zero padding at the end
            break
        chunk = data[pos + HEADER : pos + HEADER + length]
        assert zlib.crc32(chunk, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF == checksum, "bad CRC"
        pos += HEADER + length
        if kind == FULL:
            pending = chunk
        elif kind == FIRST:
            pending = chunk
            continue
        elif kind == MIDDLE:
            pending += chunk
            continue
        else:
            pending += chunk
        record = pb.Record()
        record.ParseFromString(pending)
        out.append(record)
        pending = b""
    return out


def run_file(run_root: str | Path) -> Path:
    """The single offline run file under a `wandb` directory's parent (or the directory)."""
    found = sorted(Path(run_root).rglob("offline-run-*/run-*.wandb"))
    assert len(found) == 1, f"expected one offline wandb run under {run_root}, found {found}"
    return found[0]


def finished_records(path: str | Path, timeout_s: float = 60.0) -> list[Any]:
    """The records of a finished run: `wandb.finish()` returns before wandb's service process
    has written the file out, so wait for the run's exit record."""
    deadline = time.time() + timeout_s
    while True:
        try:
            found = records(path)
        except (AssertionError, struct.error):  # still being written
            found = []
        if any(r.WhichOneof("record_type") == "exit" for r in found) or time.time() > deadline:
            return found
        time.sleep(0.2)


def read_run(path: str | Path) -> dict[str, Any]:
    """{'group', 'name', 'config': {key: value}, 'summary': {key: value}, 'history': [..]}
    of a finished offline run file (config and summary: the last value of each key)."""
    out: dict[str, Any] = {"group": None, "name": None, "config": {}, "summary": {}, "history": []}
    for r in finished_records(path):
        kind = r.WhichOneof("record_type")
        if kind == "run":
            out["group"], out["name"] = r.run.run_group, r.run.display_name
            for item in r.run.config.update:
                out["config"][item.key] = json.loads(item.value_json)
        elif kind == "config":
            for item in r.config.update:
                out["config"][item.key] = json.loads(item.value_json)
        elif kind == "summary":
            for item in r.summary.update:
                key = "/".join(item.nested_key) if item.nested_key else item.key
                out["summary"][key] = json.loads(item.value_json)
        elif kind == "history":
            row = {}
            for item in r.history.item:
                key = "/".join(item.nested_key) if item.nested_key else item.key
                row[key] = json.loads(item.value_json)
            out["history"].append(row)
    return out
