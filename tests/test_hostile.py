"""Hostile input to `python -m shards` as a table: every case states the exit code, the one
`error:` line and which files may change; the test also checks that nothing else did (a
victim file beside OUT, the raw folder, everything under the test's folder).

The trainer's cases (checkpoints, weights, run folders) are in test_hostile_run.py."""
from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import re
import shutil
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from case_table import record
from conftest import write_raw
from shards.__main__ import main
from shards.index import seal

COUNTS = (6, 3, 2)


def snapshot(root: Path) -> dict[str, str]:
    """Relative path -> content hash (or 'dir', or the link target) of everything under root."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = "link:" + os.readlink(p)
        elif p.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = hashlib.sha1(p.read_bytes()).hexdigest()
    return out


def changes(before: dict[str, str], after: dict[str, str]) -> set[str]:
    return {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}


@dataclass
class Case:
    name: str
    prepare: Callable[[Path], list[str]]     # sets the scene under tmp, returns the CLI argv
    code: int
    message: str                             # regex the single `error:` line must match
    may_change: str = r"$^"                  # regex of relative paths allowed to change
    patch: Callable[[pytest.MonkeyPatch, Path], None] | None = None
    after: Callable[[Path], None] | None = None  # extra checks


def build_argv(tmp: Path, out: str = "out", *more: str) -> list[str]:
    return ["build", str(tmp / "raw"), str(tmp / out), "--shard-size", "4", "--workers", "1",
            "--quiet", *more]


def first_image(tmp: Path) -> Path:
    return sorted((tmp / "raw" / "1").glob("SAR_*.png"))[0]


def png_bytes(shape=(20, 20)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full(shape, 7, np.uint8), mode="L").save(buf, format="PNG")
    return buf.getvalue()


# -------------------------------------------------------------- raw folder (build)
def corrupt_idat(tmp: Path) -> list[str]:
    p = first_image(tmp)
    data = bytearray(p.read_bytes())
    i = data.index(b"IDAT") + 8
    data[i:i + 16] = b"\xff" * 16
    p.write_bytes(bytes(data))
    return build_argv(tmp)


def zero_bytes(tmp: Path) -> list[str]:
    first_image(tmp).write_bytes(b"")
    return build_argv(tmp)


def truncated(tmp: Path) -> list[str]:
    p = first_image(tmp)
    p.write_bytes(p.read_bytes()[:60])
    return build_argv(tmp)


def text_as_png(tmp: Path) -> list[str]:
    first_image(tmp).write_text("hello, not an image\n")
    return build_argv(tmp)


def bomb_header(tmp: Path) -> list[str]:
    """A 60000 x 60000 header (3.6 gigapixels) on a tiny file, not the split's first chip."""
    data = bytearray(png_bytes())
    data[16:24] = (60000).to_bytes(4, "big") * 2
    import zlib
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")
    first_image(tmp).write_bytes(bytes(data))
    return build_argv(tmp)


def renamed(name: str) -> Callable[[Path], list[str]]:
    def prepare(tmp: Path) -> list[str]:
        p = first_image(tmp)
        p.rename(p.with_name(name))
        return build_argv(tmp)
    return prepare


def foreign_out(tmp: Path) -> list[str]:
    (tmp / "out").mkdir()
    (tmp / "out" / "thesis.tex").write_text("precious")
    return build_argv(tmp)


# -------------------------------------------------------------- build state (.build records)
def planted_record(path: str) -> Callable[[Path], list[str]]:
    def prepare(tmp: Path) -> list[str]:
        shutil.copytree(tmp / "built", tmp / "out")
        rec = tmp / "out" / ".build" / "x" / "a.json"
        rec.parent.mkdir(parents=True)
        rec.write_text(json.dumps({"path": path.format(tmp=tmp)}))
        return build_argv(tmp, "out", "--seed", "1", "--split", "extra")
    return prepare


