"""A training run: stages in order, checkpoints every epoch, exact resume, metrics.json at the end.

Resume model: the checkpoint holds the stage it was taken in (with that stage's head), the
epoch and batch to continue from, the RNG states (Accelerate) and the history length. A resumed
run re-applies the head transitions up to that stage to a fresh model, loads the state and goes
on; the end-of-stage work (evaluation, post-hoc classifiers, stage files) is re-done from the
checkpointed weights, and it draws no global random numbers, so the result is the same.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from trainer import checkpoint
from trainer.config import (config_differences, head_classes, load_run_config, save_config,
                            write_atomic)
from trainer.errors import ConfigError, TrainingError
from trainer.loop import EpochContext, Outputs, collect, train_epoch
from trainer.stages import (Schedule, apply_head, augment_spec, build_optimizer, make_stream,
                            optim_for, per_rank_batch, sampling_spec, set_trainable)


# ---------------------------------------------------------------- setup
def make_accelerator(cfg: dict, run_dir: Path, trackers: bool = True):
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    cuda = torch.cuda.is_available()
    precision = cfg["optim"]["precision"]
    if precision == "auto":
        precision = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if cuda else "no"
    if not cuda and precision == "fp16":
        raise ConfigError("optim.precision: fp16 needs CUDA; use no or bf16 on the CPU")
    project = ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir))
    # cpu=True without CUDA: otherwise two CPU processes each believe they are rank 0 of 1.
    return Accelerator(cpu=not cuda, mixed_precision=precision, project_config=project,
                       log_with="tensorboard" if trackers else None)


def open_shards(cfg: dict):
    """The shard index; DataError if missing. Checks the recipe's classes against it."""
    from shards.index import ClassIndex

    index = ClassIndex.load(cfg["data"]["shards"])
    for split in ("train", "val"):
        index.split(split)
    n = index.num_classes
    for i, st in enumerate(cfg["stages"]):
        for key, classes in (("sampler.classes", st["sampler"]["classes"]), ("classes", st["classes"])):
            bad = [c for c in classes or [] if not 0 <= c < n]
            if bad:
                raise ConfigError(f"stages.{i}.{key}: classes {bad} are not in the shards at "
                                  f"{cfg['data']['shards']} ({n} classes: {', '.join(index.classes)})")
    return index


def check_specs(cfg: dict) -> None:
    """Sampler, augmentation and loss settings of every stage, before any training."""
    for i, st in enumerate(cfg["stages"]):
        for key, make in (("sampler", sampling_spec), ("augment", augment_spec)):
            try:
                make(st)
            except (ValueError, TypeError) as e:
                raise ConfigError(f"stages.{i}.{key}: {e}") from None


def check_existing_run(cfg: dict, run_dir: Path) -> None:
    """Re-running the same command continues the run; a different recipe is refused."""
    if not (run_dir / "config.yaml").is_file():
        return
    old = load_run_config(run_dir)
    diff = config_differences(old, cfg)
    if diff:
        raise ConfigError(f"{run_dir}: this run folder was started with a different recipe "
                          f"({'; '.join(diff[:5])}); use another run.dir, or `python -m trainer "
                          f"resume {run_dir}` to continue it as it was")


class History:
    """RUN/history.jsonl (main process), truncated on resume to what the checkpoint covers."""

    def __init__(self, path: Path, keep_lines: int | None, enabled: bool) -> None:
        self.path, self.enabled, self.lines = path, enabled, 0
        if not enabled:
            return
        old = path.read_text().splitlines() if path.is_file() else []
        old = old[:keep_lines] if keep_lines is not None else []
        write_atomic(path, "".join(line + "\n" for line in old))
        self.lines = len(old)
        self.file = open(path, "a")

    def write(self, record: dict) -> None:
        if self.enabled:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()
            self.lines += 1

    def close(self) -> None:
        if self.enabled:
            self.file.close()


