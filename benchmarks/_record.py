"""Shared by the benchmark scripts: the machine's description and the Parquet table each script writes."""
from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Callable

import pandas as pd

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    """CPU model, cores this process may use, torch version and GPU (if any)."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return {"cpu": cpu, "cores": len(os.sched_getaffinity(0)), "torch": torch.__version__, "gpu": gpu}


def best_times(fns: dict[str, Callable[[], object]], repeats: int = 5, warmup: int = 1) -> dict[str, float]:
    """The shortest wall time of each function over ``repeats`` calls after ``warmup`` untimed ones, the calls
    interleaved (a, b, a, b, ...) so that a slow spell of a shared machine does not fall on one of them only."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    best = {name: float("inf") for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t)
    return best


def save(name: str, rows: list[dict]) -> pd.DataFrame:
    """Print the rows and write them, with the machine's description, to benchmarks/results/<name>.parquet."""
    df = pd.DataFrame(rows)
    for key, value in machine().items():
        df[key] = value
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.parquet"
    df.to_parquet(path, index=False)
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.float_format", "{:.4g}".format):
        print(df.drop(columns=list(machine())).to_string(index=False))
    print(f"-> {path}")
    return df
