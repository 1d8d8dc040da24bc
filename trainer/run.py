"""A training run: the stages in order, a checkpoint every epoch, exact resume, metrics.json.

Resume model: the checkpoint holds the stage it was taken in (with that stage's head), the
epoch and batch to continue from, the RNG states (Accelerate) and the history length. A resumed
run re-applies the head transitions up to that stage to a fresh model, loads the state and goes
on; the end-of-stage work (evaluation, post-hoc classifiers, stage files) is re-done from the
checkpointed weights, and it draws no global random numbers, so the result is the same.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from accelerate.utils import set_seed

from datasets.stream_spec import normalizer_of
from shards.layout import preprocess_record
from shards.atomic import write_json
from trainer.train import checkpoint
from trainer.posthoc import fit as posthoc
from trainer.spec.config import load_run_config, save_config
from trainer.errors import TrainingError
from trainer.evaluate.evaluator import Evaluator
from trainer.evaluate.files import write_metrics
from trainer.train.history import History
from trainer.train.loop import Hooks, train_epoch
from trainer.losses import build_loss
from trainer.models import build_model
from trainer.train.preemption import install, stop_requested
from trainer.train.progress import StageProgress
from trainer.trackers import project_name
from trainer.train.run_lock import run_lock
from trainer.preflight import Setup, prepare
from trainer.spec.resolve import StageSpec
from trainer.streams import stage_seeds
from trainer.train.optim import build_optimizer
from trainer.train.transition import apply_head, set_train_mode, set_trainable
from trainer.summary import banner, format_end, name_per_class, print_table


@dataclass
class Run:
    setup: Setup
    model: torch.nn.Module
    history: History
    evaluator: Evaluator
    results: list = field(default_factory=list)   # [{"name", "val"}] per finished stage
    fitted: dict = field(default_factory=dict)    # post-hoc classifiers of the last stage
    hooks: Hooks = field(default_factory=Hooks)   # test callbacks (tests/hooked_trainer.py)
    global_step: int = 0
    started: float = 0.0                          # time.time() when this process began the run
    resumed: bool = False                         # this process continues a checkpoint

    @property
    def cfg(self) -> dict:
        return self.setup.cfg

    @property
    def accelerator(self):
        return self.setup.accelerator

    @property
    def num_classes(self) -> int:
        return self.setup.recipe.num_classes

    def stage_dir(self, i: int) -> Path:
        return stage_dir(self.setup.run_dir, self.setup.recipe.stages[i].name, i)

    def log(self, record: dict) -> None:
        self.history.write({**record, "time": round(time.time(), 2)})
        scalars = {f"{record['kind']}/{k}": v for k, v in record.items()
                   if isinstance(v, float) and k not in ("stage", "epoch", "step")}
        self.accelerator.log(scalars, step=record.get("global_step", self.global_step))


def stage_dir(run_dir: Path, name: str, i: int) -> Path:
    return Path(run_dir) / "stages" / f"{i}-{name}"


def make_evaluator(setup: Setup) -> Evaluator:
    return Evaluator(setup.accelerator, setup.streams, num_classes=setup.recipe.num_classes,
                     train_counts=setup.index.split("train").class_counts(),
                     groups=setup.cfg["eval"]["groups"], views=setup.recipe.tta_views)


def new_model(setup: Setup) -> torch.nn.Module:
    """The recipe's model, freshly initialised from the run's seed, on this rank's device."""
    set_seed(setup.cfg["seed"])
    model = build_model(setup.recipe.model, setup.recipe.num_classes)
    set_seed(setup.cfg["seed"], device_specific=True)  # each rank its own Shake-Shake draws
    if setup.speed.sync_bn and setup.accelerator.num_processes > 1:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    memory = torch.channels_last if setup.speed.channels_last else torch.contiguous_format
    return model.to(setup.accelerator.device, memory_format=memory)


# ---------------------------------------------------------------- entry points
def train(cfg: dict, hooks: Hooks | None = None) -> int:
    """Train (or continue) the run described by `cfg`. Returns a process exit code. `hooks`:
    callbacks for tests (sample ids, injected failures, per-rank weights); the run adds its own."""
    started = time.time()
    setup = prepare(cfg)
    with run_lock(setup.accelerator, setup.run_dir):  # one trainer per run folder
        return _train_locked(cfg, setup, hooks, started)


