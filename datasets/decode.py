"""PNG bytes of a split -> uint8 chips at the input size (centre crop / edge-replicate pad).

The one decoder behind the CPU reader and the resident cache, so both give the same pixels.
"""
from __future__ import annotations

import numpy as np
import torch
from torchvision.io import ImageReadMode  # importing torchvision.io registers torch.ops.image

from datasets.augment import window
from datasets.stream_spec import OpenSplit
from shards.access import SampleReader
from shards.errors import DataError


def decode_png(data: torch.Tensor, mode: ImageReadMode = ImageReadMode.UNCHANGED) -> torch.Tensor:
    """torchvision's PNG decoder, called as the registered op: the Python wrapper adds a usage
    log and a deprecation warning (torchvision 0.29) on every call, ~10% of the reader's time
    on 56 px chips."""
    return torch.ops.image.decode_png(data, mode.value, False)


class ChipDecoder:
    """`decoder(ids)` -> uint8 [B,1,S,S] for sample ids of one split. Picklable (the reader
    re-opens its shards lazily in each worker)."""

    def __init__(self, data: OpenSplit, size: int) -> None:
        self.data, self.size = data, size
        self.reader = SampleReader(data.split)
        self._windows: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}

    def __call__(self, ids: np.ndarray) -> torch.Tensor:
        """The hot path of the reader: per sample one read, one libpng decode and two numpy
        takes straight into the batch buffer (torch indexing costs several times more here)."""
        out = np.empty((len(ids), 1, self.size, self.size), dtype=np.uint8)
        for k, i in enumerate(np.asarray(ids).tolist()):
            img = self.decode_one(i)
            rows, cols = self._window(img.shape[1], img.shape[2])
            np.take(img[0].take(rows, axis=0), cols, axis=1, out=out[k, 0])
        return torch.from_numpy(out)

    def decode_one(self, i: int) -> np.ndarray:
        """uint8 [1,H,W] of sample i; DataError naming its shard and key if it is not a gray PNG."""
        data = self.reader.read(i)
        try:
            img = decode_png(torch.frombuffer(bytearray(data), dtype=torch.uint8)).numpy()
        except RuntimeError as e:
            raise DataError(f"{self.data.sample_where(i)}: cannot decode PNG ({e})") from None
        if img.ndim != 3 or img.shape[0] != 1 or img.dtype != np.uint8:
            raise DataError(f"{self.data.sample_where(i)}: decoded to {img.dtype} {tuple(img.shape)}, "
                            "expected 8-bit grayscale")
        return img

    def _window(self, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
        key = (h, w)
        if key not in self._windows:
            self._windows[key] = (window(h, self.size), window(w, self.size))
        return self._windows[key]
