"""Data-parallel training of one model on several devices.

A rule that asks for more than one GPU (``diffusion.gpus: N``) runs its entry point once; the entry point calls
``launch``, which starts N copies of itself through ``accelerate launch --multi_gpu`` (one process per GPU,
DistributedDataParallel over NCCL) and waits for them. Inside, ``accelerate.Accelerator`` wraps the model in
DDP, so gradients are averaged over the processes after every backward pass; rank 0 writes the logs, the
checkpoints and the model. On the CPU (``device: cpu``, how the tests run it) accelerate has no multi-process
launcher without MPI, so ``torch.distributed.run`` starts the processes and the Accelerator uses gloo: the same
code path as on GPUs.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Mapping

import torch

from .io import log


def active() -> bool:
    """Whether this process is one of several started by ``launch``."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


class Processes:
    """The processes one training runs in, as the training loop sees them: one (``Processes(None)``), or the
    data-parallel ones of an ``accelerate.Accelerator``. One code path serves both."""

    def __init__(self, accelerator=None):
        self.accelerator = accelerator

    @classmethod
    def start(cls, device: torch.device, find_unused_parameters: bool = False) -> "Processes":
        """The Accelerator's processes when this process was started by ``launch``, else this process alone."""
        if not active():
            return cls(None)
        from accelerate import Accelerator, DistributedDataParallelKwargs

        unused = DistributedDataParallelKwargs(find_unused_parameters=find_unused_parameters)
        return cls(Accelerator(cpu=device.type == "cpu", kwargs_handlers=[unused]))

    def device(self, device: torch.device) -> torch.device:
        return device if self.accelerator is None else self.accelerator.device

    @property
    def main(self) -> bool:
        return self.accelerator is None or self.accelerator.is_main_process

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        return model if self.accelerator is None else self.accelerator.prepare_model(model)

    def seed_step(self, gen: torch.Generator, seed: int, step: int) -> None:
        """Several processes: each draws its own batches, reproducible from (seed, rank, step); one process
        keeps drawing from its generator."""
        if self.accelerator is not None:
            import numpy as np

            rank = self.accelerator.process_index
            gen.manual_seed(int(np.random.SeedSequence([seed, rank, step]).generate_state(1)[0]))

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean over the processes (one process: the value itself)."""
        return value if self.accelerator is None else self.accelerator.reduce(value, "mean")

    def wait(self) -> None:
        if self.accelerator is not None:
            self.accelerator.wait_for_everyone()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch_command(entry: str, args_file: Path, processes: int, device: torch.device, port: int,
                   threads: int | None = None) -> list[str]:
    module = ["-m", "pipeline_lib.distributed", entry, str(args_file)]
    if device.type == "cuda":
        return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "1",
                "--num_processes", str(processes), "--main_process_port", str(port), "--mixed_precision", "no",
                "--dynamo_backend", "no", "--num_cpu_threads_per_process", str(max(1, threads or 1)), *module]
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(processes),
            "--master_addr", "127.0.0.1", "--master_port", str(port), *module]


def launch(entry: str, kwargs: Mapping[str, Any], processes: int, device: torch.device,
           threads: int | None = None) -> None:
    """Run ``ENTRIES[entry](**kwargs)`` in ``processes`` data-parallel processes; an error if any of them fails."""
    if device.type == "cuda" and torch.cuda.device_count() < processes:
        raise ValueError(f"diffusion.gpus: {processes} processes asked for, {torch.cuda.device_count()} GPUs visible "
                         f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r})")
    with tempfile.TemporaryDirectory(prefix="medaug-ddp-") as tmp:
        args_file = Path(tmp) / "args.json"
        args_file.write_text(json.dumps(dict(kwargs), default=str))  # paths (also nested) as strings
        cmd = launch_command(entry, args_file, processes, device, _free_port(), threads)
        log.info("%s on %d processes: %s", entry, processes, " ".join(cmd))
        env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (threads or processes) // processes))}
        proc = subprocess.run(cmd, env=env, stdout=_stream(sys.stdout), stderr=_stream(sys.stderr))
    if proc.returncode != 0:
        raise RuntimeError(f"{entry}: a data-parallel process failed (exit status {proc.returncode}); its log is above")


def _stream(stream):
    """The stream itself where it is a real file (a rule's log: the processes write into it), else inherit."""
    try:
        stream.fileno()
        return stream
    except (AttributeError, OSError, ValueError):
        return None


def main(argv: list[str]) -> None:
    import logging

    from .diffusion import train_diffusion

    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, stream=sys.stderr,
                        format=f"%(asctime)s %(levelname)s [rank {rank}] %(message)s")
    entries = {"diffusion": train_diffusion}
    entry, args_file = argv
    entries[entry](**json.loads(Path(args_file).read_text()))


if __name__ == "__main__":
    main(sys.argv[1:])
