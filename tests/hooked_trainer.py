"""The trainer with test hooks: what tests need and a recipe must not offer.

  python tests/hooked_trainer.py [--fail-at-step N] [--debug-ids] --config RECIPE [key=value ...]

--fail-at-step N  raise at global step N (resume tests; `python -m trainer resume RUN` goes on)
--rank-dirs       every rank asks for its own run folder (RUN-rank<r>), as ranks naming a default
                  dated folder in different seconds would; rank 0's must win
--debug-ids       every rank appends the sample ids it trains on to RUN/debug/ids-rank<r>.jsonl
                  and saves its weights after each stage to RUN/debug/model-stage<i>-rank<r>.pt
Works under `accelerate launch tests/hooked_trainer.py …` too.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from trainer.spec.config import load_config
from trainer.train.loop import Hooks


def _rank() -> int:
    from accelerate import PartialState

    return PartialState().process_index


def make_hooks(run_dir: Path, fail_at_step: int | None, debug_ids: bool) -> Hooks:
    hooks = Hooks()
    if fail_at_step is not None:
        def on_step(step: int) -> None:
            if step == fail_at_step:
                raise RuntimeError(f"injected failure at global step {step} (--fail-at-step)")
        hooks.on_step = on_step
    if debug_ids:
        def on_batch(stage: int, epoch: int, ids) -> None:
            path = run_dir / "debug" / f"ids-rank{_rank()}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a") as f:
                f.write(json.dumps({"stage": stage, "epoch": epoch, "ids": ids.tolist()}) + "\n")

        def on_stage_end(model, i: int) -> None:
            from trainer.train import checkpoint

            checkpoint.save_weights(model, run_dir / "debug" / f"model-stage{i}-rank{_rank()}.pt")
        hooks.on_batch, hooks.on_stage_end = on_batch, on_stage_end
    return hooks


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="tests/hooked_trainer.py")
    p.add_argument("--fail-at-step", type=int, default=None)
    p.add_argument("--debug-ids", action="store_true")
    p.add_argument("--rank-dirs", action="store_true")
    p.add_argument("--config", required=True)
    a, overrides = p.parse_known_args(argv)
    from trainer.run import train

    cfg = load_config(a.config, overrides)
    if a.rank_dirs:
        cfg["run"]["dir"] += f"-rank{os.environ.get('RANK', '0')}"   # no accelerate state before the run's
    return train(cfg, make_hooks(Path(cfg["run"]["dir"]), a.fail_at_step, a.debug_ids))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