@dataclass
class Run:
    cfg: dict
    run_dir: Path
    accelerator: object
    index: object
    model: torch.nn.Module
    history: History
    results: list = field(default_factory=list)   # [{"name", "val"}] per finished stage
    fitted: dict = field(default_factory=dict)    # post-hoc classifiers of the last stage
    global_step: int = 0

    @property
    def num_classes(self) -> int:
        return self.index.num_classes

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    def stage_dir(self, i: int) -> Path:
        return self.run_dir / "stages" / f"{i}-{self.cfg['stages'][i]['name']}"

    def log(self, record: dict) -> None:
        self.history.write(record)
        scalars = {f"{record['kind']}/{k}": v for k, v in record.items()
                   if isinstance(v, float) and k not in ("stage", "epoch", "step")}
        self.accelerator.log(scalars, step=record.get("global_step", self.global_step))


# ---------------------------------------------------------------- entry points
def train(cfg: dict) -> int:
    """Train (or continue) the run described by `cfg`. Returns a process exit code."""
    run_dir = Path(cfg["run"]["dir"])
    check_existing_run(cfg, run_dir)
    check_specs(cfg)
    index = open_shards(cfg)
    acc = make_accelerator(cfg, run_dir)
    if acc.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir)
    acc.wait_for_everyone()

    from accelerate.utils import set_seed
    from trainer.models import build_model

    set_seed(cfg["seed"])
    model = build_model(cfg["model"], index.num_classes)
    set_seed(cfg["seed"], device_specific=True)  # each rank its own Shake-Shake draws
    model.to(acc.device)

    progress = checkpoint.read_progress(run_dir)
    if progress is not None and progress.get("done") and (run_dir / "metrics.json").is_file():
        if acc.is_main_process:
            print(f"{run_dir}: already finished", file=sys.stderr)
            print_table({run_dir.name: json.loads((run_dir / "metrics.json").read_text())})
        return 0
    if progress is not None and "stage" not in progress:
        progress = None  # a finished run whose metrics.json was removed: start again
    keep = progress["history_lines"] if progress else None
    history = History(run_dir / "history.jsonl", keep, acc.is_main_process)
    run = Run(cfg, run_dir, acc, index, model, history)
    from trainer.preemption import install

    install()  # SIGTERM/SIGUSR2 set a flag; the loop checkpoints and exits 0 at the next step
    acc.init_trackers("tb", config=_flat_hparams(cfg))
    try:
        stopped = run_stages(run, progress)
        if stopped:
            return 0
        finish(run)
    finally:
        history.close()
        acc.end_training()
    return 0


def resume(run_dir: Path) -> int:
    cfg = load_run_config(Path(run_dir))
    cfg["run"]["dir"] = str(run_dir)
    cfg["run"]["fail_at_step"] = None  # an injected test failure is one-shot
    if checkpoint.read_progress(Path(run_dir)) is None and not (Path(run_dir) / "metrics.json").is_file():
        print(f"{run_dir}: no checkpoint yet, starting from the beginning", file=sys.stderr)
    return train(cfg)


# ---------------------------------------------------------------- stages
def run_stages(run: Run, progress: dict | None) -> bool:
    """All stages from the checkpoint on. Returns True when stopped by preemption."""
    start = progress["stage"] if progress else 0
    for j in range(start):  # the structure (head) the checkpoint was taken with
        apply_head(run.model, run.cfg["stages"][j], run.num_classes)
        run.results.append({"name": run.cfg["stages"][j]["name"],
                            "val": _read_json(run.stage_dir(j) / "val.json")})
    if progress:
        run.global_step = progress["global_step"]
    for i in range(start, len(run.cfg["stages"])):
        here = progress if (progress and progress["stage"] == i) else None
        if run_stage(run, i, here):
            return True
    return False


