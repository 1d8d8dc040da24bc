"""shards build: round trip, stratification, determinism, restart after an interruption."""
from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import TINY_COUNTS, write_raw
from shards import writer
from shards.access import SampleReader
from shards.build import build_shards
from shards.errors import DataError
from shards.index import ClassIndex


def raw_files(raw: Path) -> dict[str, tuple[bytes, int]]:
    """key -> (file bytes, label) for every SAR chip of a class-folder raw tree."""
    return {p.stem: (p.read_bytes(), int(p.parent.name)) for p in raw.glob("*/SAR_*.png")}


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_read_back_is_byte_identical(tiny_raw, tiny_shards):
    raw = raw_files(tiny_raw)
    index = ClassIndex.load(tiny_shards)
    assert index.classes == ["0", "1", "2", "3"]
    seen = {}
    for split in index.splits.values():
        reader = SampleReader(split)
        for i in range(len(split)):
            seen[split.keys[i]] = (reader.read(i), reader.label(i))
        reader.close()
    assert seen == raw  # every image exactly once over train + val, bytes and label intact


def test_webdataset_iteration_reads_the_same_samples(tiny_raw, tiny_shards):
    import webdataset as wds

    raw = raw_files(tiny_raw)
    tars = sorted(str(p) for p in tiny_shards.glob("*/*.tar"))
    got = {s["__key__"]: (s["png"], int(s["cls"])) for s in wds.WebDataset(tars, shardshuffle=False)}
    assert got == raw


def test_counts_and_stratification(tiny_shards):
    index = ClassIndex.load(tiny_shards)
    train, val = index.split("train"), index.split("val")
    assert (train.class_counts() + val.class_counts()).tolist() == list(TINY_COUNTS)
    # round(0.2 * n), at least 1 per split: 40 -> 8, 12 -> 2, 6 -> 1, 3 -> 1 (0.6 rounds to 1)
    assert val.class_counts().tolist() == [8, 2, 1, 1]
    assert train.class_counts().tolist() == [32, 10, 5, 2]
    assert not set(train.keys) & set(val.keys)
    for c in range(4):
        assert set(train.labels[train.indices_of(c)]) == {c}


def test_shards_are_class_pure_and_bounded(tiny_shards):
    index = ClassIndex.load(tiny_shards)
    for split in index.splits.values():
        assert {s.label for s in split.shards} == {0, 1, 2, 3}  # every class has a shard
        for j, s in enumerate(split.shards):
            assert 1 <= s.count <= 8
            assert Path(s.path).name == f"{split.name}-c{s.label:02d}-{Path(s.path).stem[-5:]}.tar"
            assert set(split.labels[split.shard == j]) == {s.label}
            assert (tiny_shards / s.path).stat().st_size == s.bytes
    assert len(index.split("train").shards) == 4 + 2 + 1 + 1  # 32 -> 4 shards of 8, 10 -> 2


def test_image_sizes_and_pixel_stats(tiny_raw, tiny_shards):
    split = ClassIndex.load(tiny_shards).split("train")
    pixels = []
    for i, key in enumerate(split.keys):
        img = np.asarray(Image.open(next(tiny_raw.glob(f"*/{key}.png"))))
        assert img.shape == (split.height[i], split.width[i])
        pixels.append(img.ravel() / 255)
    pixels = np.concatenate(pixels)
    assert split.pixel_mean == pytest.approx(pixels.mean(), rel=1e-9)
    assert split.pixel_std == pytest.approx(pixels.std(), rel=1e-9)
    assert sum(split.image_sizes.values()) == len(split)


def test_split_depends_on_seed_only(tiny_raw, tmp_path):
    a = build_shards(tiny_raw, tmp_path / "a", val_fraction=0.2, seed=0, shard_size=8, workers=1)
    b = build_shards(tiny_raw, tmp_path / "b", val_fraction=0.2, seed=0, shard_size=8, workers=1)
    c = build_shards(tiny_raw, tmp_path / "c", val_fraction=0.2, seed=1, shard_size=8, workers=1)
    assert tree(tmp_path / "a") == tree(tmp_path / "b")
    assert a.split("val").keys == b.split("val").keys != c.split("val").keys


def test_parallel_build_equals_serial(tiny_raw, tmp_path):
    build_shards(tiny_raw, tmp_path / "one", shard_size=8, workers=1)
    build_shards(tiny_raw, tmp_path / "two", shard_size=8, workers=2)
    assert tree(tmp_path / "one") == tree(tmp_path / "two")


