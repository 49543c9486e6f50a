"""Time and peak memory of the five cluster validity indices at n = 2,000, 5,000 and 20,000 points of 64
dimensions in 10 clusters (the cLDM paper's k range starts at 10).

    .venv/bin/python benchmarks/cluster_indices.py            # all three sizes
    .venv/bin/python benchmarks/cluster_indices.py 2000 5000  # chosen sizes
"""
from __future__ import annotations

import sys
import time
import tracemalloc

import numpy as np

from pipeline_lib.cluster.indices import c_index, calinski_harabasz, dunn, hartigan, mcclain_rao

INDICES = {"calinski_harabasz": calinski_harabasz, "dunn": dunn, "c_index": c_index, "hartigan": hartigan,
           "mcclain_rao": mcclain_rao}


def main(sizes: list[int], d: int = 64, k: int = 10) -> None:
    print(f"{'n':>7} {'index':>18} {'seconds':>9} {'peak MiB':>9} {'value':>12}")
    for n in sizes:
        rng = np.random.default_rng(0)
        centres = rng.normal(scale=2.0, size=(k, d))
        labels = rng.integers(0, k, size=n)
        X = centres[labels] + rng.normal(size=(n, d))
        for name, fn in INDICES.items():
            tracemalloc.start()
            t = time.perf_counter()
            value = fn(X, labels)
            seconds = time.perf_counter() - t
            peak = tracemalloc.get_traced_memory()[1] / 2**20
            tracemalloc.stop()
            print(f"{n:>7} {name:>18} {seconds:>9.2f} {peak:>9.1f} {value:>12.5g}", flush=True)


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [2000, 5000, 20000])
