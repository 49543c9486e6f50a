"""CLUE Fig. 4: what the style latent controls, for every CLUE variant.

* Left panel: images of one class (the paper: COM) from one fixed x_T, while two components of the style vector s
  go over ``values`` (the paper: -3 to 3), the other components held at 0, the prior's mean (the paper does not
  say what they are held at). One row per value of the first component, one column per value of the second.
* Right panel: one row per class, ``styles`` style vectors s ~ N(0, I) ("Style A, B, C"), the same s in every row
  and the same x_T everywhere, so a column differs from another only by its style.

``sweep_vectors`` builds the left panel's style vectors; ``style_sweep`` is the rule's entry point. The table
records each image's class, panel, row, column and the style components that were set.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from .autoencoder import decode_latents, load_autoencoder
from .diffusion import load_diffusion
from .generate import sample_latents
from .io import log, pyplot, save_figure, write_parquet
from .speed import Speed
from .torchutils import select_device, set_threads, to_uint8


def sweep_vectors(dim: int, components: Sequence[int], values: Sequence[float]) -> torch.Tensor:
    """Style vectors (len(values) ** 2, dim), row-major: vector i * len(values) + j has component
    ``components[0]`` = values[i], ``components[1]`` = values[j] and every other component 0."""
    if len(components) != 2 or len(set(components)) != 2:
        raise ValueError(f"style_sweep.components: expected two different components, got {list(components)}")
    bad = [c for c in components if not 0 <= int(c) < dim]
    if bad:
        raise ValueError(f"style_sweep.components: {bad} outside the style vector's {dim} components (0 .. {dim - 1})")
    v = torch.tensor([float(x) for x in values])
    s = torch.zeros(len(v) ** 2, dim)
    s[:, int(components[0])] = v.repeat_interleave(len(v))
    s[:, int(components[1])] = v.repeat(len(v))
    return s


@torch.no_grad()
def style_sweep(ae_dir: str | Path, model_dir: str | Path, out_figure: str | Path, out_table: str | Path,
                params: Mapping[str, Any], threads: int | None = None) -> pd.DataFrame:
    """Entry point of the style_sweep rule for one CLUE variant (see the module docstring)."""
    set_threads(threads)
    device = select_device(params["device"])
    speed = Speed.from_params(params).enable(device)
    model = load_diffusion(model_dir, device, speed)
    if "style_adapter" not in model.conditioning.modules:
        raise ValueError(f"{model_dir}: style_sweep needs a CLUE model (conditioning clue), got "
                         f"{model.conditioning.name!r}")
    ae = load_autoencoder(ae_dir, device, speed)
    classes = list(params["classes"])
    if params["class"] not in classes:
        raise ValueError(f"style_sweep.class: {params['class']!r} is not one of data.classes {classes}")
    dim = int(model.conditioning.modules["style_adapter"].config.style_dim)
    c = model.unet.config
    shape = (c.in_channels, c.sample_size, c.sample_size)
    g = torch.Generator().manual_seed(int(params["seed"]))
    x_t = torch.randn((1, *shape), generator=g)  # one x_T for every image of the figure
    random_styles = torch.randn((int(params["styles"]), dim), generator=g)
    steps, w = int(params["num_inference_steps"]), float(params["guidance_scale"])

    def images(class_index: int, styles: torch.Tensor) -> np.ndarray:
        lat = sample_latents(model, class_index, len(styles), shape, steps, w, g, device,
                             init=x_t.expand(len(styles), *shape), style=styles)
        return to_uint8(decode_latents(ae, lat))

    values = [float(v) for v in params["values"]]
    comps = [int(k) for k in params["components"]]
    grid = images(classes.index(params["class"]), sweep_vectors(dim, comps, values))
    rows = [{"panel": "sweep", "class": params["class"], "row": i, "column": j,
             f"s{comps[0]}": values[i], f"s{comps[1]}": values[j]}
            for i in range(len(values)) for j in range(len(values))]
    styled = {label: images(ci, random_styles) for ci, label in enumerate(classes)}
    rows += [{"panel": "styles", "class": label, "row": ci, "column": j}
             for ci, label in enumerate(classes) for j in range(len(random_styles))]
    _figure(grid, values, comps, styled, params["class"], out_figure)
    table = pd.DataFrame(rows)
    write_parquet(table, out_table)
    log.info("style sweep: %d images of %s over s%d, s%d in %s; %d styles x %d classes", len(grid), params["class"],
             comps[0], comps[1], values, len(random_styles), len(classes))
    return table


def _figure(grid: np.ndarray, values: Sequence[float], comps: Sequence[int], styled: Mapping[str, np.ndarray],
            sweep_class: str, path: str | Path) -> None:
    plt = pyplot()
    n, k = len(values), len(next(iter(styled.values())))
    fig = plt.figure(figsize=(1.0 * (n + k) + 1.2, 1.0 * max(n, len(styled)) + 0.8))
    sub = fig.subfigures(1, 2, width_ratios=[n, k + 0.6])
    left = sub[0].subplots(n, n, squeeze=False)
    for i in range(n):
        for j in range(n):
            ax = left[i][j]
            ax.imshow(grid[i * n + j].squeeze())
            ax.set_xticks([])
            ax.set_yticks([])
            if i == n - 1:
                ax.set_xlabel(f"{values[j]:g}", fontsize=7)
            if j == 0:
                ax.set_ylabel(f"{values[i]:g}", fontsize=7)
    sub[0].suptitle(f"{sweep_class}: s{comps[0]} (rows) and s{comps[1]} (columns), x_T fixed", fontsize=8)
    right = sub[1].subplots(len(styled), k, squeeze=False)
    for r, (label, ims) in enumerate(styled.items()):
        for j in range(k):
            ax = right[r][j]
            ax.imshow(ims[j].squeeze())
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"style {chr(65 + j)}", fontsize=7)
            if j == 0:
                ax.set_ylabel(label, fontsize=7)
    sub[1].suptitle("s ~ N(0, I), the same in each column", fontsize=8)
    save_figure(fig, path)
