"""`python -m datasets synth|bench …` — the subcommands live in their own modules."""
from __future__ import annotations

import sys

USAGE = """usage: python -m datasets COMMAND [options]   (python -m datasets COMMAND --help for each)

commands:
  synth   write a synthetic SAR vehicle set in the NTIRE raw layout (then: python -m shards build)
  bench   images/s of the data loaders (shard reader, resident, DALI) on a shard folder

examples:
  python -m datasets synth data/mini/raw --preset mini
  python -m datasets bench --shards data/mini/shards"""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "synth":
        from datasets.synthetic import main as run
    elif command == "bench":
        from datasets.bench import main as run
    else:
        print(f"error: unknown command {command!r}\n{USAGE}", file=sys.stderr)
        return 2
    return run(rest)


if __name__ == "__main__":
    sys.exit(main())
