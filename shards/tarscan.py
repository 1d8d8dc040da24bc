"""Where the members of a finished tar shard lie, and DALI's index file for it.

DALI's `readers.webdataset(index_paths=...)` reads one index file per tar, the format its own
`wds2idx` tool writes: a first line `v1.2 <samples>`, then one line per sample holding, for
each component, `<ext> <data offset> <size> <member name>`. The offset is that of the
member's data (header offset + 512), which is always a multiple of 512.
"""
from __future__ import annotations

import tarfile
from dataclasses import dataclass
from pathlib import Path

DALI_INDEX_VERSION = "v1.2"


@dataclass(frozen=True)
class Member:
    name: str
    offset: int  # of the data, in bytes from the start of the tar
    size: int

    @property
    def key(self) -> str:
        return self.name.split(".", 1)[0]

    @property
    def ext(self) -> str:
        return self.name.split(".", 1)[1] if "." in self.name else ""


def scan_members(path: Path) -> list[Member]:
    """Regular-file members of a tar in archive order (tarfile reads only the headers)."""
    with tarfile.open(path, "r:") as tf:
        return [Member(m.name, m.offset_data, m.size) for m in tf if m.isfile()]


def group_samples(members: list[Member]) -> list[tuple[str, list[Member]]]:
    """Consecutive members with the same key form one sample, as WebDataset groups them."""
    samples: list[tuple[str, list[Member]]] = []
    for m in members:
        if samples and samples[-1][0] == m.key:
            samples[-1][1].append(m)
        else:
            samples.append((m.key, [m]))
    return samples


def dali_index_text(members: list[Member]) -> str:
    samples = group_samples(members)
    lines = [f"{DALI_INDEX_VERSION} {len(samples)}"]
    for _, parts in samples:
        lines.append(" ".join(f"{m.ext} {m.offset} {m.size} {m.name}" for m in parts))
    return "\n".join(lines) + "\n"


def dali_index_path(tar_path: Path) -> Path:
    return tar_path.with_suffix(".idx")
