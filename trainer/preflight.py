"""Everything checked and set up before the first training step: the run folder, the shards,
the resolved recipe and the accelerator. A bad input stops here with one clear error."""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from datasets.stream_spec import StreamSpec
from shards.index import ClassIndex
from trainer.spec.config import config_differences, load_run_config
from trainer.errors import ConfigError
from trainer.spec.resolve import RecipeSpec, resolve
from trainer.streams import Streams, choose_loader, per_rank_batch
from trainer.threads import apply_threads
from trainer.trackers import log_with


@dataclass(frozen=True)
class SpeedSpec:
    """The recipe's `speed` section, resolved for this device (auto: on CUDA only)."""
    channels_last: bool
    compile: bool
    cudnn_benchmark: bool
    sgd: str            # auto | foreach | fused | plain (trainer.train.optim.build_optimizer)
    sync_bn: bool
    deterministic: bool = False

    @classmethod
    def resolve(cls, speed: dict, cuda: bool) -> "SpeedSpec":
        on = lambda v: cuda if v == "auto" else bool(v)  # noqa: E731
        deterministic = bool(speed.get("deterministic", False))
        return cls(on(speed["channels_last"]), on(speed["compile"]),
                   on(speed["cudnn_benchmark"]) and not deterministic,   # autotuning picks by timing
                   speed["sgd"], bool(speed["sync_bn"]), deterministic)


def set_deterministic() -> None:
    """speed.deterministic: the same run gives the same bits on CUDA (a rerun, or a resume after
    preemption). cuBLAS reads its workspace setting once, at its first call, so it is set here,
    before any training step (launch/gpu_check.sh also exports it before Python starts). Ops
    with no deterministic kernel warn, naming themselves, instead of stopping the run."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True, warn_only=True)


def make_accelerator(cfg: dict, run_dir: Path, trackers: bool = True):
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration

    cuda = torch.cuda.is_available()
    precision = cfg["optim"]["precision"]
    if precision == "auto":
        precision = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if cuda else "no"
    if not cuda and precision == "fp16":
        raise ConfigError("optim.precision: fp16 needs CUDA; use no or bf16 on the CPU")
    check_launcher_precision(cfg["optim"]["precision"], precision)
    project = ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir))
    # No buffer broadcast before every forward: BatchNorm statistics are averaged over the ranks
    # after each epoch (run.average_batchnorm_stats) and saved per rank in checkpoints. (Newer
    # torch renames the flag forward_sync_buffers, which Accelerate cannot pass on yet.)
    ddp = DistributedDataParallelKwargs(broadcast_buffers=False)
    warnings.filterwarnings("ignore", message="`broadcast_buffers` is deprecated", category=FutureWarning)
    # cpu=True without CUDA: otherwise two CPU processes each believe they are rank 0 of 1.
    return Accelerator(cpu=not cuda, mixed_precision=precision, project_config=project,
                       log_with=log_with(cfg["run"].get("log_with", "tensorboard"), run_dir) if trackers else None,
                       kwargs_handlers=[ddp])


def agree_run_dir(acc, cfg: dict, run_dir: Path) -> Path:
    """Every rank uses rank 0's run folder (a default dated folder is named per process)."""
    if acc.num_processes == 1:
        return run_dir
    from accelerate.utils import broadcast_object_list

    shared = [str(run_dir)]
    broadcast_object_list(shared)
    cfg["run"]["dir"] = shared[0]
    acc.project_configuration.project_dir = acc.project_configuration.logging_dir = shared[0]
    return Path(shared[0])


def check_launcher_precision(asked: str, precision: str) -> None:
    """`accelerate launch --mixed_precision X` (or a default accelerate config) reaches the run as
    ACCELERATE_MIXED_PRECISION; the recipe decides, so a different X is refused, not ignored."""
    launcher = os.environ.get("ACCELERATE_MIXED_PRECISION", "no").lower()
    if launcher not in ("no", precision):
        raise ConfigError(f"accelerate launch --mixed_precision {launcher}: the recipe decides the precision "
                          f"(optim.precision={asked}, here {precision}); drop the flag (or set mixed_precision: "
                          f"no in the accelerate config), or set optim.precision={launcher}")


def open_shards(cfg: dict) -> ClassIndex:
    """The shard index, with the train and val splits every run needs (DataError if missing)."""
    index = ClassIndex.load(cfg["data"]["shards"])
    for split in ("train", "val"):
        index.split(split)
    return index


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


def check_launch(cfg: dict, world: int, shards: str | None = None) -> RecipeSpec:
    """Before any process starts (Slurm jobs): the run folder, the shards (read from `shards`
    when the run will read a staged copy that does not exist yet), the recipe, and that every
    stage's batch splits over `world` processes."""
    check_existing_run(cfg, Path(cfg["run"]["dir"]))
    recipe = resolve(cfg, open_shards({"data": {"shards": shards or cfg["data"]["shards"]}}))
    for stage in recipe.stages:
        per_rank_batch(cfg["data"]["batch_size"], world, stage.optim.grad_accum)
    return recipe


@dataclass
class Setup:
    """What a run (or an evaluation of a finished run) is built from."""
    cfg: dict
    run_dir: Path
    index: ClassIndex
    recipe: RecipeSpec
    accelerator: object
    streams: Streams
    speed: SpeedSpec
    threads: str = ""     # the CPU thread budget, for the banner

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process


def prepare(cfg: dict, *, trackers: bool = True, check_run: bool = True) -> Setup:
    """Check the run folder and the shards, resolve the recipe, then start the accelerator."""
    run_dir = Path(cfg["run"]["dir"])
    threads = apply_threads()   # before any torch work starts its thread pool
    if cfg["speed"].get("deterministic"):
        set_deterministic()   # before the accelerator and any CUDA work
    if check_run:
        check_existing_run(cfg, run_dir)
    index = open_shards(cfg)
    recipe = resolve(cfg, index)
    acc = make_accelerator(cfg, run_dir, trackers)
    run_dir = agree_run_dir(acc, cfg, run_dir)
    data = cfg["data"]
    channels = recipe.model["in_channels"]
    pixels = sum(len(s) for s in index.splits.values()) * recipe.input_size ** 2 * channels
    kind = choose_loader(data["loader"], pixels, acc.device)
    speed = SpeedSpec.resolve(cfg["speed"], acc.device.type == "cuda")
    streams = Streams(shards=data["shards"], kind=kind, input_size=recipe.input_size,
                      batch_size=data["batch_size"], eval_batch_size=data["eval_batch_size"],
                      num_workers=data["num_workers"], dali_threads=data["dali_threads"],
                      rank=acc.process_index, world=acc.num_processes, device=acc.device,
                      equal_batches=speed.compile)
    if kind == "resident":  # decode (or check the cache) once, on the main process first
        with acc.main_process_first():
            for split in index.splits:
                streams.open(split, StreamSpec.sequential(4096, recipe.input_size))
    for stage in recipe.stages:  # every stage's batch must split over the ranks
        per_rank_batch(data["batch_size"], acc.num_processes, stage.optim.grad_accum)
    if speed.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True   # fixed chip size: the autotuned kernels stay valid
    return Setup(cfg, run_dir, index, recipe, acc, streams, speed, threads)