def _train_locked(cfg: dict, setup: Setup, hooks: Hooks | None, started: float) -> int:
    run_dir, acc = setup.run_dir, setup.accelerator
    if acc.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir)
    acc.wait_for_everyone()
    progress = checkpoint.read_progress(run_dir)
    if progress is not None and progress.get("done") and (run_dir / "metrics.json").is_file():
        if acc.is_main_process:
            print(f"{run_dir}: already finished", file=sys.stderr)
            print_table({run_dir.name: json.loads((run_dir / "metrics.json").read_text())})
        return 0
    if progress is not None and "stage" not in progress:
        progress = None  # a finished run whose metrics.json was removed: start again
    banner(setup, {s: len(setup.index.splits[s]) for s in setup.index.splits})
    keep = progress["history_lines"] if progress else None
    history = History(run_dir / "history.jsonl", keep, acc.is_main_process)
    run = Run(setup, new_model(setup), history, make_evaluator(setup), started=started,
              resumed=progress is not None)
    run.hooks = replace(hooks or Hooks(), log=run.log, should_stop=lambda: stop_requested(acc))
    install()  # SIGTERM/SIGUSR2 set a flag; the loop checkpoints and exits 0 at the next step
    acc.init_trackers(project_name(cfg["run"]["log_with"], cfg["run"]["recipe"]), config=_flat_hparams(cfg))
    try:
        if not run_stages(run, progress):
            finish(run)
    finally:
        history.close()
        acc.end_training()
    return 0


def resume(run_dir: Path) -> int:
    cfg = load_run_config(Path(run_dir))
    cfg["run"]["dir"] = str(run_dir)
    if checkpoint.read_progress(Path(run_dir)) is None and not (Path(run_dir) / "metrics.json").is_file():
        print(f"{run_dir}: no checkpoint yet, starting from the beginning", file=sys.stderr)
    return train(cfg)


# ---------------------------------------------------------------- stages
def run_stages(run: Run, progress: dict | None) -> bool:
    """All stages from the checkpoint on. Returns True when stopped by preemption."""
    start = progress["stage"] if progress else 0
    stages = run.setup.recipe.stages
    for j in range(start):  # the structure (head) the checkpoint was taken with
        apply_head(run.model, stages[j], run.num_classes)
        run.results.append({"name": stages[j].name, "val": _read_json(run.stage_dir(j) / "val.json")})
    if progress:
        run.global_step = progress["global_step"]
    for i in range(start, len(stages)):
        resumed = progress if (progress and progress["stage"] == i) else None
        if run_stage(run, stages[i], resumed):
            return True
    return False


