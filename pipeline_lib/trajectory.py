"""Language-guided trajectory traversal (Kumar, TehraniNasab and Arbel, MIDL 2025 poster): a neutral image is
generated from the prompt embedding e of the neutral class; the same initial noise is generated again with e
replaced by an attribute's embedding e' from sampling step s on ("e' replaces the original text embeddings e
at some timestep t"; a late swap keeps the image close to the neutral one), and with embeddings on a Bezier
curve from e to e' ("Bezier interpolations along the trajectory").

Measured for each attribute A (every class but the neutral one), swap step and Bezier position alpha, with the
judge f (the domain classifier, trained on real data; the poster's EfficientNet where the config names it):

- CFRT_A, as the poster writes it: 1/|X| sum_x 1[ |f_A(x) - f_A(x'_A)| > max_{j != A} |f_A(x) - f_A(x'_j)|
  and y(x) = y(x'_A)  and  for all k != A: x_k = x'_A(k) ]: swapping to A moves the judge's A score more than
  swapping to any other attribute does (specific), the image's label is kept, and every other attribute is as it
  was (the judge's decision that k is present, unchanged). The judge's score of an attribute is the summed
  probability of the classes containing it (``AttributeView``: classes may be attribute sets, ``mel+hair``), an
  attribute is present above 0.5, and y is the label besides the attributes (``trajectory.labels``; none: the
  second condition holds). With one class per image the attributes are the other classes. ``cfrt_flip`` is the
  earlier, stricter reading: the first condition and the edit classified as the attribute's class.
- ``flip_rate``: the share of x'_A classified as A; the perceptual distance (LPIPS or its named substitute) of
  x'_A to the neutral x; ``cos_direction``: the cosine similarity between the latent direction z'_A - z of this
  swap step and that of the earliest swap step (1 = the trajectory is a straight line in latent space).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from .autoencoder import decode_latents, load_autoencoder
from .diffusion import load_diffusion
from .generate import sample_latents, with_sampler
from .io import log, write_parquet, write_png
from .nets import load_feature_net
from .perceptual import load_perceptual
from .speed import Speed
from .torchutils import select_device, set_threads, to_uint8


def bezier(points: Sequence[torch.Tensor], alpha: float) -> torch.Tensor:
    """The point at ``alpha`` in [0, 1] of the Bezier curve with these control points (de Casteljau)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"trajectory.alphas: a Bezier position must lie in [0, 1], got {alpha}")
    pts = list(points)
    while len(pts) > 1:
        pts = [(1 - alpha) * a + alpha * b for a, b in zip(pts[:-1], pts[1:])]
    return pts[0]


