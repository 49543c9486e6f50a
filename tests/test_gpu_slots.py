"""GPU slots on the CPU with fake device ids: concurrent jobs get distinct devices, a job killed with SIGKILL
frees its slot for the next, and a job that asks for more devices than there are fails clearly."""
import os
import select
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from pipeline_lib import gpu_slots

HOLDER = """
import sys, time
from pipeline_lib.gpu_slots import acquire
ids = acquire(int(sys.argv[1]), sys.argv[2].split(","), sys.argv[3], poll=0.1)
import os
print(os.environ["CUDA_VISIBLE_DEVICES"], flush=True)
time.sleep(60)
"""


def _holder(n, devices, lock_dir):
    return subprocess.Popen([sys.executable, "-c", HOLDER, str(n), devices, str(lock_dir)], stdout=subprocess.PIPE,
                            text=True)


def _line(proc, timeout=20.0):
    """The next line the process prints, or a failure after ``timeout`` seconds (never a hang)."""
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, f"process {proc.pid} printed nothing within {timeout} s"
    return proc.stdout.readline().strip()


def test_concurrent_jobs_get_distinct_slots_and_a_killed_jobs_slot_is_reused(tmp_path):
    a, b = _holder(1, "0,1", tmp_path), _holder(1, "0,1", tmp_path)
    c = None
    try:
        a_slot, b_slot = _line(a), _line(b)
        assert {a_slot, b_slot} == {"0", "1"}
        assert gpu_slots.try_acquire(1, ["0", "1"], tmp_path) is None  # both taken
        c = _holder(1, "0,1", tmp_path)  # waits for a slot
        time.sleep(0.5)
        assert c.poll() is None
        os.kill(a.pid, signal.SIGKILL)
        a.wait()
        assert _line(c) == a_slot  # the killed job's slot, b keeps its own
    finally:
        for p in (a, b, c):
            if p is not None:
                p.kill()
                p.wait()


def test_slots_in_process_and_their_release(tmp_path):
    ids = gpu_slots.try_acquire(2, [3, 5, 7], tmp_path)
    assert ids == ["3", "5"]
    # A second claim, even from this process, finds only 7 free (a flock belongs to its open file).
    assert gpu_slots.try_acquire(2, [3, 5, 7], tmp_path) is None
    gpu_slots.release()
    assert gpu_slots.try_acquire(2, [3, 5, 7], tmp_path) == ["3", "5"]
    gpu_slots.release()
    with pytest.raises(ValueError, match=r"asks for 4 GPUs .* has 3"):
        gpu_slots.try_acquire(4, [3, 5, 7], tmp_path)


def test_claim_for_job_uses_the_configured_ids_and_skips_cpu_jobs_and_slurm(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_slots, "LOCK_DIR", tmp_path)
    monkeypatch.setattr(gpu_slots, "acquire", lambda n, devices, *a, **k: [str(d) for d in devices[:n]])
    job = SimpleNamespace(resources=SimpleNamespace(gpu=1), config={"gpu_devices": [4, 6]})
    assert gpu_slots.claim_for_job(job) == ["4"]
    assert gpu_slots.claim_for_job(SimpleNamespace(resources=SimpleNamespace(), config={"gpu_devices": [4]})) == []
    monkeypatch.setenv("SLURM_JOB_ID", "17")
    assert gpu_slots.claim_for_job(job) == []
    monkeypatch.delenv("SLURM_JOB_ID")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert gpu_slots.claim_for_job(SimpleNamespace(resources=SimpleNamespace(gpu=1), config={"gpu_devices": None})) \
        == []  # no GPU visible: the job runs on the CPU
