"""Sampling plans: n_j^q frequencies, filters, fixed per-class counts, rank splits, errors."""
from __future__ import annotations

import numpy as np
import pytest

from datasets.sampling import (SamplingSpec, class_probabilities, epoch_plan, epoch_weights,
                               rank_batches)
from shards.errors import DataError

COUNTS = np.array([400, 100, 25, 9])
LABELS = np.repeat(np.arange(len(COUNTS)), COUNTS)
rng = np.random.default_rng(3)
LABELS_SHUFFLED = rng.permutation(LABELS)  # ids are not grouped by class in a real split
# First 8 ids of plan(SamplingSpec(kind="class", epoch_size=8), epoch=1) from the sampler before
# `redraw` existed: redraw "epoch" must keep earlier runs' plans.
OLD_CLASS_PLAN = [472, 45, 481, 350, 198, 169, 185, 276]


def plan(spec: SamplingSpec, epoch: int = 0, total: int = 10, seed: int = 0) -> np.ndarray:
    return epoch_plan(LABELS_SHUFFLED, spec, epoch=epoch, total_epochs=total, seed=seed)


def drawn_per_class(ids: np.ndarray) -> np.ndarray:
    return np.bincount(LABELS_SHUFFLED[ids], minlength=len(COUNTS))


def test_class_weights_follow_n_to_the_q():
    np.testing.assert_allclose(class_probabilities(COUNTS, 1.0), COUNTS / COUNTS.sum())
    np.testing.assert_allclose(class_probabilities(COUNTS, 0.0), np.full(4, 0.25))
    sq = np.sqrt(COUNTS)
    np.testing.assert_allclose(class_probabilities(COUNTS, 0.5), sq / sq.sum())
    w = class_probabilities(np.array([5, 0, 5]), 0.0)
    np.testing.assert_allclose(w, [0.5, 0.0, 0.5])  # empty class gets 0 even at q=0


def test_instance_epoch_is_a_permutation_and_deterministic():
    ids = plan(SamplingSpec())
    assert sorted(ids.tolist()) == list(range(len(LABELS)))
    assert np.array_equal(ids, plan(SamplingSpec()))
    assert not np.array_equal(ids, plan(SamplingSpec(), epoch=1))
    assert not np.array_equal(ids, plan(SamplingSpec(), seed=1))


def test_sequential_is_sorted_and_respects_filter():
    assert plan(SamplingSpec(kind="sequential")).tolist() == list(range(len(LABELS)))
    ids = plan(SamplingSpec(kind="sequential", classes=[2, 3]))
    assert ids.tolist() == sorted(np.flatnonzero(LABELS_SHUFFLED >= 2).tolist())


@pytest.mark.parametrize("kind,q", [("instance", 1.0), ("sqrt", 0.5), ("class", 0.0), ("power", 0.25)])
def test_frequencies_match_n_to_the_q(kind, q):
    n = 10_000
    spec = SamplingSpec(kind=kind, q=q if kind == "power" else None, epoch_size=n)
    got = drawn_per_class(plan(spec))
    want = n * class_probabilities(COUNTS, q)
    assert got.sum() == n
    assert np.all(np.abs(got - want) <= 1), (got, want)  # largest remainder: off by < 1


def test_draws_within_a_class_cover_it_evenly():
    # class-balanced: the 9-sample class gets 2500 draws, so each of its samples 277 or 278 times.
    ids = plan(SamplingSpec(kind="class", epoch_size=10_000))
    tail = ids[LABELS_SHUFFLED[ids] == 3]
    per_sample = np.bincount(tail, minlength=len(LABELS))[LABELS_SHUFFLED == 3]
    assert per_sample.max() - per_sample.min() <= 1
    # 2500 draws from the 400-sample class: every sample 6 or 7 times
    head = ids[LABELS_SHUFFLED[ids] == 0]
    assert set(np.bincount(head)[LABELS_SHUFFLED == 0].tolist()) <= {6, 7}