def run_stage(run: Run, i: int, progress: dict | None) -> bool:
    cfg, acc, st = run.cfg, run.accelerator, run.cfg["stages"][i]
    apply_head(run.model, st, run.num_classes)
    params = set_trainable(run.model, st["train"])
    opt = optim_for(cfg, st)
    acc.free_memory()  # forget the previous stage's model/optimizer (save_state saves all registered)
    model, optimizer = acc.prepare(run.model, build_optimizer(params, opt))
    world, rank = acc.num_processes, acc.process_index
    stream = make_stream(cfg, "train", batch_size=per_rank_batch(cfg["data"]["batch_size"], world, opt["grad_accum"]),
                         sampler=sampling_spec(st), augment=augment_spec(st), seed=cfg["seed"] * 1000 + i,
                         rank=rank, world=world, total_epochs=max(1, st["epochs"]))
    stream.set_epoch(0)
    head = run.model.classifier.classes
    ctx = EpochContext(
        accelerator=acc, model=model, optimizer=optimizer, loss_fn=make_loss(st, head, stream.class_counts, acc.device),
        stream=stream, schedule=Schedule(len(stream), opt["grad_accum"], st["epochs"], opt["warmup_epochs"]),
        opt=opt, part=st["train"], to_full=lambda z: run.model.classifier.to_full_logits(z, run.num_classes),
        stage_index=i,
        stage_name=st["name"], num_workers=cfg["data"]["num_workers"], log_every=cfg["run"]["log_every"],
        on_log=run.log, should_stop=_stop_check(acc), on_ids=_ids_logger(run, i),
        fail_at_step=cfg["run"]["fail_at_step"], progress_bar=cfg["run"]["progress_bar"],
        global_step=run.global_step)
    signature = checkpoint.model_signature(run.model, cfg["model"], head)
    epoch, batch, best = 0, 0, progress.get("best") if progress else None
    if progress:
        folder = checkpoint.latest(run.run_dir)
        checkpoint.check_compatible(progress, signature, folder)
        checkpoint.load(acc, folder)
        epoch, batch = progress["epoch"], progress["batch"]

    def save(epoch: int, batch: int) -> None:
        checkpoint.save(acc, run.run_dir, {"stage": i, "stage_name": st["name"], "epoch": epoch, "batch": batch,
                                           "global_step": ctx.global_step, "best": best,
                                           "history_lines": run.history.lines, "model_signature": signature})

    while epoch < st["epochs"]:
        if hasattr(ctx.loss_fn, "set_epoch"):
            ctx.loss_fn.set_epoch(epoch)
        batch, stopped = train_epoch(ctx, epoch, batch)
        run.global_step = ctx.global_step
        if stopped:
            save(epoch, batch)
            if acc.is_main_process:
                print(f"stopped on request in stage {st['name']} epoch {epoch} batch {batch}; "
                      f"checkpoint saved, continue with: python -m trainer resume {run.run_dir}", file=sys.stderr)
            return True
        average_batchnorm_stats(run.model, acc)
        val = evaluate_split(run, model, "val")
        run.log({"stage": i, "stage_name": st["name"], "epoch": epoch, "step": ctx.schedule.steps_per_epoch * (epoch + 1),
                 "global_step": ctx.global_step, "kind": "val", "top1": val["top1"], "balanced_acc": val["balanced_acc"]})
        score = val[cfg["eval"]["select_metric"]]
        if st["select"] == "best" and (best is None or score > best):
            best = score
            if acc.is_main_process:
                _save_weights(run.model, run.stage_dir(i) / "best.pt")
        epoch, batch = epoch + 1, 0
        save(epoch, 0)
    finish_stage(run, i, model)
    return False


def average_batchnorm_stats(model: torch.nn.Module, acc) -> None:
    """Average BatchNorm running statistics over ranks after each epoch, so every rank evaluates
    and saves the same model (DDP only broadcasts rank 0's buffers before each forward, so the
    ranks otherwise differ by their own last batch)."""
    if acc.num_processes == 1:
        return
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
            for buf in (module.running_mean, module.running_var):
                buf.copy_(acc.reduce(buf.detach().clone(), reduction="mean"))


