"""CLUE (section 3 of the CLUE paper): the class prompt plus a style latent s through a second cross-attention
(``pipeline_lib.clue``). Training draws s from the style encoder's posterior on the clean latent and the
(possibly dropped) prompt, eq. (12), and adds lambda KL (eq. 11); sampling draws s ~ N(0, sigma^2 I) with the
generation setting's ``style_sigma`` (section 4.5)."""
from __future__ import annotations

import torch

from ..clue import (CLUE_DEFAULTS, StyleAdapter, StyleEncoder, attach_style_adapter, kl_to_standard_normal,
                    sample_style)
from .prompt import ClassPrompt


class ClueStyle(ClassPrompt):
    name = "clue"
    diffusers_pipeline = False  # its UNet needs the extra modules: load_diffusion loads it
    defaults = CLUE_DEFAULTS
    sampling_keys = ("style_sigma",)

    def extra_modules(self, unet, data, device):
        dim = int(self.options["style_dim"])
        encoder = StyleEncoder.like(unet, dim).to(device)
        adapter = StyleAdapter.like(unet, dim, int(self.options["style_tokens"])).to(device)
        attach_style_adapter(unet, adapter)
        return {"style_encoder": encoder, "style_adapter": adapter}

    def loss_inputs(self, modules, latents, context, drop, batch, gen):
        mu, logvar = modules["style_encoder"](latents, context)
        style = modules["style_adapter"].tokens(sample_style(mu, logvar, gen))
        return {"style": style}, {"kl": (kl_to_standard_normal(mu, logvar).mean(), float(self.options["kl_weight"]))}

    @classmethod
    def load(cls, model_dir, unet, device):
        cond, context = super().load(model_dir, unet, device)
        adapter = StyleAdapter.from_pretrained(str(model_dir / "style_adapter")).to(device).eval()
        attach_style_adapter(unet, adapter)  # the style encoder is only needed in training
        cond.modules["style_adapter"] = adapter
        return cond, context

    def sampler_inputs(self, class_index, n, guided, generator, device, settings):
        """s ~ N(0, style_sigma^2 I), or the given style vectors ``settings["style"]`` (n, style_dim) (the style
        sweep of CLUE Fig. 4)."""
        adapter = self.modules["style_adapter"]
        s = settings.get("style")
        if s is not None and tuple(s.shape) != (n, adapter.config.style_dim):
            raise ValueError(f"expected style vectors of shape ({n}, {adapter.config.style_dim}), got "
                             f"{tuple(s.shape)}")
        if s is None:
            sigma = settings.get("style_sigma")
            if sigma is None:
                raise ValueError("a CLUE model needs the setting's `style_sigma` (the paper's grid: 0, 0.1, 0.3, 0.5)")
            s = float(sigma) * torch.randn((n, adapter.config.style_dim), generator=generator)
        tokens = adapter.tokens(s.to(device))
        return {"style": torch.cat([tokens, tokens]) if guided else tokens}
