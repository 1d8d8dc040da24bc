"""Before any training process starts (and any GPU is touched): check the recipe, the overrides,
the world size and an existing run folder; print the shards folder the run will read.

    python launch/slurm/check_launch.py WORLD RECIPE [key=value ...]

A run folder of another recipe, a recipe the shards cannot feed, a batch that does not split
over the processes: one line `error: ...` and exit 1, before any node starts. With
SHARDS_STAGE_DIR set, the check reads the node-local copy the job will stage.
"""
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))   # the repository, as `python -m` would

from shards.errors import DataError  # noqa: E402
from trainer.errors import ConfigError  # noqa: E402
from trainer.preflight import check_launch  # noqa: E402
from trainer.spec.config import load_config  # noqa: E402


def main(argv: list[str]) -> None:
    try:
        world, cfg = int(argv[0]), load_config(argv[1], argv[2:])
        shards = cfg["data"]["shards"]
        if os.environ.get("SHARDS_STAGE_DIR"):  # the run will read the staged copy
            cfg["data"]["shards"] = str(Path(os.environ["SHARDS_STAGE_DIR"]) / Path(shards).name)
        check_launch(cfg, world, shards)
    except (ConfigError, DataError) as e:
        sys.exit(f"error: {e}")
    print(shards)


if __name__ == "__main__":
    main(sys.argv[1:])
