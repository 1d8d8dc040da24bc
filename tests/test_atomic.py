"""The shared atomic-write helper: whole file or nothing, usual mode, no temporaries left."""
import json
import os
import stat

import pytest

from shards.atomic import atomic_path, write_atomic, write_json


def test_write_text_bytes_and_json(tmp_path):
    write_atomic(tmp_path / "a" / "t.txt", "héllo")
    write_atomic(tmp_path / "b.bin", b"\x00\x01")
    write_json(tmp_path / "c.json", {"x": [1, 2]}, indent=1)
    assert (tmp_path / "a" / "t.txt").read_text() == "héllo"
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert json.loads((tmp_path / "c.json").read_text()) == {"x": [1, 2]}
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "b.bin").stat().st_mode) == 0o666 & ~umask


def test_failure_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "f.txt"
    write_atomic(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.txt"]


def test_writer_that_wants_a_path(tmp_path):
    target = tmp_path / "fig.png"
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp != target and not target.exists()
        tmp.write_bytes(b"png")
    assert target.read_bytes() == b"png"