def run_stage(run: Run, stage: StageSpec, progress: dict | None) -> bool:
    """Train one stage from its start or from `progress`; True when stopped by preemption."""
    acc, i = run.accelerator, stage.index
    if progress is None:
        apply_head(run.model, stage, run.num_classes, _restored_rows(run, stage))
    else:
        apply_head(run.model, stage, run.num_classes)  # the checkpoint holds the restored rows
    params = set_trainable(run.model, stage.train)
    acc.free_memory()  # forget the previous stage's model/optimizer (save_state saves all registered)
    model, optimizer = acc.prepare(run.model, build_optimizer(params, stage.optim, run.setup.speed.sgd))
    if run.setup.speed.compile:   # after DDP wrapping; evaluation uses the plain module
        model = torch.compile(model)
    stream = run.setup.streams.train(stage, *stage_seeds(run.cfg["seed"], stage))
    stream.set_epoch(0)
    schedule = stage.schedule.with_batches(len(stream))
    loss_fn = _loss(run, stage)
    signature = checkpoint.model_signature(run.model, run.setup.recipe.model, run.model.classifier.classes)
    epoch, batch, best = 0, 0, progress.get("best") if progress else None
    if progress:
        folder = checkpoint.latest(run.setup.run_dir)
        checkpoint.check_compatible(progress, signature, folder)
        checkpoint.load(acc, folder, run.model)
        epoch, batch = progress["epoch"], progress["batch"]

    def save(epoch: int, batch: int) -> None:
        checkpoint.save(acc, run.setup.run_dir, {
            "stage": i, "stage_name": stage.name, "epoch": epoch, "batch": batch,
            "global_step": run.global_step, "best": best, "history_lines": run.history.lines,
            "model_signature": signature}, run.model)

    progress = StageProgress((i, stage.name), schedule.total_steps, epoch * schedule.steps_per_epoch
                             + batch // schedule.grad_accum, world=acc.num_processes,
                             enabled=acc.is_main_process, bar=run.cfg["run"]["progress_bar"])
    while epoch < stage.epochs:
        if hasattr(loss_fn, "set_epoch"):
            loss_fn.set_epoch(epoch)
        set_train_mode(run.model, stage.train, stage.bn)
        stream.set_epoch(epoch, batch)
        done = train_epoch(acc, model, optimizer, loss_fn, run.setup.streams.iterate(stream), n_micro=len(stream),
                           epoch=epoch, start_batch=batch, schedule=schedule, global_step=run.global_step,
                           to_full=lambda z: run.model.classifier.to_full_logits(z, run.num_classes),
                           label=(i, stage.name), log_every=run.cfg["run"]["log_every"],
                           progress=progress, hooks=run.hooks)
        batch, run.global_step = done.batch, done.global_step
        if done.stopped:
            save(epoch, batch)
            if acc.is_main_process:
                print(f"stopped on request in stage {stage.name} epoch {epoch} batch {batch}; checkpoint "
                      f"saved, continue with: python -m trainer resume {run.setup.run_dir}", file=sys.stderr)
            return True
        average_batchnorm_stats(run.model, acc)
        best = _validate(run, stage, model, epoch, schedule, best, progress)
        epoch, batch = epoch + 1, 0
        save(epoch, 0)
    finish_stage(run, stage, model)
    return False


def _loss(run: Run, stage: StageSpec) -> torch.nn.Module:
    """The stage's loss. Under DDP a loss normalised by its weight sum divides by the mean over
    ranks of that sum, so the rank-averaged gradient is the one of the whole global batch."""
    acc = run.accelerator
    reduce_sum = (lambda t: acc.reduce(t, reduction="mean")) if acc.num_processes > 1 else None
    return build_loss(stage.loss, np.asarray(stage.loss_counts), reduce_sum=reduce_sum,
                      logit_scale=run.model.classifier.scale, epochs=stage.epochs).to(acc.device)


def _validate(run: Run, stage: StageSpec, model, epoch: int, schedule, best: float | None,
              progress: StageProgress) -> float | None:
    """Validation after an epoch: logged, and kept as the stage's best weights when select: best."""
    val = run.evaluator.evaluate(model, "val")
    progress.validation(epoch, val)
    run.log({"stage": stage.index, "stage_name": stage.name, "epoch": epoch,
             "step": schedule.steps_per_epoch * (epoch + 1), "global_step": run.global_step,
             "kind": "val", "top1": val["top1"], "balanced_acc": val["balanced_acc"],
             **_group_accuracy(val)})
    score = val[run.cfg["eval"]["select_metric"]]
    if stage.select == "best" and (best is None or score > best):
        best = score
        if run.accelerator.is_main_process:
            checkpoint.save_weights(run.model, run.stage_dir(stage.index) / "best.pt")
    return best


def _group_accuracy(val: dict) -> dict:
    """head/middle/tail (and many/medium/few) accuracy of an EVAL, for the history: a stage that
    drops a class and the stage that restores it show the head's loss and recovery epoch by epoch."""
    groups = val.get("groups") or {}
    return {g: groups[g] for g in ("head", "middle", "tail", "many", "medium", "few")
            if isinstance(groups.get(g), (int, float))}


def _restored_rows(run: Run, stage: StageSpec) -> dict[int, tuple[torch.Tensor, torch.Tensor]] | None:
    """expand_rows: restore — classifier rows of the classes the expand adds back, as the last
    earlier stage whose head covered them left them (three_stage: class 0 after stage 1)."""
    if stage.head_change != "expand" or stage.expand_rows != "restore":
        return None
    added = [c for c in range(run.num_classes) if c not in run.model.classifier.classes]
    rows = {}
    for j in reversed(range(stage.index)):
        earlier = run.setup.recipe.stages[j]
        todo = [c for c in added if c not in rows and c in earlier.head_classes]
        if todo:
            state = torch.load(run.stage_dir(j) / "model.pt", map_location="cpu", weights_only=True)
            ids = state["classifier.class_ids"].tolist()
            bias = state.get("classifier.bias")   # a cosine head has none
            for c in todo:
                rows[c] = (state["classifier.weight"][ids.index(c)], None if bias is None else bias[ids.index(c)])
    return rows


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


