"""`python -m trainer bench [e2e | step | gpu]`: the trainer against plain PyTorch, side by side.

- e2e (default, trainer/commands/bench_e2e.py): the whole trainer, data included, against a plain loop
  on preloaded tensors doing the same steps.
- step: the training step alone on the same in-memory batches, so the difference is the
  trainer's own overhead (Accelerate wrapping, LR schedule, full-class logits, loss checks,
  logging). Repeats alternate; images/s are best-of-N (noise on a shared machine only adds
  time), and the median ratio of adjacent pairs is printed beside it.
- gpu: Shake-Shake-26 2x32d at 56 px in bf16 on CUDA, compile on and off: images/s and model
  FLOP utilisation (FLOPs by torch's FlopCounterMode).
- latency: inference latency per chip of a model at batch 1 and a large batch, with and without TTA.
"""
from __future__ import annotations

import copy
import json
import statistics
import time

import torch
import torch.nn.functional as F

from trainer.commands.bench_args import parse
from trainer.spec.config import validate
from trainer.errors import ConfigError

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0}



def make_batches(n: int, batch: int, size: int, classes: int, device, seed: int = 0) -> list:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        x = torch.randn(batch, 1, size, size, generator=g).to(device)
        y = torch.randint(0, classes, (batch,), generator=g).to(device)
        out.append((x, y, torch.arange(i * batch, (i + 1) * batch, device=device)))
    return out


