"""Run a command and print its wall time and the peak of the summed resident memory of its process tree.

    .venv/bin/python benchmarks/peak_memory.py make run
    .venv/bin/python benchmarks/peak_memory.py --pid 1234      # watch a running process tree instead
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time

import psutil


def tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pid", type=int, help="watch this running process instead of starting the command")
    ap.add_argument("--interval", type=float, default=0.5, help="seconds between samples")
    ap.add_argument("command", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    start = time.time()
    child = None
    if args.pid:
        proc = psutil.Process(args.pid)
    else:
        if not args.command:
            ap.error("give a command or --pid")
        child = subprocess.Popen(args.command)
        proc = psutil.Process(child.pid)
    peak = 0
    while proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
        peak = max(peak, tree_rss(proc))
        time.sleep(args.interval)
    rc = child.wait() if child else 0
    print(f"wall time: {time.time() - start:.1f} s")
    print(f"peak summed RSS of the process tree: {peak / 2**30:.2f} GiB")
    return rc


if __name__ == "__main__":
    sys.exit(main())
