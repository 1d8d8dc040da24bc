"""Can this node reach the rendezvous head? One line either way, instead of a launcher that hangs.

    python launch/slurm/reach_head.py HEAD PORT [--is-host 0|1] [--timeout SECONDS]

Run by every launcher task of a multi-node job (launch/slurm/train.sbatch) before `accelerate
launch`. It resolves HEAD as this node sees it and prints `reach_head: <node> -> HEAD (ADDR):PORT`.
On the head itself (`--is-host 1`) that is all: its own launcher opens the port afterwards. On
the other nodes it then connects to HEAD:PORT until the head's launcher listens there (it starts
at about the same time), and gives up after `--timeout` seconds with one line
`error: ... cannot reach ...` and exit 2: a firewall that drops the packets, a wrong address or
interface, or a head that never came up. Without this, torch's rendezvous waits (the head up to
its join timeout, 600 s) and ends in a traceback. Standard library only: it runs before torch.
"""
from __future__ import annotations

import argparse
import socket
import sys
import time

PREFIX = "reach_head"


def resolve(head: str, port: int) -> str:
    """The IPv4/IPv6 address HEAD resolves to on this node; OSError when it does not resolve."""
    infos = socket.getaddrinfo(head, port, type=socket.SOCK_STREAM)
    return str(infos[0][4][0])


def wait_reachable(addr: str, port: int, timeout: float, attempt: float = 2.0) -> tuple[bool, str]:
    """Connect to ADDR:PORT until it accepts or `timeout` seconds passed: (reached, last error).
    The connection is closed at once; torch's TCPStore server ignores such a visitor."""
    end = time.monotonic() + timeout
    last = "no attempt"
    while True:
        left = end - time.monotonic()
        if left <= 0:
            return False, last
        try:
            with socket.create_connection((addr, port), timeout=min(attempt, left)):
                return True, ""
        except TimeoutError:   # no answer at all: packets dropped on the way
            last = "connection timed out"
        except OSError as e:   # refused: not listening yet, or a closed port
            last = e.strerror or type(e).__name__
        time.sleep(min(0.5, max(0.0, end - time.monotonic())))


def check(head: str, port: int, is_host: bool, timeout: float) -> int:
    """Print where the head is as seen from this node; 0 when reachable (or this is the head), else 2."""
    me = socket.gethostname()
    try:
        addr = resolve(head, port)
    except OSError as e:
        print(f"error: {me} cannot resolve the rendezvous head {head!r}: {e.strerror or e}", file=sys.stderr)
        return 2
    where = f"{head} ({addr}):{port}" if addr != head else f"{addr}:{port}"
    if is_host:
        print(f"{PREFIX}: {me} is the rendezvous head {where}", file=sys.stderr, flush=True)
        return 0
    started = time.monotonic()
    ok, why = wait_reachable(addr, port, timeout)
    if not ok:
        print(f"error: {me} cannot reach the rendezvous head {where} within {timeout:g} s ({why}); "
              f"check the address, the port and firewalls between the nodes", file=sys.stderr)
        return 2
    print(f"{PREFIX}: {me} -> {where} reachable after {time.monotonic() - started:.1f} s",
          file=sys.stderr, flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="reach_head.py", description=__doc__.split("\n\n")[0])
    p.add_argument("head")
    p.add_argument("port", type=int)
    p.add_argument("--is-host", type=int, choices=(0, 1), default=0, help="1 on the head node itself")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the head (120)")
    args = p.parse_args(argv)
    return check(args.head, args.port, bool(args.is_host), args.timeout)


if __name__ == "__main__":
    sys.exit(main())
