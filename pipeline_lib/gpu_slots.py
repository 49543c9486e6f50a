"""GPU slots for local runs.

``snakemake --resources gpu=N`` only counts: it keeps at most N GPU jobs running, but does not say which device
each one gets. A job that declares ``gpu=k`` therefore takes k free device ids from the configured list
(``gpu_devices``; by default every visible GPU) by locking ``<lock_dir>/gpu<id>.lock`` (an exclusive,
non-blocking ``fcntl.flock``), sets ``CUDA_VISIBLE_DEVICES`` to them and holds the locks until its process
exits. The kernel drops a flock when the process holding it ends, however it ends (SIGKILL included), so the
slot of a killed job is free for the next one; no stale lock is ever left to clean. Where all slots are taken
(more GPU jobs than devices, e.g. ``--resources gpu`` set above the device count) the job waits for one.

Under SLURM (``SLURM_JOB_ID`` set) the scheduler has assigned the job its devices already: nothing is done.
"""
from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path
from typing import Any, Sequence

from .io import log

LOCK_DIR = Path(".snakemake") / "gpu_slots"
_held: list = []  # open lock files of this process: the slots it holds until it exits


def visible_devices() -> list[str]:
    """The GPU ids this machine shows: CUDA_VISIBLE_DEVICES if set, else 0 .. torch.cuda.device_count() - 1."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d for d in env.split(",") if d.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def try_acquire(n: int, devices: Sequence[Any], lock_dir: str | Path = LOCK_DIR) -> list[str] | None:
    """Lock ``n`` of ``devices`` (in order) for this process and return their ids, or None (nothing held) when
    fewer than ``n`` are free."""
    devices = [str(d) for d in devices]
    if n > len(devices):
        raise ValueError(f"a job asks for {n} GPUs (its resources gpu, e.g. diffusion.gpus), gpu_devices (or the "
                         f"visible GPUs) has {len(devices)}: {devices}")
    Path(lock_dir).mkdir(parents=True, exist_ok=True)
    got = []
    for d in devices:
        fh = open(Path(lock_dir) / f"gpu{d}.lock", "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            continue
        got.append((d, fh))
        if len(got) == n:
            _held.extend(f for _, f in got)
            return [d for d, _ in got]
    for _, fh in got:
        fh.close()  # closing the file drops its lock
    return None


def acquire(n: int, devices: Sequence[Any], lock_dir: str | Path = LOCK_DIR, poll: float = 2.0,
            timeout: float | None = None) -> list[str]:
    """``try_acquire`` until ``n`` slots are free (every ``poll`` seconds), then set CUDA_VISIBLE_DEVICES."""
    start = time.monotonic()
    waited = False
    while True:
        ids = try_acquire(n, devices, lock_dir)
        if ids is not None:
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(ids)
            log.info("GPU slot%s %s (CUDA_VISIBLE_DEVICES)%s", "s" if n > 1 else "", ",".join(ids),
                     " after waiting" if waited else "")
            return ids
        if timeout is not None and time.monotonic() - start > timeout:
            raise TimeoutError(f"no {n} free GPU slots among {list(devices)} after {timeout:.0f} s")
        if not waited:
            log.info("all GPU slots of %s are taken; waiting for one", list(devices))
            waited = True
        time.sleep(poll)


def release() -> None:
    """Give back the slots this process holds (its exit does the same)."""
    while _held:
        _held.pop().close()


def claim_for_job(job: Any) -> list[str]:
    """The slots of a Snakemake job (the ``snakemake`` object of a script): ``resources.gpu`` of them from the
    config's ``gpu_devices`` (null: the visible GPUs). None on a machine without GPUs, or under SLURM."""
    n = int(getattr(job.resources, "gpu", 0) or 0)
    if n == 0:
        return []
    if os.environ.get("SLURM_JOB_ID"):
        log.info("SLURM job %s: CUDA_VISIBLE_DEVICES=%s, assigned by the scheduler", os.environ["SLURM_JOB_ID"],
                 os.environ.get("CUDA_VISIBLE_DEVICES", ""))
        return []
    devices = job.config.get("gpu_devices")
    devices = visible_devices() if devices is None else list(devices)
    if not devices:
        return []
    return acquire(n, devices)
