"""Data-parallel diffusion training: two processes on the CPU (gloo), the code path of `diffusion.gpus: N`."""
import numpy as np
import pandas as pd
import pytest
import torch

from pipeline_lib.diffusion import load_diffusion, train_diffusion
from pipeline_lib.distributed import launch_command
from pipeline_lib.generate import sample_latents
from conftest import CPU

pytestmark = pytest.mark.slow  # two training processes started by torch.distributed.run


def test_two_processes_train_one_model_that_rank_0_saves(tiny_manifest, tiny_ae, diffusion_params, tmp_path):
    params = diffusion_params(steps=3, checkpoint_every=2, gpus=2)
    train_diffusion(tiny_manifest, tiny_ae, tmp_path / "ddp" / "model", tmp_path / "ddp" / "log.parquet", params)
    log = pd.read_parquet(tmp_path / "ddp" / "log.parquet")
    assert list(log["step"]) == [1, 2, 3] and np.isfinite(log["loss"]).all()
    assert not (tmp_path / "ddp" / "model.resume.pt").exists()
    model = load_diffusion(tmp_path / "ddp" / "model", CPU)
    c = model.unet.config
    x = sample_latents(model, 0, 2, (c.in_channels, c.sample_size, c.sample_size), 2, 2.0,
                       torch.Generator().manual_seed(0), CPU)
    assert torch.isfinite(x).all()
    # Not the single-process model: the two processes drew other batches and averaged their gradients.
    train_diffusion(tiny_manifest, tiny_ae, tmp_path / "one" / "model", tmp_path / "one" / "log.parquet",
                    {**params, "gpus": 1})
    one = load_diffusion(tmp_path / "one" / "model", CPU).unet.state_dict()
    assert any(not torch.equal(one[k], v) for k, v in model.unet.state_dict().items())


def test_launch_uses_accelerate_on_gpus_and_torchrun_on_the_cpu(tmp_path):
    gpu = launch_command("diffusion", tmp_path / "a.json", 4, torch.device("cuda"), 29500, threads=8)
    assert gpu[1:4] == ["-m", "accelerate.commands.launch", "--multi_gpu"]
    assert gpu[gpu.index("--num_processes") + 1] == "4" and gpu[-3:] == ["pipeline_lib.distributed", "diffusion",
                                                                            str(tmp_path / "a.json")]
    cpu = launch_command("diffusion", tmp_path / "a.json", 2, CPU, 29500)
    assert cpu[1:3] == ["-m", "torch.distributed.run"] and cpu[cpu.index("--nproc_per_node") + 1] == "2"


def test_a_failing_process_fails_the_job_and_writes_nothing(tiny_manifest, tiny_ae, diffusion_params, tmp_path):
    import pytest

    params = diffusion_params(steps=2, gpus=2, speed={"mixed_precision": "fp8"})  # fails inside each process
    with pytest.raises(RuntimeError, match="diffusion: a data-parallel process failed"):
        train_diffusion(tiny_manifest, tiny_ae, tmp_path / "model", tmp_path / "log.parquet", params)
    assert not (tmp_path / "model").exists() and not (tmp_path / "log.parquet").exists()
