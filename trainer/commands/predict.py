"""`evaluate` and `predict` on a finished run: the last stage's model or one of its post-hoc
classifiers (`--classifier`), with the recipe's TTA, scored by the same `Scorer` as training."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from datasets.folder import FolderListing, Preprocess, list_chips, load_chips
from datasets.stream_spec import Normalizer
from shards.atomic import write_atomic
from trainer.train import checkpoint
from trainer.spec.config import load_run_config
from trainer.errors import ConfigError
from trainer.evaluate.evaluator import Evaluator
from trainer.posthoc.fit import load_classifier
from trainer.preflight import Setup, prepare
from trainer.run import make_evaluator, stage_dir
from trainer.evaluate.ood import SCORES, ood_score
from trainer.evaluate.scoring import Scorer, score_views
from trainer.summary import print_table

MODEL = "model"


def final_stage_dir(run_dir: Path, cfg: dict) -> Path:
    i = len(cfg["stages"]) - 1
    folder = stage_dir(run_dir, cfg["stages"][i]["name"], i)
    if not (folder / "model.pt").is_file():
        raise ConfigError(f"{folder / 'model.pt'}: missing; the run has not finished its last stage")
    return folder


def load_scorer(run_dir: Path, classifier: str = MODEL) -> tuple[Scorer, dict]:
    """The final model with `classifier` (model, crt, ncm, tau_norm, lws) and the run's TTA."""
    folder = final_stage_dir(run_dir, load_run_config(run_dir))
    model, info = checkpoint.load_weights(folder)
    clf = None if classifier == MODEL else load_classifier(folder, classifier, model.feature_dim,
                                                           info["num_classes"])
    views = info["tta_views"] if "tta_views" in info else info["tta"]   # run folders before tta views
    return Scorer(model, clf, views, info["num_classes"]).eval(), info


def run_evaluator(run_dir: Path) -> tuple[Setup, Evaluator]:
    """A finished run's shards and evaluation (streams, TTA views, groups) as training had them;
    no trackers, and the run folder is left as it is."""
    cfg = load_run_config(run_dir)
    cfg["run"]["dir"] = str(run_dir)   # where it is now (a moved folder too)
    setup = prepare(cfg, trackers=False, check_run=False)
    return setup, make_evaluator(setup)


def evaluate_run(run_dir: str | Path, split: str = "val", as_json: bool = False,
                 classifier: str = MODEL) -> int:
    run_dir = Path(run_dir)
    setup, evaluator = run_evaluator(run_dir)
    if split not in setup.index.splits:
        raise ConfigError(f"--split {split}: the shards at {setup.cfg['data']['shards']} have splits "
                          f"{', '.join(setup.index.splits)}")
    scorer, _ = load_scorer(run_dir, classifier)
    scorer.to(setup.accelerator.device)
    ev = evaluator.evaluate(scorer.model, split, scorer.classifier)
    final = {split: ev}
    if "ood" in setup.index.splits and split != "ood":
        ev["ood"] = final["ood"] = evaluator.ood(scorer.model, split, {classifier: scorer.classifier})
    if as_json:
        print(json.dumps(ev))
    elif setup.main:
        print_table({f"{run_dir.name}/{classifier}": {"final": final}})
    return 0


def run_normalizer(info: dict) -> Normalizer:
    """The run's per-channel normalisation (card.json; older runs: one mean and std)."""
    if "normalize" in info:
        mean, std = info["normalize"]["mean"], info["normalize"]["std"]
        return Normalizer(mean, std) if isinstance(mean, float) else Normalizer(tuple(mean), tuple(std))
    return Normalizer(info["pixel_mean"], info["pixel_std"] or 1.0)


def predict(run_dir: str | Path, images: str | Path, out: str | Path, batch_size: int = 256,
            classifier: str = MODEL, score: str | None = None, eo_images: str | Path | None = None) -> int:
    """A CSV of one row per chip, in natural order. NTIRE names (SAR_<id>.png): results.csv in
    the challenge format `image_id,class_id` (image_id from SAR_<id>.png, or EO_<id>.png for an
    EO-only model); any other folder of images (read recursively): `file,class_id,class_name`.
    Plus a `score` column (trainer.evaluate.ood: higher = more likely a known class) when
    `score` is given. A SAR+EO model reads EO_<id>.png from `eo_images` (default: the same
    folder). Files are read as the build read the training chips (datasets/folder.py)."""
    if score is not None and score not in SCORES:
        raise ConfigError(f"--score: unknown {score!r}; valid: {', '.join(SCORES)}")
    scorer, info = load_scorer(Path(run_dir), classifier)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    scorer.to(device)
    norm = run_normalizer(info)
    modalities = info.get("modalities", ["sar"])
    folders = {m: Path(eo_images) if (m == "eo" and eo_images and m != modalities[0]) else Path(images)
               for m in modalities}
    found = list_chips(folders)
    prep = Preprocess.from_info(info)
    names = [str(c) for c in info.get("class_names") or []]
    channels = info["model"].get("modality_channels") or [info.get("channels", 1)]
    head = "image_id,class_id" if found.ntire else "file,class_id,class_name"
    rows = [head + (",score" if score else "")]
    with torch.no_grad():
        for start in range(0, len(found.rows), batch_size):
            chunk = found.rows[start:start + batch_size]
            x = norm.from_uint8(load_chips([f for _, f in chunk], info["input_size"], channels, prep)).to(device)
            scores, mean_logits = score_views(scorer.model, [scorer.classifier], x, scorer.views, mean_logits=True)[0]
            preds = scores.argmax(1).cpu().numpy()
            extra = ood_score(mean_logits.cpu().numpy(), score) if score else [None] * len(chunk)
            rows += [result_row(name, int(c), names, found.ntire) + (f",{s:.6g}" if score else "")
                     for (name, _), c, s in zip(chunk, preds, extra)]
    write_atomic(Path(out), "\n".join(rows) + "\n")
    print(f"{out}: {len(found.rows)} predictions ({classifier})" + skipped_note(found), file=sys.stderr)
    return 0


def result_row(name: str, class_id: int, names: list[str], ntire: bool) -> str:
    if ntire:
        return f"{name},{class_id}"
    label = names[class_id] if class_id < len(names) else str(class_id)
    return ",".join(csv_field(v) for v in (name, str(class_id), label))


def csv_field(value: str) -> str:
    """Quoted where a file or class name holds a comma, quote or line break."""
    if any(ch in value for ch in ',"\n\r'):
        return '"' + value.replace('"', '""') + '"'
    return value


def skipped_note(found: FolderListing) -> str:
    """`; ignored 2 files that are not chips (e.g. notes.txt); 1 name collision: ...`."""
    note = ""
    if found.ignored:
        note += (f"; ignored {len(found.ignored)} files that are not chips "
                 f"(e.g. {', '.join(p.name for p in found.ignored[:3])})")
    if found.collisions:
        skipped, kept = found.collisions[0]
        note += (f"; {len(found.collisions)} name collision(s) skipped, e.g. {skipped.name} "
                 f"(same id as {kept.name}, which was read)")
    return note
