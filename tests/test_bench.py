"""`python -m datasets bench`: both sides run and the ratio is printed; bad input exits 2."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest

from datasets.bench import main
from shards.index import ClassIndex


def test_reader_bench_prints_both_rates_and_the_ratio(tiny_shards, tiny_raw, capsys):
    rc = main(["--shards", str(tiny_shards), "--raw", str(tiny_raw), "--batch-size", "8",
               "--workers", "0", "--seconds", "0.6", "--rounds", "2"])
    out = capsys.readouterr().out
    assert rc == 0, out
    shard = re.search(r"shard reader .*?:\s+(\d+) images/s", out)
    folder = re.search(r"ImageFolder .*?:\s+(\d+) images/s", out)
    ratio = re.search(r"ratio shard reader / ImageFolder: ([\d.]+)x", out)
    assert shard and folder and ratio, out
    assert int(shard.group(1)) > 0 and int(folder.group(1)) > 0
    assert float(ratio.group(1)) == pytest.approx(int(shard.group(1)) / int(folder.group(1)), rel=0.02)
    n = len(ClassIndex.load(tiny_shards).split("train"))
    assert f"chips: {n} (train)" in out  # the split's chips only, and ImageFolder found the same


@pytest.mark.slow
def test_augmented_bench_reports_torch_and_dali_or_why_not(tiny_shards, capsys):
    rc = main(["--shards", str(tiny_shards), "--loader", "torch", "--batch-size", "8",
               "--workers", "0", "--seconds", "0.5", "--rounds", "1"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert re.search(r"torch \(ShardStream \+ DataLoader\):\s+\d+ images/s", out), out
    assert re.search(r"dali \((cpu|gpu), DaliStream\):\s+\d+ images/s", out) or "dali: unavailable" in out


def test_bad_input_exits_2_with_one_line(tiny_shards, tiny_raw, tmp_path, capsys):
    assert main(["--shards", str(tiny_shards)]) == 2
    assert "error: --raw is required" in capsys.readouterr().err
    assert main(["--shards", str(tmp_path / "none"), "--raw", str(tiny_raw)]) == 2
    assert "index.json" in capsys.readouterr().err
    other = tmp_path / "other"
    shutil.copytree(tiny_raw, other)
    for p in list((other / "0").glob("SAR_*.png"))[:3]:
        p.unlink()
    assert main(["--shards", str(tiny_shards), "--raw", str(other), "--seconds", "0.1"]) == 2
    assert "ImageFolder found" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_dispatch(tiny_shards):
    run = subprocess.run([sys.executable, "-m", "datasets", "bench", "--shards", str(tiny_shards)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and run.stderr.startswith("error: ")
