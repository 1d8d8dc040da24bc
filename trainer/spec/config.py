"""Recipes: a YAML file plus dotted `key=value` overrides, checked against trainer.spec.schema with
its defaults filled in. Every unknown or mistyped key is a ConfigError that names the key and
lists the valid keys at that level, with the closest one suggested; a key that moved names
its new spelling. The validated dict is what RUN/config.yaml holds; trainer.spec.resolve resolves it.
"""
from __future__ import annotations

import copy
import difflib
import time
from pathlib import Path
from typing import Any

import yaml

from shards.atomic import write_atomic
from trainer.errors import ConfigError
from trainer.spec.schedule import LENGTHS
from trainer.spec.schema import (CLASSIFIERS, DEFAULT_LOSS, LIGHT_SCHEMA, MOVED, OPEN, REQUIRED, RESUME_FREE,
                                 STAGE, Field, full_schema)

RECIPES_DIR = Path(__file__).parents[1] / "recipes"


# ---------------------------------------------------------------- loading
def recipe_path(name_or_path: str) -> Path:
    """A path, or the name of a built-in recipe (`joint`, `three_stage_mini`, …)."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    builtin = RECIPES_DIR / f"{name_or_path.removesuffix('.yaml')}.yaml"
    if builtin.is_file():
        return builtin
    names = sorted(x.stem for x in RECIPES_DIR.glob("*.yaml"))
    raise ConfigError(f"{name_or_path}: no such recipe file; built-in recipes: {', '.join(names)}")


def read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping of keys, got {type(data).__name__}")
    return data


def load_config(recipe: str, overrides: list[str] = ()) -> dict:
    """Read a recipe, apply `key=value` overrides, validate and fill defaults."""
    path = recipe_path(recipe)
    raw = read_yaml(path)
    apply_overrides(raw, overrides)
    cfg = validate(raw, source=str(path))
    if cfg["run"]["dir"] is None:
        cfg["run"]["dir"] = str(fresh_run_dir(path.stem))
    if cfg["run"]["recipe"] is None:
        cfg["run"]["recipe"] = str(path)
    return cfg


def fresh_run_dir(recipe: str, root: Path = Path("runs"), now: float | None = None) -> Path:
    """The default run folder: runs/<recipe>/<YYYYmmdd-HHMMSS>, a new one for every run (a
    suffix when that second's folder exists). Continuing a run is explicit: `resume RUN`, or
    the same run.dir again. Under several processes rank 0's choice wins (preflight.prepare)."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    folder, n = root / recipe / stamp, 1
    while folder.exists():
        n += 1
        folder = root / recipe / f"{stamp}-{n}"
    return folder


def apply_overrides(raw: dict, overrides: list[str]) -> None:
    """`a.b.0.c=value` sets raw["a"]["b"][0]["c"]; the value is parsed as YAML (so 3 is an int).
    A length given on the command line (`stages.0.epochs=2`) replaces the recipe's length, in
    whichever unit the recipe gave it (`steps: 540`)."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected key=value (e.g. stages.0.epochs=2)")
        try:
            value = yaml.safe_load(text) if text != "" else ""
        except yaml.YAMLError:
            value = text
        if isinstance(value, (list, dict)) and text.strip()[:1] not in ("[", "{"):
            value = text  # `-` or `a: b` meant as a plain string, not YAML block syntax
        parent, _, last = key.rpartition(".")
        if last in LENGTHS and value is not None:
            for other in LENGTHS:
                if other != last:
                    set_dotted(raw, f"{parent}.{other}", None)
        set_dotted(raw, key, value)


def set_dotted(raw: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node: Any = raw
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        where = ".".join(parts[:i]) or "<top>"
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"override {key}: {where} is a list of {len(node)} items, "
                                  f"{part!r} is not an index in 0..{len(node) - 1}")
            idx: Any = int(part)
        elif isinstance(node, dict):
            idx = part
        else:
            raise ConfigError(f"override {key}: {where} is a value, not a section")
        if last:
            node[idx] = value
        else:
            if isinstance(node, dict) and node.get(idx) is None:
                node[idx] = {}
            node = node[idx]


# ---------------------------------------------------------------- validation
def _suggest(key: str, valid) -> str:
    close = difflib.get_close_matches(str(key), [str(v) for v in valid], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check_leaf(path: str, f: Field, value: Any) -> Any:
    if value is None:
        if f.nullable or f.default is None:
            return None
        raise ConfigError(f"{path}: a value is required")
    ok_types = f.types
    if float in ok_types and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)  # 1 is a fine learning rate
    if float in ok_types and isinstance(value, str):
        try:
            value = float(value)  # YAML 1.1 reads 1e-3 (no dot) as a string
        except ValueError:
            pass
    if isinstance(value, bool) and bool not in ok_types:
        ok = False
    else:
        ok = isinstance(value, ok_types)
    if not ok:
        want = " or ".join(t.__name__ for t in ok_types)
        raise ConfigError(f"{path}: expected {want}, got {type(value).__name__} {value!r}")
    if f.choices and value not in f.choices:
        raise ConfigError(f"{path}: {value!r} is not one of {', '.join(map(str, f.choices))}"
                          f"{_suggest(value, f.choices)}")
    if f.item_type is not None:
        items = []
        for j, v in enumerate(value):
            if f.item_type is float and isinstance(v, int) and not isinstance(v, bool):
                v = float(v)
            if not isinstance(v, f.item_type) or isinstance(v, bool):
                raise ConfigError(f"{path}[{j}]: expected {f.item_type.__name__}, got {v!r}")
            items.append(v)
        value = items
    return value


def _check(path: str, spec: Any, value: Any) -> Any:
    if isinstance(spec, Field):
        return _check_leaf(path, spec, value)
    if spec == OPEN:
        if value is None:
            return None
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {type(value).__name__} {value!r}")
        return copy.deepcopy(value)
    if isinstance(spec, list):
        if not isinstance(value, list) or not value:
            raise ConfigError(f"{path}: expected a non-empty list of stages")
        return [_check(f"{path}.{i}", spec[0], v) for i, v in enumerate(value)]
    return _check_section(path, spec, value)


def _check_section(path: str, spec: dict, value: Any) -> dict:
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise ConfigError(f"{path or '<top>'}: expected a mapping, got {type(value).__name__} {value!r}")
    for key in value:
        moved = MOVED.get(("stage" if spec is STAGE else path, key))
        if moved:
            raise ConfigError(f"{_join(path, key)}: this key moved; use {moved.format(path)}")
        if key not in spec:
            where = path or "the top level"
            raise ConfigError(f"unknown key {_join(path, key)!r}{_suggest(key, spec)}; "
                              f"valid keys at {where}: {', '.join(spec)}")
    out = {}
    for key, sub in spec.items():
        sub_path = _join(path, key)
        if key in value:
            out[key] = _check(sub_path, sub, value[key])
        elif isinstance(sub, Field):
            if sub.default is REQUIRED:
                raise ConfigError(f"{sub_path}: missing (required)")
            out[key] = copy.deepcopy(sub.default)
        elif sub == OPEN:
            out[key] = None
        elif isinstance(sub, list):
            raise ConfigError(f"{sub_path}: missing (a list of stages is required)")
        else:
            out[key] = _check_section(sub_path, sub, {})
    return out


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def validate(raw: dict, source: str = "recipe") -> dict:
    try:
        _check_semantics(_check_section("", LIGHT_SCHEMA, raw), light=True)   # all but posthoc.<name>.*, no torch
        cfg = _check_section("", full_schema(), raw)
        _check_semantics(cfg)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    return cfg


def _check_semantics(cfg: dict, light: bool = False) -> None:
    """Checks that need more than one key; the ones that need the shards are in trainer.spec.resolve."""
    data = cfg["data"]
    for key in ("input_size", "tta"):
        if isinstance(data[key], str) and data[key] != "auto":
            raise ConfigError(f"data.{key}: expected a number or auto, got {data[key]!r}")
    for key in ("input_size", "batch_size", "eval_batch_size", "tta", "dali_threads"):
        if isinstance(data[key], int) and data[key] < 1:
            raise ConfigError(f"data.{key}: must be >= 1, got {data[key]}")
    if data["num_workers"] < 0:
        raise ConfigError("data.num_workers: must be >= 0")
    if cfg["optim"]["grad_accum"] < 1:
        raise ConfigError("optim.grad_accum: must be >= 1")
    for name, sec in ({} if light else cfg["posthoc"]).items():
        if any(k in sec for k in LENGTHS):
            _check_length(f"posthoc.{name}", sec)
    names = set()
    for i, st in enumerate(cfg["stages"]):
        where = f"stages.{i}"
        if st["name"] in names or "/" in st["name"]:
            raise ConfigError(f"{where}.name: {st['name']!r} is repeated or contains '/'")
        names.add(st["name"])
        _check_length(where, st)
        if st["loss"] is None:
            st["loss"] = dict(DEFAULT_LOSS)
        for c in st["classifiers"]:
            if c not in CLASSIFIERS:
                raise ConfigError(f"{where}.classifiers: {c!r} is not one of {', '.join(CLASSIFIERS)}"
                                  f"{_suggest(c, CLASSIFIERS)}")
        if len(st["augment"]["crop_scale"]) != 2:
            raise ConfigError(f"{where}.augment.crop_scale: expected two numbers [min, max]")
        if st["expand_rows"] == "restore" and st["head"] != "expand":
            raise ConfigError(f"{where}.expand_rows: restore applies to head: expand only")


def _check_length(where: str, section: dict) -> None:
    given = [k for k in LENGTHS if section[k] is not None]
    if len(given) > 1:
        raise ConfigError(f"{where}: give one of {', '.join(LENGTHS)}, not {' and '.join(given)} "
                          f"(set the others to null, e.g. {where}.{given[0]}=null)")
    if given and section[given[0]] < (0 if given[0] == "epochs" else 1):
        raise ConfigError(f"{where}.{given[0]}: must be >= {0 if given[0] == 'epochs' else 1}")


# ---------------------------------------------------------------- run folders
def config_differences(a: dict, b: dict, path: str = "") -> list[str]:
    """Keys whose values differ (ignoring the ones that may change on resume)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            if tuple(_join(path, k).split(".")) in RESUME_FREE:
                continue
            out += config_differences(a.get(k), b.get(k), _join(path, k))
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in config_differences(x, y, _join(path, i))]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def dump_yaml(cfg: dict) -> str:
    return yaml.safe_dump(cfg, sort_keys=False, default_flow_style=None)



def save_config(cfg: dict, run_dir: Path) -> None:
    write_atomic(Path(run_dir) / "config.yaml", dump_yaml(cfg))


def load_run_config(run_dir: Path) -> dict:
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"{path}: missing; is {run_dir} a run folder?")
    return validate(read_yaml(path), source=str(path))
