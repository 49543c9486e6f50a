"""The speed switches of the config's ``speed`` section, each with a safe default (the numbers of a plain FP32
run; the default config samples in bf16 where the machine computes bf16 natively, ``sampling_precision``). The
torch stages (autoencoder, diffusion, generation, trajectory, interpolation, feature network, classifiers) read
the same section:

- ``mixed_precision``: ``no`` (FP32, CLUE Table 3) or ``bf16`` autocast, on a GPU only;
- ``tf32``: TensorFloat-32 matrix products and convolutions on Ampere and later GPUs (off: IEEE FP32, also for
  cuDNN's convolutions, which PyTorch otherwise lets use TF32);
- ``channels_last``: NHWC memory layout of the convolutional networks and their image batches;
- ``attention``: ``sdpa`` (PyTorch's fused ``scaled_dot_product_attention``, flash / memory-efficient kernels on
  a GPU) or ``classic`` (softmax(QK^T / sqrt(d)) V written out) in the diffusers UNet and autoencoder;
- ``compile``: ``torch.compile`` of the networks' forward passes (needs a C++ compiler; the first steps are slow);
- ``sampling_precision``: ``fp32``, ``bf16`` or ``auto``, the denoiser's weights while it samples (generation,
  trajectory, style sweep; not its training, not the autoencoder's decoder). On a CPU with AVX-512 BF16 or AMX a
  bf16 sampling call of the default's model is 1.1x to 1.5x as fast, on one without them (AVX2 only) 11x slower:
  bf16 is emulated there (benchmarks/diffusion_speed.py). ``auto`` (the default config's) is bf16 on a GPU or such
  a CPU and fp32 elsewhere, so the same config samples as fast as the machine allows; the numbers are those of the
  precision it resolves to, logged by the job;
- ``num_workers`` and ``pin_memory``: image decoding in parallel threads, and page-locked host tensors so that
  batches reach the GPU asynchronously (``io.LOADING``, set by ``harness.stage_log`` from the whole config). They
  never change a number, so they are not rerun triggers;
- ``feature_cache``: the evaluate jobs reuse the real images' features that the feature network's job
  saved, instead of embedding the real images again per seed and setting (the same numbers).

Only the first six, the fields of ``Speed``, can change results (in the last bits, or more with bf16), so they
belong to the stages' parameters (``SPEED_NUMERIC`` and ``SPEED_SAMPLING`` in pipeline_lib/config.py): editing
them reruns the torch stages, and ``sampling_precision`` only the stages that sample the denoiser.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, fields
from typing import Any, Mapping

import torch

from .io import log

CHOICES = {"mixed_precision": ("no", "bf16"), "attention": ("sdpa", "classic"),
           "sampling_precision": ("fp32", "bf16", "auto")}


@dataclass(frozen=True)
class Speed:
    mixed_precision: str = "no"
    tf32: bool = False
    channels_last: bool = False
    attention: str = "sdpa"
    compile: bool = False
    sampling_precision: str = "fp32"

    @classmethod
    def from_params(cls, params: Mapping[str, Any] | None) -> "Speed":
        """The switches of a stage's ``speed`` parameters (absent: the defaults); a wrong value names its key."""
        given = dict((params or {}).get("speed") or {})
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in given.items() if k in known}
        for key, allowed in CHOICES.items():
            if key in values and values[key] not in allowed:
                raise ValueError(f"speed.{key} must be one of {list(allowed)}, got {values[key]!r}")
        for key in ("tf32", "channels_last", "compile"):
            if key in values and not isinstance(values[key], bool):
                raise ValueError(f"speed.{key} must be true or false, got {values[key]!r}")
        return cls(**values)

    def enable(self, device: torch.device) -> "Speed":
        """Set the process-wide TF32 precision for ``device``; log what is on."""
        if device.type == "cuda":
            precision = "tf32" if self.tf32 else "ieee"
            torch.backends.cuda.matmul.fp32_precision = precision
            torch.backends.cudnn.conv.fp32_precision = precision
        on = [f"{f.name}={getattr(self, f.name)}" for f in fields(self) if getattr(self, f.name) != f.default]
        if on:
            log.info("speed switches on %s: %s", device, ", ".join(on))
        if self.mixed_precision == "bf16" and device.type != "cuda":
            log.info("speed.mixed_precision bf16 applies on a GPU only; running in FP32 on %s", device)
        return self

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        """bf16 autocast on a GPU when asked for; otherwise a context that changes nothing."""
        if self.mixed_precision == "bf16" and device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def prepare(self, module: torch.nn.Module) -> torch.nn.Module:
        """The module with the memory layout, attention kernel and compilation asked for, changed in place (its
        state dict and ``save_pretrained`` are unaffected)."""
        if self.channels_last:
            module.to(memory_format=torch.channels_last)
        set_attention(module, self.attention)
        if self.compile:
            module.compile()
        return module

    def sampling_dtype(self, device: torch.device) -> torch.dtype:
        """The denoiser's dtype while it samples on ``device``: ``auto`` is bf16 where ``device`` computes bf16
        natively, else FP32; ``bf16`` is bf16 everywhere (with a warning where it is emulated)."""
        if self.sampling_precision == "auto":
            return torch.bfloat16 if native_bf16(device) else torch.float32
        if self.sampling_precision == "bf16":
            if not native_bf16(device):
                log.warning("speed.sampling_precision bf16: this CPU has no native bf16 instructions (AVX-512 "
                            "BF16 or AMX), so bf16 sampling is emulated and several times slower than fp32; "
                            "auto or fp32 samples in FP32 here")
            return torch.bfloat16
        return torch.float32

    def for_sampling(self, unet: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """The denoiser in the precision of ``sampling_precision`` (``sampling_dtype``), changed in place: bf16
        converts its weights, and ``generate.sample_latents`` casts its inputs to them and its prediction back to
        FP32 (the latents and the scheduler's update stay FP32). Sampling only: training keeps FP32 weights."""
        dtype = self.sampling_dtype(device)
        if self.sampling_precision == "auto":
            log.info("speed.sampling_precision auto: the denoiser samples in %s on %s", str(dtype).split(".")[-1],
                     device)
        if dtype == torch.bfloat16:
            torch.nn.Module.to(unet, torch.bfloat16)  # diffusers' own .to warns about fp32 modules it has none of
        return unet

    def batch(self, x: torch.Tensor) -> torch.Tensor:
        """An image batch in the layout of the prepared modules."""
        if self.channels_last and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes in bf16 natively: a GPU that does (Ampere and later; not by emulation), or a
    CPU with AVX-512 BF16 or AMX (oneDNN's check)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type != "cpu":
        return True
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN's check
        return False


def set_attention(module: torch.nn.Module, kind: str) -> int:
    """Swap diffusers' standard attention processors for the ``sdpa`` or ``classic`` implementation; the
    processors of the CLUE style adapter and the multi-level adapters are kept. Returns how many were set."""
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    standard = (AttnProcessor, AttnProcessor2_0)
    target = AttnProcessor2_0 if kind == "sdpa" else AttnProcessor
    n = 0
    for sub in module.modules():
        processor = getattr(sub, "processor", None)
        if hasattr(sub, "set_processor") and type(processor) in standard and type(processor) is not target:
            sub.set_processor(target())
            n += 1
    return n