@pytest.mark.parametrize("epoch,t", [(0, 0.0), (3, 1 / 3), (9, 1.0), (12, 1.0)])
def test_progressive_moves_from_instance_to_class_balanced(epoch, t):
    # classifier-balancing: t = linspace(0, 1, T)[epoch], so the last epoch (T-1) is purely
    # class-balanced. (Before: t = epoch/T, which never reached p^CB.)
    spec = SamplingSpec(kind="progressive", epoch_size=10_000)
    want_p = (1 - t) * class_probabilities(COUNTS, 1.0) + t * class_probabilities(COUNTS, 0.0)
    np.testing.assert_allclose(epoch_weights(COUNTS, spec, epoch, 10), want_p)
    got = drawn_per_class(plan(spec, epoch=epoch, total=10))
    assert np.all(np.abs(got - 10_000 * want_p) <= 1)


def test_progressive_first_and_last_epochs_are_exactly_ib_and_cb():
    spec = SamplingSpec(kind="progressive")
    for total in (2, 3, 10):
        np.testing.assert_array_equal(epoch_weights(COUNTS, spec, 0, total), COUNTS / COUNTS.sum())
        np.testing.assert_array_equal(epoch_weights(COUNTS, spec, total - 1, total), np.full(4, 0.25))
    # T = 3 on two classes [90, 10]: tail p = 0.1, 0.3, 0.5 (was 0.1, 0.233, 0.367)
    tail = [epoch_weights(np.array([90, 10]), spec, e, 3)[1] for e in range(3)]
    np.testing.assert_allclose(tail, [0.1, 0.3, 0.5])
    # one-epoch stage: no division by zero, instance-balanced (linspace(0, 1, 1) = [0])
    np.testing.assert_array_equal(epoch_weights(COUNTS, spec, 0, 1), COUNTS / COUNTS.sum())


def test_class_filter_removes_classes_entirely():
    ids = plan(SamplingSpec(classes=[1, 2, 3]))
    assert sorted(ids.tolist()) == np.flatnonzero(LABELS_SHUFFLED != 0).tolist()
    got = drawn_per_class(plan(SamplingSpec(kind="class", classes=[0, 3], epoch_size=1000)))
    assert got.tolist() == [500, 0, 0, 500]


def test_per_class_draws_exactly_k_with_replacement_only_where_needed():
    ids = plan(SamplingSpec(kind="class", per_class=50, classes=[0, 2, 3]))
    assert drawn_per_class(ids).tolist() == [50, 0, 50, 50]
    assert len(np.unique(ids[LABELS_SHUFFLED[ids] == 0])) == 50        # 400 available: no repeats
    assert len(np.unique(ids[LABELS_SHUFFLED[ids] == 2])) == 25        # 25 available: each twice
    tail = np.bincount(ids[LABELS_SHUFFLED[ids] == 3])
    assert set(tail[tail > 0].tolist()) <= {5, 6}                      # 50 over 9 samples


def test_class_balanced_ties_rotate_between_epochs():
    # 10 draws over 4 classes: 2 classes get 3; which ones must not be fixed forever.
    spec = SamplingSpec(kind="class", epoch_size=10)
    totals = sum(drawn_per_class(plan(spec, epoch=e)) for e in range(200))
    assert totals.min() > 450 and totals.max() < 550


def multiset(ids: np.ndarray) -> list[int]:
    return sorted(ids.tolist())


@pytest.mark.parametrize("spec", [
    SamplingSpec(kind="class", per_class=50),                        # redraw None -> "stage"
    SamplingSpec(kind="class", per_class=50, redraw="stage"),
    SamplingSpec(kind="sqrt", epoch_size=300, redraw="stage"),
    SamplingSpec(kind="progressive", per_class=20, redraw="stage"),
])
def test_redraw_stage_keeps_the_sub_dataset_and_reshuffles_its_order(spec):
    epochs = [plan(spec, epoch=e) for e in range(4)]
    assert all(multiset(p) == multiset(epochs[0]) for p in epochs[1:])   # same sub-dataset
    assert all(not np.array_equal(p, epochs[0]) for p in epochs[1:])     # new order each epoch
    assert multiset(plan(spec, seed=1)) != multiset(epochs[0])           # another stage: another subset