def finish_stage(run: Run, i: int, model) -> None:
    """Stage files and its validation EVAL (with post-hoc classifiers). Idempotent."""
    st, acc = run.cfg["stages"][i], run.accelerator
    if st["select"] == "best" and st["epochs"] > 0:
        acc.wait_for_everyone()
        state = torch.load(run.stage_dir(i) / "best.pt", map_location=acc.device, weights_only=True)
        run.model.load_state_dict(state)
    if run.cfg["run"]["debug_ids"]:  # tests compare the ranks' weights
        _save_weights(run.model, run.run_dir / "debug" / f"model-stage{i}-rank{acc.process_index}.pt")
    val = evaluate_split(run, model, "val")
    run.fitted = {}
    if st["classifiers"]:
        from trainer.posthoc import fit_classifiers

        run.fitted, val["classifiers"] = fit_classifiers(run, model, i)
    if acc.is_main_process:
        folder = run.stage_dir(i)
        folder.mkdir(parents=True, exist_ok=True)
        _save_weights(run.model, folder / "model.pt")
        write_atomic(folder / "head.json", json.dumps(head_info(run), indent=1))
        write_atomic(folder / "val.json", json.dumps(val))
    acc.wait_for_everyone()
    run.results = [r for r in run.results if r["name"] != st["name"]] + [{"name": st["name"], "val": val}]


def finish(run: Run) -> None:
    """metrics.json: the stages' val EVALs, final val, and test when the shards have it."""
    acc, cfg = run.accelerator, run.cfg
    final = {"val": run.results[-1]["val"]}
    if "test" in run.index.splits:
        model = run.model
        test = evaluate_split(run, model, "test")
        if run.fitted:
            from trainer.posthoc import apply_classifiers

            test["classifiers"] = apply_classifiers(run, model, "test", run.fitted)
        final["test"] = test
    metrics = {"classes": list(run.index.classes), "stages": run.results, "final": final}
    if acc.is_main_process:
        write_atomic(run.run_dir / "metrics.json", json.dumps(metrics))
    # A finished run re-run with the same command just prints its table.
    progress = checkpoint.read_progress(run.run_dir) or {}
    if acc.is_main_process and (run.run_dir / "checkpoints" / checkpoint.LAST).is_dir():
        progress["done"] = True
        write_atomic(run.run_dir / "checkpoints" / checkpoint.LAST / "progress.json", json.dumps(progress))
    elif acc.is_main_process:
        checkpoint.checkpoint_dir(run.run_dir).joinpath(checkpoint.LAST).mkdir(parents=True, exist_ok=True)
        write_atomic(run.run_dir / "checkpoints" / checkpoint.LAST / "progress.json", json.dumps({"done": True}))
    acc.wait_for_everyone()
    if acc.is_main_process:
        print_table({Path(cfg["run"]["dir"]).name: metrics})