def cfrt_conditions(neutral: np.ndarray, edited: Mapping[int, np.ndarray], attribute: int,
                    present: Callable[[np.ndarray], np.ndarray], others: Sequence[int],
                    labels: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """The three conditions of the poster's CFRT for each neutral image (booleans, N): ``specific`` (the A score
    moves more under the A edit than under any other attribute's edit), ``label_kept`` (y(x) = y(x'_A); all true
    without ``labels``), ``others_kept`` (for every k in ``others``, present(x)_k = present(x'_A)_k).

    ``neutral`` (N, C) and ``edited[j]`` (N, C, for every attribute j) are the judge's scores of the neutral images
    and of their edits towards j; ``present(scores) -> (N, C)`` its decisions; ``labels`` = (y(x), y(x'_A))."""
    fa = neutral[:, attribute]
    change = np.abs(fa - edited[attribute][:, attribute])
    rivals = [np.abs(fa - p[:, attribute]) for j, p in edited.items() if j != attribute]
    bound = np.max(rivals, axis=0) if rivals else np.zeros_like(change)
    before, after = present(neutral), present(edited[attribute])
    kept = np.ones(len(fa), bool) if labels is None else np.asarray(labels[0]) == np.asarray(labels[1])
    others = [k for k in others if k != attribute]
    return {"specific": change > bound, "label_kept": kept,
            "others_kept": (before[:, others] == after[:, others]).all(axis=1) if others else np.ones(len(fa), bool)}


def present_above_half(scores: np.ndarray) -> np.ndarray:
    """The judge's decision that an attribute is present: its score (probability) above 0.5."""
    return scores > 0.5


def cfrt(neutral: np.ndarray, edited: Mapping[int, np.ndarray], attribute: int,
         present: Callable[[np.ndarray], np.ndarray] = present_above_half, others: Sequence[int] | None = None,
         labels: tuple[np.ndarray, np.ndarray] | None = None) -> float:
    """CFRT_A (the poster): the share of neutral images for which all three ``cfrt_conditions`` hold; ``others``
    defaults to every attribute that was edited."""
    conditions = cfrt_conditions(neutral, edited, attribute, present, list(edited) if others is None else others,
                                 labels)
    return float(np.mean(np.logical_and.reduce(list(conditions.values()))))


def cfrt_flip(neutral: np.ndarray, edited: Mapping[int, np.ndarray], attribute: int,
              flipped: np.ndarray | None = None) -> float:
    """The first condition of CFRT and the edit classified as the attribute's class (this stage's earlier CFRT,
    kept under its own name). ``flipped`` (N,): that classification; by default argmax f(x'_A) = A, for scores
    of one class per image."""
    specific = cfrt_conditions(neutral, edited, attribute, present_above_half, [])["specific"]
    flipped = edited[attribute].argmax(1) == attribute if flipped is None else flipped
    return float(np.mean(specific & flipped))


def swap_steps(fractions: Sequence[float], steps: int) -> list[int]:
    """Sampling step indices at which e' takes over (0: e' from the start)."""
    out = sorted({min(steps, max(0, round(f * steps))) for f in fractions})
    if not out:
        raise ValueError("trajectory.swap_fractions: expected at least one fraction")
    return out


@dataclass(frozen=True)
class AttributeView:
    """The traversal's attributes in terms of the classes. A class is a '+'-joined set of parts (``mel+hair``,
    ``pleural_effusion+support_devices``); an attribute's edit embeds the class ``<neutral>+<attribute>`` when the
    data have it (ISIC: mel -> mel+hair), else the class ``<attribute>`` (CheXpert: no_finding ->
    pleural_effusion; one class per image: normal -> ome). The judge's score of an attribute is the summed
    probability of the classes that contain it (its marginal; with one class per image, the class's own), an
    attribute is present when that exceeds 0.5, and y(x) is the label with the highest summed probability."""
    names: list[str]  # the attributes
    targets: list[int]  # the class index each attribute's edit embeds
    membership: np.ndarray  # (classes, attributes): 1 where the class contains the attribute
    labels: list[str]  # the labels besides the attributes (the poster's y; none: the second condition holds)
    label_membership: np.ndarray  # (classes, labels)

    @classmethod
    def of(cls, classes: Sequence[str], neutral: str, attributes: Sequence[str] | None = None,
           labels: Sequence[str] = ()) -> "AttributeView":
        if neutral not in classes:
            raise ValueError(f"trajectory.neutral: {neutral!r} is not one of the classes {list(classes)}")
        parts = [set(c.split("+")) for c in classes]
        names = list(attributes) if attributes else \
            [c for c in classes if c != neutral and "+" not in c and c not in labels]
        targets = []
        for a in names:
            combined = f"{neutral}+{a}"
            if combined not in classes and a not in classes:
                raise ValueError(f"trajectory.attributes: {a!r} has neither the class {combined!r} nor {a!r} in "
                                 f"data.classes {list(classes)}")
            targets.append(list(classes).index(combined if combined in classes else a))
        member = np.array([[a in p for a in names] for p in parts], dtype=np.float64).reshape(len(classes), len(names))
        label_member = np.array([[lab in p for lab in labels] for p in parts], dtype=np.float64).reshape(
            len(classes), len(labels))
        return cls(names, targets, member, list(labels), label_member)

    def scores(self, probs: np.ndarray) -> np.ndarray:
        """The judge's class probabilities (N, classes) as attribute scores (N, attributes)."""
        return probs @ self.membership

    def label_of(self, probs: np.ndarray) -> np.ndarray | None:
        return (probs @ self.label_membership).argmax(1) if self.labels else None


@torch.no_grad()
def traverse(ae_dir: str | Path, model_dir: str | Path, feature_net: str | Path, table_out: str | Path,
             per_image_out: str | Path, figure_out: str | Path, params: Mapping[str, Any],
             threads: int | None = None, latents_out: str | Path | None = None) -> pd.DataFrame:
    """Entry point of the trajectory rule for one (variant, setting, seed). ``trajectory.neutral`` is a class or a
    list of them (the poster's MEL and NV rows): each is traversed from its own neutral images."""
    set_threads(threads)
    device = select_device(params["device"])
    classes = list(params["classes"])
    neutrals = [params["neutral"]] if isinstance(params["neutral"], str) else list(params["neutral"])
    views = [AttributeView.of(classes, name, params.get("attributes"), params.get("labels") or ()) for name in neutrals]
    speed = Speed.from_params(params).enable(device)
    model = with_sampler(load_diffusion(model_dir, device, speed), "ddim")
    ae = load_autoencoder(ae_dir, device, speed)
    classifier = load_feature_net(feature_net, device)
    perceptual = load_perceptual(params["perceptual"], feature_net, device)
    c = model.unet.config
    shape, n = (c.in_channels, c.sample_size, c.sample_size), int(params["samples"])
    steps = int(params["num_inference_steps"])
    swaps = swap_steps(params["swap_fractions"], steps)  # ascending: the first is every edit's reference
    rows, per, figure_rows, first = [], [], [], None
    for ni, (name, view) in enumerate(zip(neutrals, views)):
        key = [int(params["seed"]), 7919] + ([ni] if ni else [])  # the first neutral: the single-neutral noise
        noise_seed = int(np.random.SeedSequence(key).generate_state(1)[0])
        out = _from_neutral(model, ae, classifier, perceptual, classes, classes.index(name), view, swaps, shape, n,
                            noise_seed, params, speed, device)
        rows += [{"neutral": name, **r} for r in out["rows"]]
        per += [{"neutral": name, **r} for r in out["per"]]
        figure_rows += [torch.cat([out["x0"][0], *(out["grid"][(k, s)] for s in swaps)], dim=-1)
                        for k in range(len(view.names))]
        first = first or (name, view, out)
    table = pd.DataFrame(rows)
    for key in ("seed", "setting", "variant"):
        table.insert(0, key, params[key])
    table = table.assign(samples=n)
    write_parquet(pd.DataFrame(per), per_image_out)
    write_parquet(table, table_out)
    write_png(to_uint8(torch.cat(figure_rows, dim=-2)[None])[0], figure_out)  # a row per (neutral, attribute)
    if latents_out is not None:
        name, view, out = first  # the first neutral's
        _latent_figure(out["z0"], {view.names[k]: z for k, z in out["edits_first"].items()}, name, latents_out)
    log.info("trajectory traversal from %s (%d samples each):\n%s", neutrals, n,
             table.drop(columns=["variant", "setting", "seed", "samples"]).round(3).to_string(index=False))
    return table


def _from_neutral(model, ae, classifier, perceptual, classes: Sequence[str], neutral: int, view: AttributeView,
                  swaps: Sequence[int], shape: tuple[int, ...], n: int, noise_seed: int, params: Mapping[str, Any],
                  speed: Speed, device: torch.device) -> dict[str, Any]:
    """The traversal from one neutral class: every attribute, swap step and Bezier position, on ``n`` samples of
    the same initial noise."""
    penc = model.prompt_encoder
    steps, guidance = int(params["num_inference_steps"]), float(params["guidance_scale"])

    def run(cond_at=None) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(noise_seed)  # the same x_T (and style / references) for every edit
        with speed.autocast(device):
            z = sample_latents(model, neutral, n, shape, steps, guidance, g, device, params.get("style_sigma"), cond_at,
                               guidance_interval=params.get("guidance_interval"))
            return z.float(), decode_latents(ae, z).clamp(-1, 1)

    def probs(x: torch.Tensor) -> np.ndarray:
        return F.softmax(classifier(x), 1).double().cpu().numpy()

    k_all = range(len(view.names))
    z0, x0 = run()
    p0 = probs(x0)
    f0 = view.scores(p0)
    labels = torch.full((n,), neutral, dtype=torch.long, device=device)
    e = penc(labels)
    control = [penc(torch.full_like(labels, penc.null_index))] if params["bezier_control"] == "null_prompt" else []
    rows, per, grid, reference, edits_first = [], [], {}, {}, {}
    for alpha in params["alphas"]:
        for s in swaps:
            edits = {}
            for k in k_all:
                target = bezier([e, *control, penc(torch.full_like(labels, view.targets[k]))], float(alpha))
                z, x = run(lambda i, cond, s=s, target=target: cond if i < s else target)
                edits[k] = (z, x, probs(x))
                if alpha == params["alphas"][-1]:
                    grid[(k, s)] = x[0]
            if alpha == params["alphas"][-1] and s == swaps[0]:
                edits_first = {k: edits[k][0] for k in k_all}  # the latents of the poster's scatter
            timestep = int((model.scheduler.timesteps.tolist() + [0])[s])
            scores = {j: view.scores(edits[j][2]) for j in k_all}
            for k in k_all:
                z, x, p = edits[k]
                y = view.label_of(p0), view.label_of(p)
                dist = perceptual(x, x0).double().cpu().numpy()
                direction = (z - z0).flatten(1)
                ref = reference.setdefault((alpha, k), direction)  # the earliest swap of this attribute and alpha
                flipped = p.argmax(1) == view.targets[k]
                rows.append({"attribute": view.names[k], "swap_step": s, "alpha": float(alpha),
                             "cfrt": cfrt(f0, scores, k, labels=None if y[0] is None else y),
                             "cfrt_flip": cfrt_flip(f0, scores, k, flipped),
                             "flip_rate": float(np.mean(flipped)), perceptual.name: float(dist.mean()),
                             "cos_direction": float(F.cosine_similarity(direction, ref, dim=1, eps=1e-12).mean()),
                             "timestep": timestep})
                per += [{"sample": i, "attribute": view.names[k], "swap_step": s, "alpha": float(alpha),
                         "p_attribute": float(scores[k][i, k]), "p_attribute_neutral": float(f0[i, k]),
                         "predicted": classes[int(p[i].argmax())], perceptual.name: float(dist[i])} for i in range(n)]
    return {"rows": rows, "per": per, "grid": grid, "x0": x0, "z0": z0, "edits_first": edits_first}


def _latent_figure(neutral: torch.Tensor, edited: Mapping[str, torch.Tensor], name: str, path: str | Path) -> None:
    """The poster's scatter of generated latents: the neutral samples and each attribute's (the full embedding
    swapped in at the earliest swap step) in the first two principal components of all of them. PCA, not the
    poster's t-SNE: with a few dozen points t-SNE's clusters say more about its perplexity than about the data."""
    from sklearn.decomposition import PCA

    from .io import pyplot, save_figure

    groups = {name: neutral, **edited}
    points = torch.cat([z.flatten(1) for z in groups.values()]).double().cpu().numpy()
    xy = PCA(n_components=2, random_state=0).fit_transform(points)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4, 4))
    start = 0
    for label, z in groups.items():
        ax.scatter(xy[start:start + len(z), 0], xy[start:start + len(z), 1], s=12, label=label)
        start += len(z)
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.legend(fontsize=7)
    ax.set_title("generated latents", fontsize=8)
    save_figure(fig, path)