def test_interrupted_build_resumes_to_the_same_result(tiny_raw, tmp_path, monkeypatch):
    kw = dict(val_fraction=0.2, seed=0, shard_size=8, workers=1)
    build_shards(tiny_raw, tmp_path / "ref", **kw)
    out = tmp_path / "out"
    real = writer.write_shard
    calls = []

    def crash_after_3(*args):
        if len(calls) == 3:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C during the fourth shard
        calls.append(args[0].path)
        return real(*args)

    monkeypatch.setattr(writer, "write_shard", crash_after_3)
    with pytest.raises(KeyboardInterrupt):
        build_shards(tiny_raw, out, **kw)
    assert not (out / "index.json").exists()  # no index pointing at a partial set of shards
    assert sorted(p.name for p in out.glob("*/*.tar")) == sorted(Path(c).name for c in calls)
    # A shard finished before the crash but damaged afterwards must be rebuilt, not reused.
    damaged = out / calls[0]
    damaged.write_bytes(damaged.read_bytes()[:-1024])

    rebuilt = []
    monkeypatch.setattr(writer, "write_shard", lambda *a: rebuilt.append(a[0].path) or real(*a))
    build_shards(tiny_raw, out, **kw)
    assert tree(out) == tree(tmp_path / "ref")  # byte-identical index, shards, DALI files
    assert set(calls[1:]).isdisjoint(rebuilt) and calls[0] in rebuilt
    assert not (out / ".build").exists()


def test_stale_partial_files_are_cleaned(tiny_raw, tmp_path):
    out = tmp_path / "out"
    (out / ".build" / "0123").mkdir(parents=True)  # state of some other, abandoned build
    (out / "train").mkdir()
    (out / "train" / "train-c00-00000.tar.tmp").write_bytes(b"partial")
    (out / "train" / "train-c09-00000.tar").write_bytes(b"orphan")
    build_shards(tiny_raw, out, shard_size=8, workers=1)
    assert not list(out.rglob("*.tmp")) and not (out / "train" / "train-c09-00000.tar").exists()
    assert not (out / ".build").exists()


def test_rebuilding_the_same_dataset_is_a_no_op(tiny_raw, tiny_shards):
    before = tree(tiny_shards)
    mtime = (tiny_shards / "index.json").stat().st_mtime_ns
    build_shards(tiny_raw, tiny_shards, val_fraction=0.2, seed=0, shard_size=8, workers=1)
    assert tree(tiny_shards) == before
    assert (tiny_shards / "index.json").stat().st_mtime_ns == mtime