def split_folder_links_out(tmp: Path) -> list[str]:
    (tmp / "out" / ".build").mkdir(parents=True)   # an interrupted build's OUT
    (tmp / "outside").mkdir()
    (tmp / "outside" / "train-c00-00009.tar").write_bytes(b"someone else's")
    (tmp / "out" / "train").symlink_to(tmp / "outside")
    return build_argv(tmp)


# -------------------------------------------------------------- index.json and shards (verify)
def edit_index(edit: Callable[[dict, Path], None], reseal: bool = False,
               command: str = "verify") -> Callable[[Path], list[str]]:
    def prepare(tmp: Path) -> list[str]:
        out = shutil.copytree(tmp / "built", tmp / "out")
        path = out / "index.json"
        d = json.loads(path.read_text())
        edit(d, out)
        path.write_text(seal(d) if reseal else json.dumps(d))
        return [command, str(out)]
    return prepare


def swap_classes(d: dict, out: Path) -> None:
    d["classes"] = d["classes"][::-1]


def val_is_train(d: dict, out: Path) -> None:
    d["splits"]["val"] = d["splits"]["train"]


def relabel(d: dict, out: Path) -> None:
    d["splits"]["val"]["samples"]["label"][0] = 1


def shard_path_to(target: str) -> Callable[[dict, Path], None]:
    def edit(d: dict, out: Path) -> None:
        d["splits"]["val"]["shards"][0]["path"] = target.format(out=out)
    return edit


def shard_bytes(change: Callable[[bytes], bytes]) -> Callable[[Path], list[str]]:
    def prepare(tmp: Path) -> list[str]:
        out = shutil.copytree(tmp / "built", tmp / "out")
        shard = sorted((out / "val").glob("*.tar"))[0]
        shard.write_bytes(change(shard.read_bytes()))
        return ["verify", str(out)]
    return prepare


def flip_byte(data: bytes) -> bytes:
    return data[:700] + bytes([data[700] ^ 1]) + data[701:]


def traversal_member(tmp: Path) -> list[str]:
    """A shard replaced by a tar whose member is `../../x.png`, checksums fixed in the index."""
    out = shutil.copytree(tmp / "built", tmp / "out")
    path = out / "index.json"
    d = json.loads(path.read_text())
    info = d["splits"]["val"]["shards"][0]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        data = png_bytes()
        member = tarfile.TarInfo("../../x.png")
        member.size = len(data)
        tf.addfile(member, io.BytesIO(data))
    (out / info["path"]).write_bytes(buf.getvalue())
    info["bytes"], info["sha256"] = len(buf.getvalue()), hashlib.sha256(buf.getvalue()).hexdigest()
    path.write_text(seal(d))
    return ["verify", str(out)]


def dali_index_text(edit: Callable[[str], str]) -> Callable[[Path], list[str]]:
    def prepare(tmp: Path) -> list[str]:
        out = shutil.copytree(tmp / "built", tmp / "out")
        idx = sorted((out / "val").glob("*.idx"))[0]
        idx.write_text(edit(idx.read_text()))
        return ["verify", str(out)]
    return prepare


def space_in_idx_name(text: str) -> str:
    """What the builder used to write for a key with a space: `png 1024 97 SAR 1.png`."""
    lines = text.split("\n")
    lines[1] = re.sub(r"(SAR)_(\d+)", r"\1 \2", lines[1])
    return "\n".join(lines)


