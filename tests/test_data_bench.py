"""`sqz bench data`: the loader benchmark end to end on its own written JPEG fixture (offline)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _sqz(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu")
    cmd = [sys.executable, "-m", "sqzexplore.cli", *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env, timeout=timeout)


def test_bench_data_smoke_measures_the_original_and_a_prepared_copy(tmp_path):
    out, md = tmp_path / "data.json", tmp_path / "RESULTS.md"
    fixture = tmp_path / "jpegs"
    done = _sqz("bench", "data", "--smoke", "--fixture", str(fixture), "--images", "32",
                "--target-rate", "1000", "--json", str(out), "--results", str(md))  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    with open(out) as f:
        rows = json.load(f)["data"]
    assert [r["path"] for r in rows] == ["original files", "prepared copy (JPEG q90)"]
    for row in rows:
        assert row["images"] >= 32 and row["img_s"] > 0 and row["img_per_cpu_s"] > 0
        assert row["dtype"] == "uint8" and row["bytes_per_image"] == 227 * 227 * 3
        assert row["cores_for_rates"]["1000"] == 1000 / row["img_per_cpu_s"]
    copy = fixture / "prepared-fake_imagenet_smoke-stretch256-q90"
    with open(copy / "sqz_prepared.json") as f:
        assert json.load(f)["complete"]
    assert "Loader alone" in md.read_text() and "prepared copy (JPEG q90)" in md.read_text()


def test_bench_data_needs_data_and_sane_rates(tmp_path):
    done = _sqz("bench", "data", "--json", str(tmp_path / "x.json"))
    assert done.returncode == 2 and "sqz bench data needs data: --fixture DIR" in done.stderr
    done = _sqz("bench", "data", "--fixture", str(tmp_path), "--target-rate", "fast")
    assert done.returncode == 2 and "--target-rate must be numbers" in done.stderr
    assert not (tmp_path / "x.json").exists() and not os.listdir(tmp_path)
