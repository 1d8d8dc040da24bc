"""A recipe resolved once against the shards: lengths, input size, head/sampler checks, notes."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from trainer.spec.config import load_config, validate
from trainer.errors import ConfigError
from trainer.spec.resolve import resolve

sys.path.insert(0, str(Path(__file__).parent))
from trainer_helpers import fake_index  # noqa: E402

COUNTS = [200, 100, 50, 20, 10, 5]   # 385 train chips


def recipe(*stages: dict, **top) -> dict:
    return validate({"data": {"shards": "/x", "batch_size": 32}, "stages": list(stages), **top})


@pytest.mark.parametrize("length, epochs", [({"epochs": 3}, 3), ({"steps": 130}, 10), ({"steps": 1}, 1),
                                            ({"samples": 32 * 130}, 10), ({}, 1)])
def test_length_in_epochs_steps_or_samples(length, epochs):
    st = resolve(recipe({"name": "a", **length}), fake_index(COUNTS)).stages[0]
    assert st.steps_per_epoch == 13          # ceil(385 / 32)
    assert st.epochs == epochs and st.total_steps == 13 * epochs


def test_same_steps_give_the_same_budget_on_a_10x_larger_set():
    small = resolve(recipe({"name": "a", "steps": 600}), fake_index(COUNTS)).stages[0]
    large = resolve(recipe({"name": "a", "steps": 600}), fake_index([c * 10 for c in COUNTS])).stages[0]
    assert abs(small.total_steps - 600) <= small.steps_per_epoch / 2
    assert abs(large.total_steps - 600) <= large.steps_per_epoch / 2
    assert small.epochs > 5 * large.epochs


def test_per_class_epochs_count_the_drawn_set():
    st = resolve(recipe({"name": "a", "steps": 40, "sampler": {"kind": "class", "per_class": 32}}),
                 fake_index(COUNTS)).stages[0]
    assert st.steps_per_epoch == 6 and st.epochs == 7   # 6 classes × 32 = 192 per epoch


def test_two_lengths_are_an_error():
    with pytest.raises(ConfigError, match="give one of epochs, steps, samples"):
        recipe({"name": "a", "epochs": 2, "steps": 100})


def test_input_size_follows_the_chips_unless_given():
    sizes = {"54x60": 10, "57x58": 30, "60x60": 20}
    assert resolve(recipe({"name": "a"}), fake_index(COUNTS, sizes)).input_size == 56
    assert resolve(recipe({"name": "a"}, data={"shards": "/x", "input_size": 40}),
                   fake_index(COUNTS, sizes)).input_size == 40
    assert resolve(recipe({"name": "a"}), fake_index(COUNTS, {"12x12": 5})).input_size == 12


def test_subset_head_with_an_unfiltered_sampler_is_refused():
    """The config hole that used to end in NaN: the sampler draws a class the head lacks."""
    with pytest.raises(ConfigError, match=r"stages.0: the sampler draws classes \[0\] that the head does not cover"):
        resolve(recipe({"name": "a", "head": "subset", "classes": [1, 2, 3, 4, 5]}), fake_index(COUNTS))
    ok = resolve(recipe({"name": "a", "head": "subset", "sampler": {"classes": [1, 2]}}), fake_index(COUNTS))
    assert ok.stages[0].head_classes == (1, 2) and ok.stages[0].loss_counts == (0, 100, 50, 0, 0, 0)


def test_a_later_stage_must_not_draw_outside_a_subset_head():
    with pytest.raises(ConfigError, match="stages.1: the sampler draws classes"):
        resolve(recipe({"name": "a", "head": "subset", "sampler": {"classes": [1, 2]}}, {"name": "b"}),
                fake_index(COUNTS))


def test_head_classes_through_the_three_stage_recipe(monkeypatch):
    monkeypatch.setattr("trainer.spec.resolve._range_axis", lambda *a: "horizontal")  # no chips to read here
    spec = resolve(load_config("three_stage", ["data.shards=/x"]), fake_index([500] * 10))
    assert [s.head_classes for s in spec.stages] == [tuple(range(10)), tuple(range(1, 10)),
                                                       tuple(range(10)), tuple(range(10))]


def test_class_ids_outside_the_shards_are_refused():
    with pytest.raises(ConfigError, match=r"stages.0.sampler.classes: classes \[7\] are not in the shards"):
        resolve(recipe({"name": "a", "sampler": {"classes": [1, 7]}}), fake_index(COUNTS))


def test_double_correction_is_noted_with_both_settings():
    spec = resolve(recipe({"name": "a", "sampler": {"kind": "class"}, "loss": {"name": "ce", "reweight": "cb"}},
                          {"name": "b", "loss": {"name": "cb"}}), fake_index(COUNTS))
    assert len(spec.notes) == 1
    assert "stages.0" in spec.notes[0] and "sampler.kind=class" in spec.notes[0] and "loss.reweight=cb" in spec.notes[0]


def test_expand_rows_restore_only_with_expand():
    with pytest.raises(ConfigError, match="expand_rows: restore applies to head: expand only"):
        recipe({"name": "a", "expand_rows": "restore"})


def test_posthoc_budgets_default_to_the_reference_epochs():
    spec = resolve(recipe({"name": "a"}), fake_index(COUNTS))
    assert spec.posthoc["crt"].epochs == 10 and spec.posthoc["lws"].epochs == 5
    spec = resolve(recipe({"name": "a"}, posthoc={"crt": {"steps": 30, "batch_size": 64}}), fake_index(COUNTS))
    assert spec.posthoc["crt"].epochs == 4   # 385 / 64 → 7 steps per epoch, 30 / 7 ≈ 4
    taus = spec.posthoc["tau_norm"]
    assert taus[0] == 0.0 and taus[-1] == 2.0 and len(taus) == 21


def test_auto_flips_and_views_follow_the_radar(monkeypatch):
    rec = recipe({"name": "a", "augment": {"hflip": "auto", "vflip": "auto"}}, data={"shards": "/x", "tta": "auto"})
    for axis, flips, views in (("horizontal", (False, True), ("identity", "vflip")),
                               ("vertical", (True, False), ("identity", "hflip")),
                               ("unknown", (True, False), ("identity", "hflip"))):
        monkeypatch.setattr("trainer.spec.resolve._range_axis", lambda *a, axis=axis: axis)
        spec = resolve(rec, fake_index(COUNTS))
        aug = spec.stages[0].augment
        assert (aug.hflip, aug.vflip) == flips and spec.tta_views == views and spec.range_axis == axis


def test_rotation_on_radar_chips_is_noted(monkeypatch):
    monkeypatch.setattr("trainer.spec.resolve._range_axis", lambda *a: "horizontal")
    spec = resolve(recipe({"name": "a", "augment": {"rotate": "right"}}), fake_index(COUNTS))
    assert any("augment.rotate=right turns the radar" in n for n in spec.notes)