# -------------------------------------------------------------- the environment (patched)
def refuse_writes(folder: str, err: int, exact: bool = False,
                  opens: bool = True) -> Callable[[pytest.MonkeyPatch, Path], None]:
    """Every file created under tmp/<folder> (only in it, with `exact`; only atomic writes,
    without `opens`) fails with `err` (read-only, full disk): chmod does not stop root, and a
    real full disk is not at hand."""
    def patch(monkeypatch: pytest.MonkeyPatch, tmp: Path) -> None:
        import tempfile

        real_open, real_mkstemp = os.open, tempfile.mkstemp
        root = str(tmp / folder)
        hit = (lambda d: str(d) == root) if exact else (lambda d: str(d).startswith(root))

        def fake_open(path, flags, *a, **k):
            if opens and hit(Path(path).parent) and flags & os.O_CREAT:
                raise OSError(err, os.strerror(err), str(path))
            return real_open(path, flags, *a, **k)

        def fake_mkstemp(*a, dir=None, **k):
            if hit(dir):
                raise OSError(err, os.strerror(err), str(dir))
            return real_mkstemp(*a, dir=dir, **k)
        monkeypatch.setattr(os, "open", fake_open)
        monkeypatch.setattr(tempfile, "mkstemp", fake_mkstemp)
    return patch


def disk_full_in_shard(monkeypatch: pytest.MonkeyPatch, tmp: Path) -> None:
    from shards import writer

    def full(plan, f, *a, **k):
        f.write(b"\0" * 1024)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(writer, "write_samples", full)


def no_tmp_left(tmp: Path) -> None:
    assert not [p for p in tmp.rglob("*") if p.name.endswith(".tmp")]


def restartable(tmp: Path) -> None:
    """A failed build leaves no index and no partial file; finished shards stay for a rerun."""
    no_tmp_left(tmp)
    assert not (tmp / "out" / "index.json").exists() and not (tmp / "out" / ".lock").exists()


def victim_intact(tmp: Path) -> None:
    assert (tmp / "victim.txt").read_text() == "do not delete"


KEPT = {"may_change": r"^out(/|$)", "after": restartable}  # what a failed build may leave


def refuse_mkdir(where: Path):
    real = Path.mkdir

    def mkdir(self, *a, **k):
        if str(self).startswith(str(where)):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        return real(self, *a, **k)
    return mkdir


