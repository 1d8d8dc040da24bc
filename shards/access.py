"""Random access to the samples of a split: mmap of the shards, crc32 checked on every read."""
from __future__ import annotations

import mmap
import os
import zlib
from typing import Any

from shards.errors import DataError
from shards.index import MemberColumns, SplitIndex


class SampleReader:
    """`read(i)` returns the PNG bytes of sample i of a split; `read(i, member="eo")` those of
    another modality's member of the same sample (see `shards/members.py`).

    Shards are opened (and their size checked against the index) on first use, so a pickled
    reader re-opens them lazily in each DataLoader worker.
    """

    def __init__(self, split: SplitIndex):
        self.split = split
        self._open: dict[int, tuple[Any, mmap.mmap]] = {}
        self._members: dict[str | None, MemberColumns] = {}

    def __len__(self) -> int:
        return len(self.split)

    @property
    def modalities(self) -> list[str]:
        return list(self.split.modalities)

    def label(self, i: int) -> int:
        return int(self.split.labels[i])

    def _columns(self, member: str | None) -> MemberColumns:
        if member not in self._members:
            self._members[member] = self.split.member(member)  # DataError for an unknown one
        return self._members[member]

    def read(self, i: int, member: str | None = None) -> bytes:
        """Bytes of one member of sample i (default: the first modality's), crc32 checked."""
        s = self.split
        cols = self._columns(member)
        j = int(s.shard[i])
        f, mm = self._shard(j)
        off, size = int(cols.offset[i]), int(cols.size[i])
        # The file may have been truncated since it was mapped: reading past its end would
        # crash the process (SIGBUS) rather than raise, so check first. One fstat is cheap.
        if os.fstat(f.fileno()).st_size != s.shards[j].bytes:
            raise DataError(f"{s.shard_path(j)}: sample {s.keys[i]}: shard changed in size "
                            f"since it was opened")
        data = mm[off:off + size]
        if zlib.crc32(data) != int(cols.crc32[i]):
            what = s.keys[i] if cols.ext == "png" else f"{s.keys[i]}.{cols.ext}"
            raise DataError(f"{s.shard_path(j)}: sample {what}: crc32 mismatch "
                            "(shard corrupted or changed after it was built)")
        return data

    def read_all(self, i: int) -> dict[str, bytes]:
        """Every member of sample i: {modality: bytes}, in modality order."""
        return {m: self.read(i, m) for m in self.split.modalities}

    def _shard(self, j: int) -> tuple[Any, mmap.mmap]:
        if j not in self._open:
            path, info = self.split.shard_path(j), self.split.shards[j]
            try:
                f = open(path, "rb")
            except OSError as e:
                raise DataError(f"{path}: cannot open shard ({e.strerror})") from None
            size = os.fstat(f.fileno()).st_size
            if size != info.bytes:
                f.close()
                raise DataError(f"{path}: shard is {size} bytes, the index says {info.bytes} "
                                "(truncated or changed after it was built)")
            self._open[j] = (f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ))
        return self._open[j]

    def close(self) -> None:
        for f, mm in self._open.values():
            mm.close()
            f.close()
        self._open.clear()

    def __getstate__(self) -> dict[str, Any]:
        return {"split": self.split}  # open files and maps stay in this process

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.split = state["split"]
        self._open = {}
        self._members = {}

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
