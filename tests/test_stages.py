"""Stage mechanics: frozen parts stay bit-identical (BatchNorm statistics too), head transitions
keep the learned rows, the LR schedule is warmup + cosine."""
from __future__ import annotations

import math
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from trainer.spec.config import validate
from trainer.errors import ConfigError
from trainer.models import build_model
from trainer.spec.resolve import OptimSpec, resolve
from trainer.spec.schedule import Schedule
from trainer.train.optim import build_optimizer
from trainer.train.transition import apply_head, set_train_mode, set_trainable
from trainer.streams import per_rank_batch

sys.path.insert(0, str(Path(__file__).parent))
from trainer_helpers import fake_index  # noqa: E402

OPT = OptimSpec(lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4, warmup_epochs=0.0,
                schedule="cosine", min_lr=0.0, grad_accum=1)


def tiny(name="resnet_cifar"):
    torch.manual_seed(0)
    depth = 8
    return build_model({"name": name, "depth": depth, "width": 8}, 4)


def stage(**kw):
    cfg = validate({"data": {"shards": "/x"}, "stages": [{"name": "s", **kw}]})
    return resolve(cfg, fake_index([6, 6, 6, 6])).stages[0]


def snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def train_steps(model, part: str, steps: int = 3) -> None:
    params = set_trainable(model, part)
    opt = build_optimizer(params, OPT)
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        set_train_mode(model, part)
        x = torch.randn(8, 1, 16, 16, generator=gen) * 3 + 1  # shifted: BN stats would move
        y = torch.randint(0, 4, (8,), generator=gen)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.mark.parametrize("name", ["resnet_cifar", "shake_shake"])
@pytest.mark.parametrize("part", ["classifier", "last_block"])
def test_frozen_parts_bit_identical(name, part):
    model = tiny(name)
    before = snapshot(model)
    train_steps(model, part)
    after = model.state_dict()
    trained_prefixes = ["classifier."]
    if part == "last_block":
        last = model.last_block()
        trained_prefixes += [n + "." for n, m in model.named_modules() if m is last]
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    frozen_changed = {k for k in changed if not any(k.startswith(p) for p in trained_prefixes)}
    assert frozen_changed == set(), frozen_changed
    assert "classifier.weight" in changed
    if part == "last_block":
        bn_stats = [k for k in changed if k.endswith("running_mean") and not k.startswith("classifier")]
        assert bn_stats, "the last block's BatchNorm should train"


def test_all_trains_everything_and_bn_moves():
    model = tiny()
    before = snapshot(model)
    train_steps(model, "all")
    after = model.state_dict()
    assert not torch.equal(before["classifier.weight"], after["classifier.weight"])
    moved = [k for k in before if k.endswith("running_mean") and not torch.equal(before[k], after[k])]
    assert len(moved) >= 3


def test_head_subset_then_expand_keeps_learned_rows():
    model = tiny()
    w0 = model.classifier.weight.detach().clone()
    apply_head(model, stage(head="subset", sampler={"classes": [1, 2, 3]}), 4)
    assert model.classifier.classes == [1, 2, 3]
    assert torch.equal(model.classifier.weight, w0[1:])
    with torch.no_grad():
        model.classifier.weight.add_(1.0)  # "learned" in stage 2
    learned = model.classifier.weight.detach().clone()
    apply_head(model, stage(head="expand"), 4)
    assert model.classifier.classes == [0, 1, 2, 3]
    assert torch.equal(model.classifier.weight[1:], learned)
    assert not torch.equal(model.classifier.weight[0], learned[0])
    out = model(torch.randn(2, 1, 16, 16))
    assert out.shape == (2, 4)


def test_head_reset_and_keep():
    model = tiny()
    w0 = model.classifier.weight.detach().clone()
    apply_head(model, stage(head="keep"), 4)
    assert torch.equal(model.classifier.weight, w0)
    apply_head(model, stage(head="reset"), 4)
    assert model.classifier.classes == [0, 1, 2, 3]
    assert not torch.equal(model.classifier.weight, w0)


def test_subset_to_full_logits():
    model = tiny()
    apply_head(model, stage(head="subset", classes=[2, 3], sampler={"classes": [2, 3]}), 4)
    full = model.classifier.to_full_logits(model(torch.randn(3, 1, 16, 16)), 4)
    assert torch.isinf(full[:, :2]).all() and torch.isfinite(full[:, 2:]).all()


def test_lr_schedule():
    sched = Schedule(micro_per_epoch=10, epochs=10, lr_max=0.1, warmup_epochs=1.0, lr_min=0.001)
    total, warm = sched.total_steps, sched.warmup_steps
    assert (total, warm) == (100, 10)
    lrs = [sched.lr(s) for s in range(total)]
    assert lrs[0] == pytest.approx(0.01) and lrs[9] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert sched.lr(total) == pytest.approx(0.001)
    mid = sched.lr(warm + (total - warm) // 2)
    assert mid == pytest.approx(0.001 + 0.099 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert replace(sched, kind="constant", warmup_epochs=0.0).lr(50) == 0.1


def test_schedule_counts_accumulation():
    s = Schedule(micro_per_epoch=10, epochs=2, lr_max=0.1, grad_accum=3, warmup_epochs=0.5)
    assert s.steps_per_epoch == 4 and s.total_steps == 8 and s.warmup_steps == 2
    assert s.with_batches(4).steps_per_epoch == 2


def test_per_rank_batch():
    assert per_rank_batch(64, 2, 2) == 16
    with pytest.raises(ConfigError, match="not divisible"):
        per_rank_batch(10, 4, 1)


def test_frozen_params_get_no_optimizer_state():
    model = tiny()
    params = set_trainable(model, "classifier")
    assert {id(p) for p in params} == {id(p) for p in model.classifier.parameters()}
    assert all(not p.requires_grad for n, p in model.named_parameters() if not n.startswith("classifier"))


def test_step_schedule_is_kaidics_cifar_decay():
    from trainer.spec.schedule import Schedule

    s = Schedule(micro_per_epoch=10, epochs=20, lr_max=0.1, warmup_epochs=1, kind="step")
    assert s.lr(0) == pytest.approx(0.01) and s.lr(9) == pytest.approx(0.1)
    assert s.lr(159) == pytest.approx(0.1)
    assert s.lr(160) == pytest.approx(0.001) and s.lr(179) == pytest.approx(0.001)
    assert s.lr(180) == pytest.approx(1e-5) and s.lr(199) == pytest.approx(1e-5)
