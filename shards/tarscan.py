"""Where the members of a finished tar shard lie, and DALI's index file for it.

DALI's `readers.webdataset(index_paths=...)` reads one index file per tar, the format its own
`wds2idx` tool writes: a first line `v1.2 <samples>`, then one line per sample holding, for
each component, `<ext> <data offset> <size> <member name>`. The offset is that of the
member's data (header offset + 512), which is always a multiple of 512.

DALI reads that file as whitespace-separated tokens and splits a member name at its first `.`
into key and extension, so a key must hold no whitespace, no `.` and no `/`; we also keep keys
to printable ASCII short enough for a plain tar header (no extended headers for DALI to skip).
`parse_dali_index` reads an index file the way DALI does, for `verify`.
"""
from __future__ import annotations

import tarfile
from dataclasses import dataclass
from pathlib import Path

DALI_INDEX_VERSION = "v1.2"
TAR_NAME_MAX = 100  # bytes of a member name in a plain (ustar) tar header
LONGEST_EXT = 8     # "eo.png" plus a margin: every member name of a key must fit
TAR_BLOCK = 512


def key_problem(key: str) -> str | None:
    """Why `key` cannot be a sample key in a tar shard and its DALI index, or None."""
    if not key:
        return "it is empty"
    bad = sorted({c for c in key if not (c.isascii() and c.isprintable()) or c.isspace()})
    if bad:
        return f"it holds {', '.join(repr(c) for c in bad)} (whitespace, control or non-ASCII)"
    for c, why in ((".", "it holds '.', which splits key from extension"),
                   ("/", "it holds '/'"), ("\\", "it holds '\\'")):
        if c in key:
            return why
    if len(key) + 1 + LONGEST_EXT > TAR_NAME_MAX:
        return f"it is {len(key)} characters long (at most {TAR_NAME_MAX - 1 - LONGEST_EXT})"
    return None


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


def parse_dali_index(text: str, where: Path) -> list[list[Member]]:
    """The samples of a DALI index file as DALI reads it: a `v1.2 <count>` line, then per
    sample one line of `<ext> <offset> <size> <name>` groups of whitespace-separated tokens.
    ValueError (naming `where` and the line) for anything DALI would refuse."""
    lines = text.split("\n")
    head = lines[0].split()
    if len(head) < 2 or head[0] != DALI_INDEX_VERSION or not head[1].isdigit() or int(head[1]) < 1:
        raise ValueError(f"{where}: line 1 is not `{DALI_INDEX_VERSION} <samples>`")
    count = int(head[1])
    if len(lines) < count + 1:
        raise ValueError(f"{where}: {count} samples announced, {len(lines) - 1} lines follow")
    samples = []
    for n, line in enumerate(lines[1:count + 1], start=2):
        tokens = line.split()
        if not tokens or len(tokens) % 4:
            raise ValueError(f"{where}: line {n}: not groups of <ext> <offset> <size> <name>")
        parts = []
        for ext, offset, size, name in zip(*[iter(tokens)] * 4):
            if not (offset.isdigit() and size.isdigit()) or int(offset) % TAR_BLOCK:
                raise ValueError(f"{where}: line {n}: bad offset or size for {name}")
            if name.split(".", 1)[1:] != [ext]:
                raise ValueError(f"{where}: line {n}: extension {ext} does not match {name}")
            parts.append(Member(name, int(offset), int(size)))
        samples.append(parts)
    if any(x.strip() for x in lines[count + 1:]):
        raise ValueError(f"{where}: text after the {count} announced samples")
    return samples