CASES = [
    Case("corrupt IDAT", corrupt_idat, 2, r"raw/1/SAR_\d+\.png: ", **KEPT),
    Case("zero-byte png", zero_bytes, 2, r"raw/1/SAR_\d+\.png: ", **KEPT),
    Case("truncated png", truncated, 2, r"raw/1/SAR_\d+\.png: ", **KEPT),
    Case("text file named .png", text_as_png, 2, r"raw/1/SAR_\d+\.png: ", **KEPT),
    Case("decompression-bomb header", bomb_header, 2, r"raw/1/SAR_\d+\.png: ", **KEPT),
    Case("key with a space", renamed("SAR_7 b.png"), 2,
         r"raw/1/SAR_7 b\.png: .*'SAR_7 b'.*(whitespace|other than letters, digits)"),
    Case("key with a newline", renamed("SAR_7\nb.png"), 2, r"raw/1/SAR_7\\nb\.png: .*'SAR_7\\nb'"),
    Case("key with a dot", renamed("SAR_7.b.png"), 2, r"raw/1/SAR_7\.b\.png: .*(dot|'\.')"),
    Case("OUT holds something else", foreign_out, 2, r"out: folder is not empty and holds no shard index"),
    Case("planted record ../../victim", planted_record("../../victim.txt"), 2,
         r"out/\.build/x/a\.json: recorded path '\.\./\.\./victim\.txt' points outside", after=victim_intact),
    Case("planted record absolute path", planted_record("{tmp}/victim.txt"), 2,
         r"out/\.build/x/a\.json: recorded path '/.*victim\.txt' points outside", after=victim_intact),
    Case("planted record: a file inside OUT", planted_record("index.json"), 2,
         r"a\.json: recorded path 'index\.json' is not a shard file"),
    Case("split folder links outside OUT", split_folder_links_out, 2, r"out/train: split folder 'train' leads outside .*out through a link; refused",
         may_change=r"^out/\.build$"),
    Case("index: class names swapped", edit_index(swap_classes), 2, r"out/index\.json: index changed"),
    Case("index: val replaced by train", edit_index(val_is_train), 2, r"out/index\.json: index changed"),
    Case("index: label edited (stats)", edit_index(relabel, command="stats"), 2, r"index changed"),
    Case("index: label edited, checksum renewed", edit_index(relabel, reseal=True), 2,
         r"sample labels do not match"),
    Case("index: shard path ../", edit_index(shard_path_to("../victim.txt"), reseal=True), 2,
         r"out/index\.json: split 'val': recorded path '\.\./victim\.txt' points outside"),
    Case("index: absolute shard path", edit_index(shard_path_to("{out}/val/x.tar"), reseal=True), 2,
         r"recorded path '/.*' points outside"),
    Case("shard: flipped byte", shard_bytes(flip_byte), 2, r"out/val/val-.*\.tar: sha256 differs"),
    Case("shard: truncated", shard_bytes(lambda b: b[:-512]), 2, r"\.tar: shard is \d+ bytes.*truncated"),
    Case("shard: member ../../x.png", traversal_member, 2, r"\.tar: samples in the tar differ",
         after=lambda tmp: not list(tmp.rglob("x.png")) or pytest.fail("extracted")),
    Case("DALI index: name with a space", dali_index_text(space_in_idx_name), 2,
         r"\.idx: line 2: not groups of <ext> <offset> <size> <name>; DALI cannot read it"),
    Case("DALI index: count too large", dali_index_text(lambda t: t.replace("v1.2 ", "v1.2 9", 1)), 2,
         r"\.idx: \d+ samples announced"),
    Case("DALI index: offset not a block", dali_index_text(lambda t: re.sub(r"png (\d+)", r"png 1\1", t, 1)),
         2, r"\.idx: line 2: bad offset"),
    Case("read-only OUT", build_argv, 2, r"out/\.lock: cannot create the lock file: read-only file system",
         patch=refuse_writes("out", errno.EROFS)),
    Case("read-only OUT (state after the lock)", build_argv, 2,
         r"out/\.build/\w+: cannot create the build state: read-only", **KEPT,
         patch=lambda mp, tmp: mp.setattr(Path, "mkdir", refuse_mkdir(tmp / "out" / ".build"))),
    Case("disk full while writing a shard", build_argv, 2,
         r"out/train/train-c00-00000\.tar\.tmp: cannot write the shard: no space left", **KEPT,
         patch=disk_full_in_shard),
    Case("disk full while writing a DALI index", build_argv, 2,
         r"out/train/train-c00-00000\.idx: cannot write: no space left", **KEPT,
         patch=refuse_writes("out/train", errno.ENOSPC)),
    Case("disk full while writing index.json", build_argv, 2,
         r"out/index\.json: cannot write: no space left", **KEPT,
         patch=refuse_writes("out", errno.ENOSPC, exact=True, opens=False)),
]


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("hostile")
    write_raw(base / "raw", counts=COUNTS)
    assert main(build_argv(base, "built")) == 0
    return base


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_input(case: Case, scene: Path, tmp_path: Path, monkeypatch, capsys):
    shutil.copytree(scene / "raw", tmp_path / "raw")
    shutil.copytree(scene / "built", tmp_path / "built")
    (tmp_path / "victim.txt").write_text("do not delete")
    argv = case.prepare(tmp_path)
    before = snapshot(tmp_path)
    if case.patch:
        case.patch(monkeypatch, tmp_path)
    code = main(argv)
    monkeypatch.undo()
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if not x.startswith("note: ")]
    diff = changes(before, snapshot(tmp_path))
    record(case.name, code, " / ".join(lines), diff)
    assert code == case.code, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert re.search(case.message, lines[0]), lines[0]
    changed = {p for p in diff if not re.search(case.may_change, p)}
    assert not changed, f"changed: {sorted(changed)}"
    if case.after:
        case.after(tmp_path)