@pytest.mark.parametrize("spec", [
    SamplingSpec(kind="class", per_class=50, redraw="epoch"),
    SamplingSpec(kind="sqrt", epoch_size=300),                       # redraw None -> "epoch"
])
def test_redraw_epoch_draws_a_new_sub_dataset_every_epoch(spec):
    a, b = plan(spec, epoch=0), plan(spec, epoch=1)
    assert multiset(a) != multiset(b) and not np.array_equal(a, b)


def test_redraw_resolution_and_the_old_epoch_plans_are_unchanged():
    assert SamplingSpec(per_class=5).resolved_redraw == "stage"
    assert SamplingSpec().resolved_redraw == "epoch"
    assert SamplingSpec(per_class=5, redraw="epoch").resolved_redraw == "epoch"
    # A full instance epoch is the whole split either way: redraw is ignored there.
    assert SamplingSpec(redraw="stage").resolved_redraw == "epoch"
    assert np.array_equal(plan(SamplingSpec(redraw="stage"), epoch=2), plan(SamplingSpec(), epoch=2))
    # "epoch" reproduces the plan of the single-stream sampler it replaced (fixed ids).
    assert plan(SamplingSpec(kind="class", epoch_size=8), epoch=1)[:8].tolist() == OLD_CLASS_PLAN


@pytest.mark.parametrize("spec,match", [
    (dict(classes=[1, 7]), "class 7"),
    (dict(kind="class", per_class=10), "class 4"),
])
def test_requested_empty_class_is_an_error(spec, match):
    counts = np.array([3, 3, 3, 3, 0])
    labels = np.repeat(np.arange(4), 3)
    s = SamplingSpec(**spec)
    if "per_class" in spec:
        from datasets.sampling import check_spec
        with pytest.raises(DataError, match=match):
            check_spec(counts, s)
    else:
        with pytest.raises(DataError, match=match):
            epoch_plan(labels, s, epoch=0, total_epochs=1, seed=0)


@pytest.mark.parametrize("bad,match", [
    (dict(kind="bogus"), "unknown kind 'bogus'"),
    (dict(kind="power"), "needs q"),
    (dict(kind="class", q=0.5), "only used with kind 'power'"),
    (dict(per_class=0), "per_class"),
    (dict(per_class=5, epoch_size=10), "not both"),
    (dict(kind="sequential", per_class=5), "sequential"),
    (dict(redraw="never"), "unknown redraw 'never'"),
    (dict(kind="progressive", redraw="stage"), "progressive"),
])
def test_bad_specs_are_rejected(bad, match):
    with pytest.raises(DataError, match=match):
        SamplingSpec(**bad)


def test_from_dict_names_valid_keys():
    assert SamplingSpec.from_dict({"kind": "sqrt"}).kind == "sqrt"
    assert SamplingSpec.from_dict(None) == SamplingSpec()
    with pytest.raises(DataError, match="unknown key.*'per_klass'.*valid keys"):
        SamplingSpec.from_dict({"per_klass": 3})