# ---------------------------------------------------------------- evaluation
def eval_stream(run: Run, split: str):
    from datasets.sampling import SamplingSpec

    world = run.accelerator.num_processes
    return make_stream(run.cfg, split, batch_size=max(1, -(-run.cfg["data"]["eval_batch_size"] // world)),
                       sampler=SamplingSpec(kind="sequential"), augment=None, seed=run.cfg["seed"],
                       rank=run.accelerator.process_index, world=world, total_epochs=1)


def split_outputs(run: Run, model, split: str, *, features: bool = False) -> Outputs:
    return collect(run.accelerator, model, eval_stream(run, split), num_classes=run.num_classes,
                   num_workers=run.cfg["data"]["num_workers"], tta=1 if features else run.cfg["data"]["tta"],
                   features=features)


def evaluate_split(run: Run, model, split: str) -> dict:
    out = split_outputs(run, model, split)
    return eval_dict(run, out.logits, out.labels)


def eval_dict(run: Run, logits: np.ndarray, labels: np.ndarray) -> dict:
    from trainer.metrics import evaluate

    counts = run.index.split("train").class_counts()
    return evaluate(logits, labels, num_classes=run.num_classes, train_counts=counts,
                    groups=run.cfg["eval"]["groups"])


# ---------------------------------------------------------------- helpers
def make_loss(stage: dict, head: list[int], counts: np.ndarray, device) -> torch.nn.Module:
    """The stage's loss. It takes full-class logits (-inf outside the head) and original class
    ids; class counts are the split's, 0 for classes the stage does not train on."""
    from trainer.losses import build_loss

    used = np.zeros(len(counts), dtype=bool)
    used[head] = True
    if stage["sampler"]["classes"] is not None:
        keep = np.zeros_like(used)
        keep[stage["sampler"]["classes"]] = True
        used &= keep
    try:
        loss = build_loss(stage["loss"], np.where(used, np.asarray(counts), 0))
    except (ValueError, TypeError, KeyError) as e:
        raise ConfigError(f"stage {stage['name']}: {e}") from None
    return loss.to(device)


def _stop_check(acc):
    from trainer.preemption import stop_requested

    return lambda: stop_requested(acc)


def _ids_logger(run: Run, i: int):
    """Debug/test mode: every rank appends the ids it trains on to RUN/debug/ids-rank<r>.txt."""
    if not run.cfg["run"]["debug_ids"]:
        return None
    path = run.run_dir / "debug" / f"ids-rank{run.accelerator.process_index}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)

    def log(epoch: int, ids: np.ndarray) -> None:
        with open(path, "a") as f:
            f.write(json.dumps({"stage": i, "epoch": epoch, "ids": ids.tolist()}) + "\n")
    return log


def head_info(run: Run) -> dict:
    train = run.index.split("train")
    return {"classes": run.model.classifier.classes, "class_names": list(run.index.classes),
            "num_classes": run.num_classes, "model": run.cfg["model"],
            "input_size": run.cfg["data"]["input_size"], "tta": run.cfg["data"]["tta"],
            "pixel_mean": float(train.pixel_mean), "pixel_std": float(train.pixel_std)}


def _save_weights(model: torch.nn.Module, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp)
    os.replace(tmp, path)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise TrainingError(f"{path}: missing or unreadable stage result ({e}); the run folder is incomplete") from None


def _flat_hparams(cfg: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in cfg.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat_hparams(v, key + "."))
        elif isinstance(v, (int, float, str, bool)):
            out[key] = v
        elif k != "stages":
            out[key] = str(v)
    return out


def print_table(runs: dict[str, dict]) -> None:
    """top1, balanced accuracy and head/middle/tail accuracy of the final model, per run."""
    rows = []
    for name, metrics in runs.items():
        for split in ("val", "test"):
            ev = metrics["final"].get(split)
            if ev is None:
                continue
            rows.append((name, split, "model", ev))
            for cname, cev in (ev.get("classifiers") or {}).items():
                rows.append((name, split, cname, cev))
    header = f"{'run':<22}{'split':<6}{'classifier':<11}{'top1':>7}{'bal_acc':>9}{'head':>7}{'middle':>8}{'tail':>7}"
    print(header)
    print("-" * len(header))
    for name, split, cname, ev in rows:
        g = group_accuracies(ev)
        cells = "".join(f"{g.get(k, float('nan')):>{w}.3f}" for k, w in (("head", 7), ("middle", 8), ("tail", 7)))
        print(f"{name:<22}{split:<6}{cname:<11}{ev['top1']:>7.3f}{ev['balanced_acc']:>9.3f}{cells}")


def group_accuracies(ev: dict) -> dict[str, float]:
    """head/middle/tail accuracy from EVAL.groups, whatever its nesting."""
    found: dict[str, float] = {}

    def walk(node):
        if isinstance(node, dict):
            for k, v in node.items():
                if k in ("head", "middle", "tail") and k not in found:
                    if isinstance(v, (int, float)):
                        found[k] = float(v)
                    elif isinstance(v, dict) and isinstance(v.get("acc"), (int, float)):
                        found[k] = float(v["acc"])
                walk(v)
    walk(ev.get("groups") or {})
    return found
