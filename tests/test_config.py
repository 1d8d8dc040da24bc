"""Recipes: YAML + dotted overrides, schema defaults, and one clear error per bad key."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from trainer.spec.config import (RECIPES_DIR, apply_overrides, config_differences, load_config,
                            load_run_config, save_config, validate)
from trainer.errors import ConfigError
from trainer.spec.resolve import resolve

sys.path.insert(0, str(Path(__file__).parent))
from trainer_helpers import fake_index  # noqa: E402

BUILTIN = sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def minimal(**extra) -> dict:
    raw = {"data": {"shards": "/x"}, "stages": [{"name": "a", "epochs": 2}]}
    raw.update(extra)
    return raw


def test_builtin_recipes_exist_and_validate():
    for name in ("joint", "two_stage", "decoupled", "three_stage"):
        assert name in BUILTIN and f"{name}_mini" in BUILTIN
    for name in BUILTIN:
        cfg = load_config(name)
        folder = Path(cfg["run"]["dir"])   # a fresh dated folder: runs/<recipe>/<YYYYmmdd-HHMMSS>
        assert cfg["stages"] and folder.parent == Path("runs") / name and len(folder.name) == 15


def test_three_stage_is_seed_000(monkeypatch):
    monkeypatch.setattr("trainer.spec.resolve._range_axis", lambda *a: "horizontal")  # no chips to read here
    cfg = load_config("three_stage")
    st = cfg["stages"]
    assert [s["epochs"] for s in st] == [20, 100, 20, 10]
    assert cfg["model"] == {"name": "shake_shake", "depth": 26, "width": 32, "head": "auto", "cosine_scale": 30.0,
                            "fusion": "early"}
    assert st[1]["head"] == "subset" and st[1]["sampler"]["classes"] == list(range(1, 10))
    assert st[2]["head"] == "expand" and st[2]["sampler"] == {**st[2]["sampler"], "kind": "class", "per_class": 5000}
    assert st[2]["train"] == "all" and st[3]["train"] == "classifier"
    assert cfg["data"]["tta"] == "auto" and cfg["optim"]["momentum"] > 0  # views that keep the radar geometry
    spec = resolve(cfg, fake_index([1000] * 10))
    assert spec.stages[1].head_classes == tuple(range(1, 10)) and spec.stages[2].head_classes == tuple(range(10))


def test_defaults_filled():
    cfg = validate(minimal())
    assert cfg["data"]["input_size"] == "auto" and cfg["optim"]["schedule"] == "cosine"
    st = cfg["stages"][0]
    assert st["train"] == "all" and st["head"] == "keep" and st["loss"] == {"name": "ce"}
    assert st["sampler"]["kind"] == "instance" and st["augment"]["rotate"] == "none"


def test_overrides_parse_yaml_scalars_and_indices():
    raw = minimal()
    apply_overrides(raw, ["stages.0.epochs=5", "optim.lr=0.5", "data.shards=/y", "optim.nesterov=false",
                          "stages.0.sampler.classes=[1,2]", "run.dir=/tmp/r"])
    cfg = validate(raw)
    assert cfg["stages"][0]["epochs"] == 5 and cfg["optim"]["lr"] == 0.5
    assert cfg["optim"]["nesterov"] is False and cfg["stages"][0]["sampler"]["classes"] == [1, 2]
    assert cfg["data"]["shards"] == "/y" and cfg["run"]["dir"] == "/tmp/r"


def test_int_accepted_for_float():
    assert validate(minimal(optim={"lr": 1}))["optim"]["lr"] == 1.0


def test_exponent_without_dot_is_a_float():
    raw = minimal()
    apply_overrides(raw, ["optim.lr=1e-3", "data.shards=-"])  # YAML 1.1 reads both as strings
    cfg = validate(raw)
    assert cfg["optim"]["lr"] == 0.001 and cfg["data"]["shards"] == "-"


@pytest.mark.parametrize("raw, words", [
    (minimal(optim={"lrr": 0.1}), ["optim.lrr", "did you mean 'lr'", "momentum"]),
    (minimal(dat={}), ["'dat'", "did you mean 'data'", "stages"]),
    ({"data": {"shards": "/x"}, "stages": [{"name": "a", "epoch": 3}]}, ["stages.0.epoch", "'epochs'"]),
    ({"data": {"shards": "/x"}, "stages": [{"name": "a", "sampler": {"kin": "class"}}]}, ["stages.0.sampler.kin", "per_class"]),
])
def test_unknown_key_lists_valid_keys(raw, words):
    with pytest.raises(ConfigError) as e:
        validate(raw)
    for w in words:
        assert w in str(e.value)


@pytest.mark.parametrize("raw, words", [
    (minimal(optim={"lr": "fast"}), ["optim.lr", "expected float", "'fast'"]),
    (minimal(data={"shards": "/x", "batch_size": 1.5}), ["data.batch_size", "expected int"]),
    (minimal(optim={"nesterov": 1}), ["optim.nesterov", "expected bool"]),
    ({"data": {"shards": "/x"}, "stages": [{"name": "a", "train": "backbone"}]}, ["stages.0.train", "classifier"]),
    ({"data": {"shards": "/x"}, "stages": [{"name": "a", "classifiers": ["crtt"]}]}, ["'crt'"]),
    ({"data": {"shards": "/x"}, "stages": []}, ["stages"]),
    ({"stages": [{"name": "a"}]}, ["data.shards", "required"]),
    ({"data": {"shards": "/x"}, "stages": [{"name": "a"}, {"name": "a"}]}, ["repeated"]),
    (minimal(optim={"precision": "fp8"}), ["optim.precision", "bf16"]),
])
def test_bad_values(raw, words):
    with pytest.raises(ConfigError) as e:
        validate(raw)
    for w in words:
        assert w in str(e.value)


@pytest.mark.parametrize("item, words", [
    ("stages.3.epochs=1", ["stages", "0..0"]),
    ("nokey", ["key=value"]),
    ("stages.0.name.x=1", ["stages.0.name is a value"]),
])
def test_bad_overrides(item, words):
    with pytest.raises(ConfigError) as e:
        apply_overrides(minimal(), [item])
    for w in words:
        assert w in str(e.value)


def test_unknown_override_key_is_an_error():
    with pytest.raises(ConfigError, match="optim.lrr"):
        load_config("joint_mini", ["optim.lrr=1"])


def test_missing_recipe_names_builtins(tmp_path):
    with pytest.raises(ConfigError, match="joint_mini"):
        load_config(str(tmp_path / "nope.yaml"))


def test_bad_yaml_names_file(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match=str(p)):
        load_config(str(p))


def test_stage_optim_overrides():
    cfg = validate(minimal(stages=[{"name": "a", "optim": {"lr": 0.01, "momentum": 0.5}}]))
    o = resolve(cfg, fake_index([5, 5])).stages[0].optim
    assert o.lr == 0.01 and o.momentum == 0.5 and o.weight_decay == cfg["optim"]["weight_decay"]


def test_stage_lr_has_one_spelling():
    with pytest.raises(ConfigError, match=r"stages.0.lr: this key moved; use stages.0.optim.lr"):
        validate(minimal(stages=[{"name": "a", "lr": 0.01}]))


def test_resolved_config_roundtrip(tmp_path):
    cfg = load_config("three_stage_mini", ["data.shards=/s", f"run.dir={tmp_path}"])
    save_config(cfg, tmp_path)
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["data"]["shards"] == "/s"
    assert load_run_config(tmp_path) == cfg
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp file left
    assert (tmp_path / "config.yaml").stat().st_mode & 0o044  # readable by others, like any file


def test_config_differences_ignore_resume_free_keys():
    a = validate(minimal())
    b = validate(minimal(data={"shards": "/x", "num_workers": 0}))
    assert config_differences(a, b) == []
    c = validate(minimal(optim={"lr": 0.3}))
    assert config_differences(a, c) == ["optim.lr: 0.1 != 0.3"]


def test_ldam_gets_its_cosine_head_and_refuses_row_rescaling():
    cfg = validate(minimal(stages=[{"name": "a", "loss": {"name": "ldam"}}]))
    assert resolve(cfg, fake_index([9, 3])).model["head"] == "cosine"
    cfg = validate(minimal(stages=[{"name": "a", "loss": {"name": "ldam"}, "classifiers": ["lws"]}]))
    with pytest.raises(ConfigError, match="stages.0.classifiers: lws"):
        resolve(cfg, fake_index([9, 3]))
    cfg = validate(minimal(model={"head": "linear"}, stages=[{"name": "a", "loss": {"name": "ldam"}}]))
    assert resolve(cfg, fake_index([9, 3])).model["head"] == "linear"


def test_a_length_override_replaces_the_recipe_length_in_any_unit():
    cfg = load_config("joint_mini", ["data.shards=/s", "stages.0.epochs=2"])
    assert (cfg["stages"][0]["epochs"], cfg["stages"][0]["steps"]) == (2, None)
    cfg = load_config("joint_mini", ["data.shards=/s", "stages.0.samples=6400"])
    assert (cfg["stages"][0]["samples"], cfg["stages"][0]["steps"]) == (6400, None)
