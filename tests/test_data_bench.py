"""`python -m datasets bench` names every loader it times and prints their ratios: the reader
mode (resident vs shard reader vs ImageFolder) and the augmented stage-3 mode (resident vs
torch vs DALI fed PNGs vs DALI fed the resident tensor), on the tiny shards."""
from __future__ import annotations

import re

import pytest

from datasets.bench import main

RATE = r":\s+(\d+) images/s"


def rates(out: str, names: list[str]) -> dict[str, int]:
    found = {name: re.search(r"(?m)^" + re.escape(name) + r" \([^\n]*?\)" + RATE, out) for name in names}
    assert all(found.values()), (found, out)
    return {name: int(m.group(1)) for name, m in found.items()}


def test_reader_mode_names_resident_shard_reader_and_imagefolder(tiny_shards, tiny_raw, capsys):
    rc = main(["--shards", str(tiny_shards), "--raw", str(tiny_raw), "--batch-size", "8",
               "--workers", "0", "--seconds", "0.3", "--rounds", "1"])
    out = capsys.readouterr().out
    assert rc == 0, out
    got = rates(out, ["resident", "shard reader"])
    assert re.search(r"ImageFolder \+ PIL \+ DataLoader" + RATE, out), out
    assert all(v > 0 for v in got.values())
    for a, b in (("shard reader", "ImageFolder"), ("resident", "shard reader"), ("resident", "ImageFolder")):
        assert re.search(rf"ratio {a} / {b}: [\d.]+x", out), out
    assert re.search(r"resident: \d+ chips at 56 px .* held on (cpu|cuda)", out), out


def test_augmented_mode_names_resident_torch_and_both_dali_sources(tiny_shards, capsys):
    rc = main(["--shards", str(tiny_shards), "--loader", "torch", "--batch-size", "8", "--workers", "0",
               "--seconds", "0.3", "--rounds", "1", "--dali-threads", "1"])
    out = capsys.readouterr().out
    assert rc == 0, out
    rates(out, ["resident", "torch"])
    assert re.search(r"ratio resident / torch: [\d.]+x", out), out
    if "dali: unavailable" in out:
        pytest.skip("DALI does not import here")
    got = rates(out, ["dali", "dali resident"])
    assert got["dali resident"] > 0 and got["dali"] > 0
    for a, b in (("dali", "torch"), ("dali resident", "torch"), ("dali resident", "dali")):
        assert re.search(rf"ratio {a} / {b}: [\d.]+x", out), out


def test_bad_dali_threads_exit_2(tiny_shards, capsys):
    assert main(["--shards", str(tiny_shards), "--loader", "torch", "--dali-threads", "0"]) == 2
    assert "--dali-threads" in capsys.readouterr().err