@pytest.mark.parametrize("n,batch,world", [(37, 4, 2), (534, 32, 2), (100, 7, 3), (8, 4, 4), (3, 1, 2)])
def test_rank_batches_partition_the_plan_evenly(n, batch, world):
    plan_ids = np.random.default_rng(0).permutation(n)
    per_rank = [rank_batches(plan_ids, batch, r, world) for r in range(world)]
    assert len({len(b) for b in per_rank}) == 1                       # same step count everywhere
    every = np.concatenate([np.concatenate(b) for b in per_rank])
    assert sorted(every.tolist()) == list(range(n))                   # exactly once in total
    sizes = [len(x) for b in per_rank for x in b]
    assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1
    if -(-n // (world * batch)) * world <= n:   # otherwise batches must grow to stay non-empty
        assert max(sizes) <= batch


@pytest.mark.parametrize("n,batch,world", [(577, 64, 1), (37, 4, 2), (100, 7, 3), (8, 4, 4)])
def test_equal_batches_have_one_size_and_cover_the_plan(n, batch, world):
    plan_ids = np.random.default_rng(0).permutation(n)
    plain = [rank_batches(plan_ids, batch, r, world) for r in range(world)]
    equal = [rank_batches(plan_ids, batch, r, world, equal=True) for r in range(world)]
    assert [len(b) for b in equal] == [len(b) for b in plain]         # same steps: resume positions hold
    sizes = {len(x) for b in equal for x in b}
    assert len(sizes) == 1 and sizes.pop() <= max(batch, -(-n // world))
    every = np.concatenate([np.concatenate(b) for b in equal])
    assert set(every.tolist()) == set(range(n))                        # nothing dropped
    assert len(every) - n < len(plain[0]) * world                      # fewer repeats than batches


def test_rank_batches_errors():
    with pytest.raises(DataError, match="cannot feed 4 ranks"):
        rank_batches(np.arange(3), 8, 0, 4)
    with pytest.raises(DataError, match="rank 2"):
        rank_batches(np.arange(30), 8, 2, 2)


def test_unlabeled_samples_are_evaluated_but_never_drawn():
    labels = np.array([0, -1, 1, -1, 1, 0])
    assert epoch_plan(labels, SamplingSpec(kind="sequential"), epoch=0, total_epochs=1, seed=0).tolist() == list(range(6))
    plan = epoch_plan(labels, SamplingSpec(), epoch=0, total_epochs=1, seed=0)
    assert sorted(plan.tolist()) == [0, 2, 4, 5]
    plan = epoch_plan(labels, SamplingSpec(kind="class", per_class=3), epoch=0, total_epochs=1, seed=0)
    assert -1 not in labels[plan] and len(plan) == 6


def test_stages_with_one_draw_seed_share_their_per_class_sub_dataset():
    """Seed 000's stages 3a and 3b: one draw of per_class, shared; each stage its own order."""
    from datasets.sampling import sub_dataset_digest

    labels = np.repeat(np.arange(4), [300, 40, 9, 2])
    spec = SamplingSpec(kind="class", per_class=20)
    a = epoch_plan(labels, spec, epoch=0, total_epochs=3, seed=2, draw_seed=7)
    b = epoch_plan(labels, spec, epoch=1, total_epochs=2, seed=3, draw_seed=7)
    assert sorted(a) == sorted(b) and not np.array_equal(a, b)
    assert sub_dataset_digest(a) == sub_dataset_digest(b)
    c = epoch_plan(labels, spec, epoch=0, total_epochs=3, seed=2, draw_seed=8)
    assert sub_dataset_digest(c) != sub_dataset_digest(a)
    # without draw_seed each stage seed draws its own (the former behaviour)
    assert sub_dataset_digest(epoch_plan(labels, spec, epoch=0, total_epochs=3, seed=2)) != \
        sub_dataset_digest(epoch_plan(labels, spec, epoch=0, total_epochs=3, seed=3))


def test_stage_seeds_share_the_draw_but_not_the_order():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from trainer_helpers import fake_index
    from trainer.spec.config import validate
    from trainer.spec.resolve import resolve
    from trainer.streams import stage_seeds, sub_dataset

    st = {"sampler": {"kind": "class", "per_class": 30}}
    cfg = validate({"data": {"shards": "/x", "batch_size": 16}, "stages": [
        {"name": "a", "steps": 5}, {"name": "3a", "steps": 5, **st}, {"name": "3b", "steps": 3, **st}]})
    index = fake_index([200, 50, 10])
    stages = resolve(cfg, index).stages
    labels = index.split("train").labels
    assert stage_seeds(4, stages[1])[0] != stage_seeds(4, stages[2])[0]
    assert sub_dataset(labels, stages[0], 4) is None                # instance: all data each epoch
    a, b = sub_dataset(labels, stages[1], 4), sub_dataset(labels, stages[2], 4)
    assert a == b and a["samples"] == 90 and a["distinct"] == 30 + 30 + 10
    assert sub_dataset(labels, stages[1], 5)["digest"] != a["digest"]
