"""PNG bytes of a split -> uint8 chips at the input size, every modality stacked as channels.

The one decoder behind the CPU reader, the resident cache and `predict`, so all give the same
pixels. The split's first (primary) modality is centre-cropped or edge-padded to S×S, as
always; further modalities (the EO partner of a paired SAR+EO sample) are resized to S×S, since
their chips come at another size and scale. Channels follow the split's modality order
(SAR+EO: [sar, eo_r, eo_g, eo_b]).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
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


def resize_to(img: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 [C,H,W] -> uint8 [C,S,S], bilinear with antialiasing (a secondary modality)."""
    if img.shape[-2:] == (size, size):
        return img
    out = F.interpolate(img[None].float(), size=(size, size), mode="bilinear", antialias=True,
                        align_corners=False)[0]
    return out.round_().clamp_(0, 255).to(torch.uint8)


def chip_into(out: np.ndarray, members: list[np.ndarray], size: int,
              windows: dict | None = None) -> np.ndarray:
    """Stack one sample's decoded members (uint8 [c,H,W] each, primary first) into out [C,S,S]:
    the primary centre-cropped / edge-padded, the others resized."""
    img = members[0]
    key = img.shape[1:]
    if windows is None or key not in windows:
        pair = (window(img.shape[1], size), window(img.shape[2], size))
        if windows is None:
            windows = {}
        windows[key] = pair
    rows, cols = windows[key]
    at = img.shape[0]
    np.take(img.take(rows, axis=1), cols, axis=2, out=out[:at])
    for other in members[1:]:
        out[at:at + other.shape[0]] = resize_to(torch.from_numpy(other), size).numpy()
        at += other.shape[0]
    return out


class ChipDecoder:
    """`decoder(ids)` -> uint8 [B,C,S,S] for sample ids of one split. Picklable (the reader
    re-opens its shards lazily in each worker)."""

    def __init__(self, data: OpenSplit, size: int) -> None:
        self.data, self.size = data, size
        self.modalities = list(data.split.modalities)
        self.channels = [data.split.stats(m).channels for m in self.modalities]
        self.reader = SampleReader(data.split)
        self._windows: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}

    def __call__(self, ids: np.ndarray) -> torch.Tensor:
        """The hot path of the reader: per sample one read, one libpng decode and two numpy
        takes straight into the batch buffer (torch indexing costs several times more here)."""
        out = np.empty((len(ids), sum(self.channels), self.size, self.size), dtype=np.uint8)
        for k, i in enumerate(np.asarray(ids).tolist()):
            chip_into(out[k], [self.decode_one(i, m) for m in self.modalities], self.size, self._windows)
        return torch.from_numpy(out)

    def decode_one(self, i: int, modality: str | None = None) -> np.ndarray:
        """uint8 [C,H,W] of one member of sample i; DataError naming its shard and key if it is
        not a PNG of the split's channel count."""
        modality = modality or self.modalities[0]
        data = self.reader.read(i, modality)
        try:
            img = decode_png(torch.frombuffer(bytearray(data), dtype=torch.uint8)).numpy()
        except RuntimeError as e:
            raise DataError(f"{self.data.sample_where(i)}: cannot decode PNG ({e})") from None
        want = self.channels[self.modalities.index(modality)]
        if img.ndim != 3 or img.shape[0] != want or img.dtype != np.uint8:
            kind = "8-bit grayscale" if want == 1 else f"8-bit with {want} channels"
            raise DataError(f"{self.data.sample_where(i)}: {modality} member decoded to {img.dtype} "
                            f"{tuple(img.shape)}, expected {kind}")
        return img
