"""One stage's mechanics: head transition, trainable part, optimizer, LR schedule, data stream."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from trainer.config import stage_optim
from trainer.errors import ConfigError


# ---------------------------------------------------------------- head
def apply_head(model: nn.Module, stage: dict, num_classes: int) -> None:
    """keep | subset (rows of the listed classes kept) | expand (back to all classes, learned
    rows kept) | reset (fresh classifier over the same classes, as cRT does)."""
    head = model.classifier
    if stage["head"] == "subset":
        head.subset(sorted(stage["classes"] or stage["sampler"]["classes"]))
    elif stage["head"] == "expand":
        head.expand(num_classes)
    elif stage["head"] == "reset":
        head.subset(head.classes)  # same classes …
        with torch.no_grad():       # … fresh rows, initialised like nn.Linear
            fresh = type(head)(head.in_features, head.classes).to(head.weight.device)
            head.weight.copy_(fresh.weight)
            head.bias.copy_(fresh.bias)


# ---------------------------------------------------------------- trainable part
def trainable_modules(model: nn.Module, part: str) -> list[nn.Module]:
    if part == "all":
        return [model]
    if part == "classifier":
        return [model.classifier]
    if part == "last_block":
        if not hasattr(model, "last_block"):
            raise ConfigError(f"train: last_block: model {type(model).__name__} has no last_block()")
        return [model.last_block(), model.classifier]
    raise ConfigError(f"train: {part!r} is not one of all, classifier, last_block")


def set_trainable(model: nn.Module, part: str) -> list[nn.Parameter]:
    """Freeze everything outside `part`; return the parameters that train."""
    model.requires_grad_(False)
    for m in trainable_modules(model, part):
        m.requires_grad_(True)
    return [p for p in model.parameters() if p.requires_grad]


def set_train_mode(model: nn.Module, part: str) -> None:
    """Frozen modules stay in eval mode, so their BatchNorm running statistics do not move
    (and Shake-Shake uses its deterministic evaluation mix in a frozen backbone)."""
    model.eval()
    for m in trainable_modules(model, part):
        m.train()


# ---------------------------------------------------------------- optimizer and schedule
def build_optimizer(params: list[nn.Parameter], opt: dict) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=opt["lr"], momentum=opt["momentum"],
                           nesterov=opt["nesterov"] and opt["momentum"] > 0,
                           weight_decay=opt["weight_decay"])


def lr_at(step: int, total_steps: int, warmup_steps: int, opt: dict) -> float:
    """Linear warmup, then cosine (or constant) down to min_lr. A pure function of the step, so
    resume needs no scheduler state (and Accelerate's per-process scheduler stepping is moot)."""
    base, low = opt["lr"], opt["min_lr"]
    if warmup_steps > 0 and step < warmup_steps:
        return base * (step + 1) / warmup_steps
    if opt["schedule"] == "constant":
        return base
    span = max(1, total_steps - warmup_steps)
    t = min(1.0, (step - warmup_steps) / span)
    return low + (base - low) * 0.5 * (1 + math.cos(math.pi * t))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


@dataclass
class Schedule:
    micro_per_epoch: int      # batches per rank per epoch
    grad_accum: int
    epochs: int
    warmup_epochs: float

    @property
    def steps_per_epoch(self) -> int:
        return max(1, math.ceil(self.micro_per_epoch / self.grad_accum))

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.epochs

    @property
    def warmup_steps(self) -> int:
        return int(round(self.warmup_epochs * self.steps_per_epoch))


# ---------------------------------------------------------------- data
def sampling_spec(stage: dict):
    from datasets.sampling import SamplingSpec

    return SamplingSpec(**stage["sampler"])


def augment_spec(stage: dict):
    from datasets.augment import AugmentSpec

    aug = dict(stage["augment"])
    aug["crop_scale"] = tuple(aug["crop_scale"])
    return AugmentSpec.from_dict(aug)


def use_dali(loader: str) -> bool:
    """`dali` always uses DALI (its CPU mode without CUDA, which is what CI exercises);
    `auto` uses it only where it pays, with CUDA and DALI both present; `torch` never."""
    if loader == "torch":
        return False
    try:
        import datasets.dali  # noqa: F401
    except Exception as err:  # DALI missing or broken: the torch reader is always there
        if loader == "dali":
            raise ConfigError(f"data.loader: dali, but nvidia-dali does not import ({err}); "
                              "use data.loader=torch or auto") from err
        return False
    return loader == "dali" or torch.cuda.is_available()


def make_stream(cfg: dict, split: str, *, batch_size: int, sampler, augment, seed: int,
                rank: int, world: int, total_epochs: int, device_id: int | None = None):
    """The batch iterable for one split (torch reader or DALI, same interface)."""
    kwargs = dict(batch_size=batch_size, sampling=sampler, augment=augment,
                  input_size=cfg["data"]["input_size"], seed=seed, rank=rank, world=world,
                  total_epochs=total_epochs)
    if use_dali(cfg["data"]["loader"]):
        from datasets.dali import DaliStream

        return DaliStream(cfg["data"]["shards"], split, **kwargs)
    from datasets.stream import ShardStream

    return ShardStream(cfg["data"]["shards"], split, **kwargs)


def iterate(stream, num_workers: int):
    """Batches of the stream's current epoch (DALI iterates itself; torch uses make_loader).
    The DataLoader draws a base seed from the global torch RNG when it starts; forking the RNG
    keeps that draw out of the model's random stream, so resume mid-epoch stays exact."""
    if not isinstance(stream, torch.utils.data.IterableDataset):
        return iter(stream)
    from datasets.stream import make_loader

    with torch.random.fork_rng(devices=[]):
        return iter(make_loader(stream, num_workers))


def per_rank_batch(global_batch: int, world: int, grad_accum: int, key: str = "data.batch_size") -> int:
    parts = world * grad_accum
    if global_batch % parts:
        raise ConfigError(f"{key}: {global_batch} is not divisible by processes × grad_accum = {parts}")
    return global_batch // parts


def optim_for(cfg: dict, stage: dict) -> dict:
    return stage_optim(cfg, stage)
