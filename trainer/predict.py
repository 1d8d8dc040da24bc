"""`evaluate` and `predict` on a finished run: the last stage's weights, the recipe's TTA."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import torch

from shards.errors import DataError
from shards.atomic import write_atomic
from trainer.config import load_run_config
from trainer.errors import ConfigError, TrainingError

IMAGE_NAME = re.compile(r"^SAR_(\d+)\.png$")


def final_stage_dir(run_dir: Path, cfg: dict) -> Path:
    i = len(cfg["stages"]) - 1
    folder = Path(run_dir) / "stages" / f"{i}-{cfg['stages'][i]['name']}"
    if not (folder / "model.pt").is_file():
        raise ConfigError(f"{folder / 'model.pt'}: missing; the run has not finished its last stage")
    return folder


def load_model(folder: Path, cfg: dict) -> tuple[torch.nn.Module, dict]:
    from trainer.models import build_model

    info = json.loads((folder / "head.json").read_text())
    model = build_model(cfg["model"], info["num_classes"])
    state = torch.load(folder / "model.pt", map_location="cpu", weights_only=True)
    try:
        model.load_state_dict(state)  # the Head adopts the saved class list
    except RuntimeError as e:
        raise TrainingError(f"{folder / 'model.pt'}: weights are from another model: "
                            f"{str(e).splitlines()[0]}") from None
    return model.eval(), info


def evaluate_run(run_dir: str | Path, split: str = "val", as_json: bool = False) -> int:
    from trainer.run import History, Run, evaluate_split, make_accelerator, open_shards, print_table

    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir)
    folder = final_stage_dir(run_dir, cfg)
    index = open_shards(cfg)
    if split not in index.splits:
        raise ConfigError(f"--split {split}: the shards at {cfg['data']['shards']} have splits "
                          f"{', '.join(index.splits)}")
    model, _ = load_model(folder, cfg)
    acc = make_accelerator(cfg, run_dir, trackers=False)
    model.to(acc.device)
    run = Run(cfg, run_dir, acc, index, model, History(run_dir / "history.jsonl", None, False))
    ev = evaluate_split(run, model, split)
    if as_json:
        print(json.dumps(ev))
    elif acc.is_main_process:
        print_table({run_dir.name: {"final": {split: ev}}})
    return 0


def list_images(folder: Path) -> list[tuple[int, Path]]:
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder of SAR_<id>.png images")
    found = sorted((int(m.group(1)), p) for p in folder.iterdir() if (m := IMAGE_NAME.match(p.name)))
    if not found:
        raise DataError(f"{folder}: no SAR_<id>.png images")
    return found


def load_batch(paths: list[Path], size: int, mean: float, std: float) -> torch.Tensor:
    from torchvision.io import ImageReadMode, decode_png, read_file

    from datasets.augment import to_input

    out = []
    for p in paths:
        try:
            img = decode_png(read_file(str(p)), mode=ImageReadMode.GRAY)
        except RuntimeError as e:
            raise DataError(f"{p}: not a readable PNG ({str(e).splitlines()[0]})") from None
        out.append(to_input(img, size))
    x = torch.stack(out).float() / 255.0
    return (x - mean) / std


def predict(run_dir: str | Path, images: str | Path, out: str | Path, batch_size: int = 256) -> int:
    """results.csv in the NTIRE format: image_id,class_id (image_id from SAR_<id>.png)."""
    from trainer.metrics import tta_logits

    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir)
    model, info = load_model(final_stage_dir(run_dir, cfg), cfg)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    found = list_images(Path(images))
    rows = ["image_id,class_id"]
    with torch.no_grad():
        for start in range(0, len(found), batch_size):
            chunk = found[start:start + batch_size]
            x = load_batch([p for _, p in chunk], info["input_size"], info["pixel_mean"], info["pixel_std"]).to(device)
            logits = tta_logits(model, x, info["tta"]) if info["tta"] > 1 else model(x)
            preds = np.asarray(info["classes"])[logits.argmax(1).cpu().numpy()]
            rows += [f"{image_id},{int(c)}" for (image_id, _), c in zip(chunk, preds)]
    write_atomic(Path(out), "\n".join(rows) + "\n")
    print(f"{out}: {len(found)} predictions", file=sys.stderr)
    return 0
