"""profiles/slurm on a real SLURM: a single-node cluster on localhost (Debian's slurm-wlm and munge, started by
profiles/slurm/localhost-cluster.sh) runs the tiny workflow through `--executor slurm`; the tables are checked
and a GPU job's log shows the device SLURM gave it. Needs root (to install and start SLURM); skipped otherwise."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import copy_workflow
import yaml

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _install_slurm() -> None:
    if shutil.which("slurmctld") and shutil.which("munged"):
        return
    if shutil.which("apt-get") is None:
        pytest.skip("SLURM is not installed and there is no apt-get to install it")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", "slurm-wlm", "munge"]
    if subprocess.run(cmd, env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, check=True)
        subprocess.run(cmd, env=env, capture_output=True, check=True)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("a local SLURM cluster needs root")
    if Path("/etc/slurm/slurm.conf").exists() and not Path("/etc/slurm/slurm.conf").is_symlink():
        pytest.skip("this machine has a SLURM configuration of its own")
    _install_slurm()
    state = tmp_path_factory.mktemp("slurm")
    script = ROOT / "profiles" / "slurm" / "localhost-cluster.sh"
    subprocess.run([str(script), "start", str(state)], check=True, timeout=120)
    yield state
    subprocess.run([str(script), "stop", str(state)], check=True, timeout=60)


def test_tiny_workflow_through_the_slurm_profile(cluster, tmp_path, tiny_config):
    work = tmp_path / "work"
    work.mkdir()
    copy_workflow(work)
    # The tiny config cut to one seed, one class-conditioned variant and one classifier per set (SLURM polls each
    # job's state: every job costs seconds more than locally; the other kinds of job run in test_workflow.py).
    cfg = yaml.safe_load(yaml.safe_dump(tiny_config))
    cfg["generate"]["seeds"] = [0]
    cfg["generate"]["settings"] = {"cfg2": {"guidance_scale": 2.0, "variants": ["class"]}, "sigma05": None}
    cfg["diffusion"]["variants"] |= {"clue": None, "ml": None, "cl": None}
    cfg["autoencoder"]["vq4"] = None
    cfg["classify"] |= {"ratios": [1.0], "hybrid": False, "scales": [], "count_sets": {"mixed": None}}
    cfg |= {"trajectory": None, "interpolation": None, "cluster": None}
    (work / "config.yaml").write_text(yaml.safe_dump(cfg))
    # The project's profile, sized for a 2-core node: the partition of the local cluster, one core per job.
    profile = yaml.safe_load((ROOT / "profiles" / "slurm" / "config.yaml").read_text())
    profile["default-resources"] = {"slurm_partition": "debug", "runtime": 30, "mem_mb": 2000, "cpus_per_task": 1}
    profile["set-resources"] = {rule: {"cpus_per_task": 1, "mem_mb": 2000} for rule in profile["set-resources"]}
    (work / "local_slurm").mkdir()
    (work / "local_slurm" / "config.yaml").write_text(yaml.safe_dump(profile))
    cmd = ["timeout", "-k", "10", "2400", sys.executable, "-m", "snakemake", "--profile", "local_slurm",
           "--configfile", "config.yaml", "--slurm-status-command", "squeue", "--slurm-no-account",
           "--slurm-init-seconds-before-status-checks", "8"]
    proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True,
                          env={**os.environ, "SLURM_CONF": str(cluster / "slurm.conf")})
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    submitted = (proc.stdout + proc.stderr).count("has been submitted with SLURM jobid")
    res = work / "results" / tiny_config["experiment"]
    scores = pd.read_parquet(res / "report" / "classify_summary.parquet")
    assert set(scores["point"]) == {"replace_100"} and scores["mean"].notna().all()
    assert submitted == 13  # every job but `all` went through sbatch (with the memorization audit and statistics)
    diffusion_log = (work / "logs" / tiny_config["experiment"] / "diffusion" / "class.log").read_text()
    assert "CUDA_VISIBLE_DEVICES=0, assigned by the scheduler" in diffusion_log