def finish_stage(run: Run, stage: StageSpec, model) -> None:
    """Stage files and its validation EVAL (with post-hoc classifiers). Idempotent."""
    acc, i = run.accelerator, stage.index
    if stage.select == "best" and stage.epochs > 0:
        acc.wait_for_everyone()
        state = torch.load(run.stage_dir(i) / "best.pt", map_location=acc.device, weights_only=True)
        run.model.load_state_dict(state)
    if run.hooks.on_stage_end is not None:
        run.hooks.on_stage_end(run.model, i)
    val = run.evaluator.evaluate(model, "val")
    run.fitted = {}
    if stage.classifiers:
        run.fitted, val["classifiers"] = posthoc.fit_classifiers(run.setup, run.evaluator, model, stage)
    if acc.is_main_process:
        folder = run.stage_dir(i)
        checkpoint.save_weights(run.model, folder / "model.pt")
        posthoc.save_classifiers(folder, run.fitted)
        write_json(folder / "card.json", model_card(run), indent=1)
        write_json(folder / "val.json", val)
    acc.wait_for_everyone()
    run.results = [r for r in run.results if r["name"] != stage.name] + [{"name": stage.name, "val": val}]


def finish(run: Run) -> None:
    """metrics.json: the stages' val EVALs, final val, and test when the shards have it."""
    acc, setup = run.accelerator, run.setup
    final = {"val": run.results[-1]["val"]}
    if "test" in setup.index.splits:
        # One backbone pass per TTA view scores the model and every post-hoc classifier.
        evals = run.evaluator.evaluate_all(run.model, "test", {"model": None, **run.fitted})
        final["test"] = evals.pop("model")
        if evals:
            final["test"]["classifiers"] = evals
    if "ood" in setup.index.splits:   # known = test (or val): AUROC / FPR95 of each OOD score
        known = "test" if "test" in setup.index.splits else "val"
        final["ood"] = run.evaluator.ood(run.model, known, {"model": None, **run.fitted})
    metrics = {"classes": list(setup.index.classes), "stages": run.results, "final": final}
    for ev in [final.get("val"), final.get("test")] + [r.get("val") for r in run.results]:
        name_per_class(ev or {}, metrics["classes"])   # per-class results by class name
    if acc.is_main_process:
        write_metrics(setup.run_dir, metrics, setup.index.split("train").class_counts())
        # metrics.json stays a function of the recipe; how long it took goes to run.json: the
        # seconds of the process that finished the run (a resumed run counts from its resume)
        info = json.loads((setup.run_dir / "run.json").read_text())
        write_json(setup.run_dir / "run.json", {**info, "wall_s": round(time.time() - run.started, 1)}, indent=1)
        checkpoint.mark_done(setup.run_dir)
    acc.wait_for_everyone()
    if acc.is_main_process:
        print_table({setup.run_dir.name: metrics})
        print(format_end(setup.run_dir, time.time() - run.started, run.resumed), flush=True)


# ---------------------------------------------------------------- helpers
def model_card(run: Run) -> dict:
    """RUN/stages/<i>-<name>/card.json: what `predict` and `export` need besides the weights."""
    train = run.setup.index.split("train")
    norm = normalizer_of(train)
    return {"classes": run.model.classifier.classes, "class_names": list(run.setup.index.classes),
            "num_classes": run.num_classes, "model": run.setup.recipe.model,
            "input_size": run.setup.recipe.input_size, "tta_views": list(run.setup.recipe.tta_views),
            "modalities": list(train.modalities), "channels": run.setup.recipe.model["in_channels"],
            "pixel_mean": float(train.pixel_mean), "pixel_std": float(train.pixel_std),
            "normalize": {"mean": norm.mean, "std": norm.std}, "classifiers": sorted(run.fitted),
            "preprocess": preprocess_record(run.setup.index, "train")}   # how predict reads files


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
