"""(e) The default pipeline from a clean results folder: wall time and peak summed resident memory of the
Snakemake process tree; (f) the time of `snakemake -n` after that complete run; (g) classifier-grid throughput
(every classify job forced to rerun) with 1 and with 2 cores.

Runs in a fresh copy of the tracked files (the working tree's results/ are not touched):

    .venv/bin/python benchmarks/pipeline_run.py               # e, f and g (about 20 minutes on 2 cores)
    .venv/bin/python benchmarks/pipeline_run.py --skip-grid   # e and f

Targets on a 2-core machine: (e) at most 10 minutes and 4 GiB; (f) at most 3 s.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import save  # noqa: E402
from peak_memory import tree_rss  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))


def run_watched(args: list[str], cwd: Path, interval: float = 0.5) -> tuple[float, int, str]:
    """Wall seconds, peak summed RSS in bytes of the process tree, and the combined output of one command."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out:
        child = subprocess.Popen(args, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        proc, peak = psutil.Process(child.pid), 0
        while child.poll() is None:
            peak = max(peak, tree_rss(proc))
            time.sleep(interval)
        seconds = time.perf_counter() - start
        out.seek(0)
        text = out.read()
    if child.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({child.returncode}):\n{text[-3000:]}")
    return seconds, peak, text


def job_count(text: str, rule: str) -> int:
    m = re.search(rf"^{rule}\s+(\d+)\s*$", text, re.M)
    return int(m.group(1)) if m else 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--skip-grid", action="store_true", help="leave out (g)")
    ap.add_argument("--keep", action="store_true", help="keep the copy (its path is printed)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="medaug-bench-"))
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout.split(b"\0")
    for name in filter(None, (f.decode() for f in files)):
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, work / name)
    print(f"clean copy in {work}", flush=True)
    rows = []
    seconds, peak, text = run_watched([SNAKEMAKE, "--profile", "profiles/default"], work)
    rows.append({"benchmark": "e: default pipeline, clean results", "seconds": seconds, "peak_rss_gib": peak / 2**30,
                 "jobs": job_count(text, "total"), "target": "<= 600 s, <= 4 GiB"})
    print(rows[-1], flush=True)
    dry = []
    for _ in range(3):
        seconds, peak, text = run_watched([SNAKEMAKE, "--profile", "profiles/default", "-n"], work, interval=0.05)
        if "Nothing to be done" not in text:
            raise RuntimeError(f"the dry run after a complete run found work:\n{text[-2000:]}")
        dry.append(seconds)
    rows.append({"benchmark": "f: snakemake -n after a complete run", "seconds": min(dry),
                 "peak_rss_gib": peak / 2**30, "jobs": 0, "target": "<= 3 s"})
    print(rows[-1], flush=True)
    if not args.skip_grid:
        for cores in (1, 2):
            seconds, peak, text = run_watched([SNAKEMAKE, "--profile", "profiles/default", "--cores", str(cores),
                                               "--forcerun", "classify", "--until", "classify"], work)
            n = job_count(text, "classify")
            rows.append({"benchmark": f"g: classifier grid, {cores} core(s)", "seconds": seconds,
                         "peak_rss_gib": peak / 2**30, "jobs": n, "jobs_per_minute": 60 * n / seconds,
                         "target": ""})
            print(rows[-1], flush=True)
    save("pipeline_run", rows)
    if args.keep:
        print(f"kept {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