def write_flat(folder: Path, labels: dict[int, int], csv: Path, seed: int = 5) -> None:
    """A flat test folder SAR_<id>.png plus its CSV image_id,class_id."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in labels:
        Image.fromarray(rng.integers(0, 255, (57, 58), dtype=np.uint8)).save(folder / f"SAR_{i}.png")
    (folder / "EO_1000.png").write_bytes(b"ignored")
    csv.write_text("image_id,class_id\n" + "".join(f"{i},{c}\n" for i, c in labels.items()))


def test_add_test_split_with_labels(tiny_shards, tmp_path):
    labels = {1000 + i: i % 4 for i in range(10)}
    write_flat(tmp_path / "test_images", labels, tmp_path / "test.csv")
    index = build_shards(tmp_path / "test_images", tiny_shards, split="test",
                         labels_csv=tmp_path / "test.csv", shard_size=8, workers=1)
    test = index.split("test")
    assert sorted(index.splits) == ["test", "train", "val"]
    assert test.class_counts().tolist() == [3, 3, 2, 2]
    reader = SampleReader(test)
    for i, key in enumerate(test.keys):
        assert reader.read(i) == (tmp_path / "test_images" / f"{key}.png").read_bytes()
        assert reader.label(i) == labels[int(key[4:])]
    reloaded = ClassIndex.load(tiny_shards)
    assert len(reloaded.split("train")) == 49 and len(reloaded.split("test")) == 10
    # Same split again: nothing to do. Different content under the same name: refused.
    build_shards(tmp_path / "test_images", tiny_shards, split="test",
                 labels_csv=tmp_path / "test.csv", shard_size=8, workers=1)
    (tmp_path / "test2.csv").write_text((tmp_path / "test.csv").read_text().replace(",0\n", ",1\n"))
    with pytest.raises(DataError, match="already holds split 'test'"):
        build_shards(tmp_path / "test_images", tiny_shards, split="test",
                     labels_csv=tmp_path / "test2.csv", shard_size=8, workers=1)


def test_split_with_different_classes_is_refused(tiny_shards, tmp_path):
    before = tree(tiny_shards)
    other = write_raw(tmp_path / "other", counts=(3, 3, 3))
    with pytest.raises(DataError, match="differ from those of") as e:
        build_shards(other, tiny_shards, split="test", shard_size=8, workers=1)
    assert str(e.value).startswith(str(other.resolve()))
    assert tree(tiny_shards) == before


def test_named_class_folders_keep_sorted_order(tmp_path):
    raw = write_raw(tmp_path / "raw", counts=(3, 4))
    (raw / "0").rename(raw / "van")
    (raw / "1").rename(raw / "bus")
    index = build_shards(raw, tmp_path / "out", shard_size=8, workers=1, quiet=True)
    assert index.classes == ["bus", "van"]
    assert (index.split("train").class_counts() + index.split("val").class_counts()).tolist() == [4, 3]


def test_sample_reader_pickles_and_reopens(tiny_shards):
    split = ClassIndex.load(tiny_shards).split("val")
    reader = SampleReader(split)
    first = reader.read(0)
    clone = pickle.loads(pickle.dumps(reader))  # as a DataLoader worker receives it
    assert clone.read(0) == first and clone.read(len(split) - 1)
    Image.open(io.BytesIO(first)).verify()


def test_dali_reads_shards_with_our_index_files(tiny_raw, tiny_shards):
    dali = pytest.importorskip("nvidia.dali")
    from nvidia.dali import fn

    raw = raw_files(tiny_raw)
    split = ClassIndex.load(tiny_shards).split("train")
    tar = tiny_shards / split.shards[0].path
    count = split.shards[0].count

    @dali.pipeline_def(batch_size=count, num_threads=1, device_id=None)
    def pipe():
        png, cls = fn.readers.webdataset(paths=[str(tar)], index_paths=[str(tar.with_suffix(".idx"))],
                                         ext=["png", "cls"], missing_component_behavior="error")
        return png, cls

    p = pipe()
    p.build()
    png, cls = p.run()
    got = [(bytes(np.asarray(png[i])), int(bytes(np.asarray(cls[i])))) for i in range(count)]
    assert got == [raw[k] for k in split.keys[:count]]


def test_abandoned_build_of_other_options_is_discarded(tiny_raw, tmp_path, monkeypatch):
    out = tmp_path / "out"
    real = writer.write_shard
    calls = []

    def crash_after_2(*args):
        if len(calls) == 2:
            raise RuntimeError("power cut")
        calls.append(args[0].path)
        return real(*args)

    monkeypatch.setattr(writer, "write_shard", crash_after_2)
    with pytest.raises(RuntimeError):
        build_shards(tiny_raw, out, seed=0, shard_size=4, workers=1)
    monkeypatch.setattr(writer, "write_shard", real)
    build_shards(tiny_raw, out, seed=1, shard_size=8, workers=1)  # the user changed their mind
    build_shards(tiny_raw, tmp_path / "ref", seed=1, shard_size=8, workers=1)
    assert tree(out) == tree(tmp_path / "ref")


def test_interrupted_new_split_keeps_the_old_index_valid(tiny_shards, tmp_path, monkeypatch):
    from shards.verify import verify

    before = (tiny_shards / "index.json").read_bytes()
    write_flat(tmp_path / "test_images", {1000 + i: i % 4 for i in range(10)}, tmp_path / "t.csv")
    kw = dict(split="test", labels_csv=tmp_path / "t.csv", shard_size=2, workers=1)

    def crash(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(writer, "write_shard", crash)
    with pytest.raises(KeyboardInterrupt):
        build_shards(tmp_path / "test_images", tiny_shards, **kw)
    assert (tiny_shards / "index.json").read_bytes() == before
    assert verify(tiny_shards).samples == 61  # the old index still describes intact shards
    monkeypatch.undo()
    assert len(build_shards(tmp_path / "test_images", tiny_shards, **kw).split("test")) == 10
    assert verify(tiny_shards).samples == 71


def test_without_dali_index(tiny_raw, tmp_path):
    from shards.verify import verify

    build_shards(tiny_raw, tmp_path / "out", shard_size=8, workers=1, dali_index=False)
    assert not list((tmp_path / "out").rglob("*.idx"))
    assert verify(tmp_path / "out").dali_indexes == 0