def bare_epoch(model, optimizer, batches, autocast_dtype=None) -> None:
    model.train()
    for x, y, _ in batches:
        with torch.autocast(x.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            loss = F.cross_entropy(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def trainer_setup(model_cfg: dict, batches: list, precision: str, classes: int, compiled: bool = False,
                  compile_bare: bool = True, lr_schedule: str = "cosine"):
    """The trainer's own objects for one stage, as run.run_stage builds them."""
    from functools import partial

    from trainer.losses import build_loss
    from trainer.spec.schedule import Schedule
    from trainer.train.loop import train_epoch
    from trainer.models import build_model
    from trainer.preflight import make_accelerator
    from trainer.spec.resolve import OptimSpec
    from trainer.train.optim import build_optimizer
    from trainer.train.transition import set_trainable

    cfg = validate({"data": {"shards": "-"}, "model": model_cfg, "optim": {"precision": precision, "schedule": lr_schedule},
                    "stages": [{"name": "bench"}]})
    acc = make_accelerator(cfg, run_dir=".", trackers=False)
    torch.manual_seed(0)
    memory = torch.channels_last if acc.device.type == "cuda" else torch.contiguous_format
    raw = build_model({**cfg["model"], "head": "linear"}, classes).to(acc.device, memory_format=memory)
    bare = copy.deepcopy(raw)
    opt_cfg = OptimSpec(**{k: v for k, v in cfg["optim"].items() if k != "precision"})
    model, optimizer = acc.prepare(raw, build_optimizer(set_trainable(raw, "all"), opt_cfg))
    if compiled:
        model = torch.compile(model)
        bare = torch.compile(bare) if compile_bare else bare
    loss = build_loss({"name": "ce"}, [1] * classes).to(acc.device)
    # One call trains one epoch over the batches, exactly as run.run_stage calls the loop.
    epoch = partial(train_epoch, acc, model, optimizer, loss, n_micro=len(batches), global_step=0,
                    schedule=Schedule(len(batches), 1000, opt_cfg.lr, 1, 0.0, opt_cfg.schedule, opt_cfg.min_lr),
                    to_full=lambda z: raw.classifier.to_full_logits(z, classes), label=(0, "bench"))
    run_epoch = lambda e: epoch(iter(batches), epoch=e)  # noqa: E731
    bare_opt = build_optimizer([p for p in bare.parameters()], opt_cfg)
    return acc, run_epoch, model, bare, bare_opt


def compare(model_cfg: dict, *, batch: int, size: int, steps: int, repeats: int, precision: str,
            classes: int = 10, compiled: bool = False, bare: bool = True) -> dict:
    """Images/s of the trainer's step and (bare=True) of a bare loop on the same batches."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    batches = make_batches(steps, batch, size, classes, device)
    acc, run_epoch, _, bare_model, bare_opt = trainer_setup(model_cfg, batches, precision, classes, compiled, bare)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(acc.mixed_precision)
    # Warm up both (allocator, cuDNN autotuning, first-call costs).
    run_epoch(0)
    if bare:
        bare_epoch(bare_model, bare_opt, batches[:3], dtype)
    times = {"trainer": [], "bare": []} if bare else {"trainer": []}
    for r in range(repeats):
        for name in [n for n in (("trainer", "bare") if r % 2 == 0 else ("bare", "trainer")) if n in times]:
            sync(device)
            t = time.perf_counter()
            if name == "trainer":
                run_epoch(r + 1)
            else:
                bare_epoch(bare_model, bare_opt, batches, dtype)
            sync(device)
            times[name].append(time.perf_counter() - t)
    images = steps * batch
    # Best of N, as timeit does: on a shared machine noise only ever adds time.
    ips = {k: images / min(v) for k, v in times.items()}
    res = {"device": str(device), "model": model_cfg, "batch": batch, "size": size, "steps": steps,
           "repeats": repeats, "precision": acc.mixed_precision, "threads": torch.get_num_threads(),
           "trainer_images_per_s": ips["trainer"], "bare_images_per_s": None, "ratio": None,
           "overhead": None, "median_pair_ratio": None}
    if bare:
        pair_ratios = [b / t for t, b in zip(times["trainer"], times["bare"])]
        res.update({"median_pair_ratio": statistics.median(pair_ratios), "bare_images_per_s": ips["bare"],
                    "ratio": ips["trainer"] / ips["bare"], "overhead": 1 - ips["trainer"] / ips["bare"]})
    return res


def train_flops_per_image(model_cfg: dict, size: int, device, dtype) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    from trainer.models import build_model

    model = build_model(model_cfg, 10).to(device).train()
    x = torch.randn(8, 1, size, size, device=device)
    counter = FlopCounterMode(display=False)
    with counter, torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        model(x).float().sum().backward()
    return counter.get_total_flops() / 8


def peak_tflops(name: str) -> float | None:
    for key, value in PEAK_BF16_TFLOPS.items():
        if key in name:
            return value
    return None


def gpu_throughput(steps: int, repeats: int, batch: int, compiled: bool = False, bare: bool = True) -> dict:
    model_cfg = {"name": "shake_shake", "depth": 26, "width": 32}
    res = compare(model_cfg, batch=batch, size=56, steps=steps, repeats=repeats, precision="bf16",
                  compiled=compiled, bare=bare)
    flops = train_flops_per_image(model_cfg, 56, torch.device("cuda"), torch.bfloat16)
    name = torch.cuda.get_device_name()
    peak = peak_tflops(name)
    achieved = flops * res["trainer_images_per_s"] / 1e12
    res.update({"gpu": name, "compile": compiled, "train_gflops_per_image": flops / 1e9, "achieved_tflops": achieved,
                "peak_bf16_tflops": peak, "mfu": achieved / peak if peak else None})
    return res


def step_main(argv: list[str]) -> int:
    _, a = parse(["step", *argv])
    if min(a.steps, a.repeats, a.batch, a.size) < 1:
        raise ConfigError("bench: --steps, --repeats, --batch and --size must be >= 1")
    r = compare({"name": a.model, "depth": a.depth, "width": a.width}, batch=a.batch, size=a.size,
                steps=a.steps, repeats=a.repeats, precision=a.precision)
    if a.json:
        print(json.dumps([r], indent=1))
        return 0
    m = r["model"]
    print(f"{m['name']}-{m['depth']} w{m['width']}  {r['size']} px  batch {r['batch']}  {r['precision']}  "
          f"{r['device']} ({r['threads']} threads)  {r['steps']} steps x {r['repeats']} repeats")
    print(f"  trainer {r['trainer_images_per_s']:10.1f} images/s")
    print(f"  bare    {r['bare_images_per_s']:10.1f} images/s")
    print(f"  ratio trainer/bare {r['ratio']:.3f}  (overhead {100 * r['overhead']:+.1f}%; "
          f"median of adjacent pairs {r['median_pair_ratio']:.3f})")
    return 0


def e2e_main(argv: list[str]) -> int:
    from trainer.commands.bench_e2e import compare_e2e, format_e2e

    _, a = parse(["e2e", *argv])
    if a.repeats < 1:
        raise ConfigError("bench: --repeats must be >= 1")
    try:
        r = compare_e2e(a.recipe, a.shards, a.overrides, a.repeats)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    print(json.dumps(r, indent=1) if a.json else format_e2e(r))
    return 0


def gpu_main(argv: list[str]) -> int:
    _, a = parse(["gpu", *argv])
    if not torch.cuda.is_available():
        raise ConfigError("bench gpu: needs CUDA")
    torch.backends.cudnn.benchmark = True   # as the trainer sets it on CUDA (speed.cudnn_benchmark: auto)
    for b in a.batch:
        for c in {"on": [True], "off": [False]}.get(a.compile, [False, True]):
            torch._dynamo.reset()   # one configuration at a time: no recompile across batch sizes
            r = gpu_throughput(a.steps, a.repeats, b, c, a.bare == "on")
            # Printed as soon as measured (--json: one object a line), so a run cut short keeps it.
            print(json.dumps(r) if a.json else format_gpu(r), flush=True)
    return 0


def format_gpu(r: dict) -> str:
    mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a (unknown peak)"
    bare = f"{r['bare_images_per_s']:.0f} images/s" if r["bare_images_per_s"] else "not run"
    return (f"{r['gpu']}: batch {r['batch']} compile {r['compile']}: trainer {r['trainer_images_per_s']:.0f} "
            f"images/s, bare {bare}, {r['train_gflops_per_image']:.2f} "
            f"GFLOP/image, {r['achieved_tflops']:.1f} TFLOP/s, MFU {mfu}")


def latency_main(argv: list[str]) -> int:
    """Inference latency per chip of an untrained model (latency does not depend on the weights)."""
    from trainer.commands.latency import measure, to_markdown
    from trainer.models import build_model

    _, a = parse(["latency", *argv])
    if min(a.size, a.large_batch, a.tta, a.repeats) < 1:
        raise ConfigError("bench latency: --size, --large-batch, --tta and --repeats must be >= 1")
    cfg = {"name": a.model, "depth": a.depth, "width": a.width}
    fig = measure(build_model(cfg, 10), a.size, large_batch=a.large_batch, tta_views=a.tta, repeats=a.repeats)
    fig["model"] = cfg
    print(json.dumps(fig) if a.json else f"{a.model}-{a.depth} w{a.width}, untrained weights\n" + to_markdown(fig))
    return 0


MODES = {"e2e": e2e_main, "step": step_main, "gpu": gpu_main, "latency": latency_main}


def main(argv: list[str] | None = None) -> int:
    argv = list(argv or [])
    if argv and argv[0] in MODES:
        return MODES[argv[0]](argv[1:])
    return e2e_main(argv)
