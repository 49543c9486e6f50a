"""Trajectory traversal: Bezier embeddings, CFRT by hand, and a traversal run on a tiny model."""
import numpy as np
import pandas as pd
import pytest
import torch

from pipeline_lib.diffusion import train_diffusion
from pipeline_lib.trajectory import bezier, cfrt, cfrt_conditions, cfrt_flip, swap_steps, traverse


def test_bezier_is_de_casteljau():
    a, c, b = torch.tensor([0.0, 0.0]), torch.tensor([1.0, 2.0]), torch.tensor([2.0, 0.0])
    torch.testing.assert_close(bezier([a, c, b], 0.5), 0.25 * a + 0.5 * c + 0.25 * b)
    torch.testing.assert_close(bezier([a, c, b], 0.0), a)
    torch.testing.assert_close(bezier([a, c, b], 1.0), b)
    torch.testing.assert_close(bezier([a, b], 0.25), 0.75 * a + 0.25 * b)  # no control point: a line
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\], got 1.5"):
        bezier([a, b], 1.5)


def test_cfrt_by_hand():
    # Classes (neutral, A = 1, B = 2); three neutral samples; a single-label judge (present = its argmax).
    neutral = np.array([[0.8, 0.1, 0.1], [0.8, 0.1, 0.1], [0.8, 0.1, 0.1]])
    to_a = np.array([[0.1, 0.8, 0.1],    # A score +0.7, classified A
                     [0.5, 0.3, 0.2],    # A score +0.2, still classified neutral: no other attribute appears
                     [0.2, 0.5, 0.3]])   # A score +0.4, classified A, but the B edit moved A's score more
    to_b = np.array([[0.1, 0.2, 0.7],    # A score +0.1
                     [0.1, 0.1, 0.8],    # 0
                     [0.1, 0.6, 0.3]])   # +0.5 > 0.4
    assert cfrt(neutral, {1: to_a, 2: to_b}, 1) == pytest.approx(2 / 3)  # samples 0 and 1
    assert cfrt_flip(neutral, {1: to_a, 2: to_b}, 1) == pytest.approx(1 / 3)  # sample 1 is not classified A
    assert cfrt(neutral, {1: to_a}, 1) == pytest.approx(1.0)  # one attribute: no rival edit
    # B: samples 0 and 1; in sample 2 the A edit moves the B score as much (0.2 = 0.2), not less.
    assert cfrt(neutral, {1: to_a, 2: to_b}, 2) == pytest.approx(2 / 3)


def test_each_cfrt_condition_fails_on_its_own():
    # Multi-label judge (a score per attribute, present above 0.5), attributes A = 0, B = 1, C = 2; four samples.
    present = lambda f: f > 0.5  # noqa: E731
    neutral = np.full((4, 3), 0.1)
    to_a = np.array([[0.9, 0.1, 0.1],    # all three conditions hold
                     [0.3, 0.1, 0.1],    # A +0.2, but the B edit moves A +0.3: not specific
                     [0.9, 0.7, 0.1],    # specific, but B appears with A: another attribute changed
                     [0.9, 0.1, 0.1]])   # specific, others kept, but the label judge changed its mind
    to_b = np.array([[0.1, 0.9, 0.1], [0.4, 0.9, 0.1], [0.1, 0.9, 0.1], [0.1, 0.9, 0.1]])
    to_c = np.full((4, 3), 0.1)
    labels = (np.array(["mel", "mel", "nv", "nv"]), np.array(["mel", "mel", "nv", "mel"]))
    edited = {0: to_a, 1: to_b, 2: to_c}
    got = cfrt_conditions(neutral, edited, 0, present, [0, 1, 2], labels)
    np.testing.assert_array_equal(got["specific"], [True, False, True, True])
    np.testing.assert_array_equal(got["others_kept"], [True, True, False, True])
    np.testing.assert_array_equal(got["label_kept"], [True, True, True, False])
    assert cfrt(neutral, edited, 0, present, labels=labels) == pytest.approx(1 / 4)
    assert cfrt(neutral, edited, 0, present) == pytest.approx(2 / 4)  # no label besides the attributes


def test_swap_steps():
    assert swap_steps([0.0, 0.25, 0.5, 1.0], 20) == [0, 5, 10, 20]
    assert swap_steps([0.5, 0.5], 3) == [2]
    with pytest.raises(ValueError, match="at least one fraction"):
        swap_steps([], 10)


@pytest.fixture(scope="module")
def class_model(tiny_manifest, tiny_ae, diffusion_params, tmp_path_factory):
    out = tmp_path_factory.mktemp("trajectory_model")
    train_diffusion(tiny_manifest, tiny_ae, out / "model", out / "log.parquet", diffusion_params(steps=3))
    return out / "model"


def test_traversal_table_and_the_never_swapped_edit(class_model, tiny_ae, tiny_feature_net, tmp_path, tiny_config):
    params = {"neutral": "normal", "swap_fractions": [0.0, 0.5, 1.0], "alphas": [0.5, 1.0],
              "bezier_control": "null_prompt", "samples": 3, "num_inference_steps": 4, "guidance_scale": 2.0,
              "style_sigma": None, "perceptual": tiny_config["perceptual"], "variant": "class", "setting": "cfg2",
              "seed": 0, "device": "cpu", "classes": tiny_config["data"]["classes"]}
    table = traverse(tiny_ae, class_model, tiny_feature_net, tmp_path / "t.parquet", tmp_path / "p.parquet",
                     tmp_path / "t.png", params, latents_out=tmp_path / "latents.png")
    assert len(table) == 2 * 3 * 2  # alphas x swap steps x attributes
    assert (tmp_path / "latents.png").read_bytes()[:4] == b"\x89PNG"  # the poster's scatter of the latents
    assert set(table["attribute"]) == {"ome", "com"} and set(table["swap_step"]) == {0, 2, 4}
    assert table["cfrt"].between(0, 1).all() and table["flip_rate"].between(0, 1).all()
    assert table["cos_direction"].between(-1 - 1e-6, 1 + 1e-6).all()
    first = table[table["swap_step"] == 0]
    assert np.allclose(first["cos_direction"], 1.0)  # the reference direction itself
    never = table[table["swap_step"] == 4]  # e' never used: the neutral image again
    assert np.allclose(never["domain_perceptual"], 0.0, atol=1e-6) and (never["timestep"] == 0).all()
    per = pd.read_parquet(tmp_path / "p.parquet")
    unchanged = per[per["swap_step"] == 4]
    np.testing.assert_allclose(unchanged["p_attribute"], unchanged["p_attribute_neutral"], atol=1e-6)
    assert (tmp_path / "t.png").read_bytes()[:4] == b"\x89PNG"
    again = traverse(tiny_ae, class_model, tiny_feature_net, tmp_path / "t2.parquet", tmp_path / "p2.parquet",
                     tmp_path / "t2.png", params)
    pd.testing.assert_frame_equal(table, again)  # seeded: the same numbers on a rerun
    with pytest.raises(ValueError, match="trajectory.neutral: 'healthy' is not one of the classes"):
        traverse(tiny_ae, class_model, tiny_feature_net, tmp_path / "x.parquet", tmp_path / "y.parquet",
                 tmp_path / "z.png", {**params, "neutral": "healthy"})


def test_the_report_gives_the_posters_table_shape(tmp_path):
    """report.trajectory_summary by hand: Bezier position 1 is the swap block; the positions below 1 are averaged
    within each seed into the interpolation block; then mean and sample std over the seeds."""
    from pipeline_lib.report import trajectory_summary

    paths = []
    for seed, shift in ((0, 0.0), (1, 0.1)):
        rows = [{"variant": "class", "setting": "cfg2", "neutral": "normal", "attribute": "ome", "swap_step": 4,
                 "timestep": 751, "alpha": a, "seed": seed, "cfrt": c + shift, "domain_perceptual": d}
                for a, c, d in ((0.5, 0.2, 1.0), (0.75, 0.4, 2.0), (1.0, 0.8, 3.0))]
        paths.append(tmp_path / f"t{seed}.parquet")
        pd.DataFrame(rows).to_parquet(paths[-1])
    t = trajectory_summary(paths).iloc[0]
    assert t["swap_cfrt_mean"] == pytest.approx(0.85) and t["swap_cfrt_std"] == pytest.approx(0.1 / np.sqrt(2))
    assert t["interpolation_cfrt_mean"] == pytest.approx(0.35)  # (0.3 + 0.4) / 2
    assert t["interpolation_domain_perceptual_mean"] == pytest.approx(1.5) and t["swap_domain_perceptual_mean"] == 3
    assert t["swap_cfrt"] == "0.850 (± 0.071)" and t["n_seeds"] == 2


def test_the_attribute_view_of_attribute_set_classes():
    """ISIC-like classes (diagnosis, diagnosis + artefact): hair's edit from mel embeds mel+hair; an attribute's
    score is the summed probability of the classes holding it; y is the diagnosis with the larger sum."""
    from pipeline_lib.trajectory import AttributeView

    view = AttributeView.of(["mel", "nv", "mel+hair", "nv+hair", "mel+ink"], "mel", ["hair", "ink"], ["mel", "nv"])
    assert view.names == ["hair", "ink"] and view.targets == [2, 4]
    probs = np.array([[0.1, 0.2, 0.3, 0.3, 0.1]])
    np.testing.assert_allclose(view.scores(probs), [[0.6, 0.1]])
    assert view.label_of(probs).tolist() == [0]  # mel 0.5 vs nv 0.5: the first, as argmax
    assert view.label_of(np.array([[0.1, 0.2, 0.1, 0.5, 0.1]])).tolist() == [1]
    single = AttributeView.of(["normal", "ome", "com"], "normal")  # one class per image: the other classes
    assert single.names == ["ome", "com"] and single.targets == [1, 2] and single.label_of(probs[:, :3]) is None
    with pytest.raises(ValueError, match=r"trajectory.attributes: 'ruler' has neither the class 'mel\+ruler'"):
        AttributeView.of(["mel", "nv"], "mel", ["ruler"])


def test_several_neutral_classes_each_get_their_traversal(class_model, tiny_ae, tiny_feature_net, tmp_path,
                                                         tiny_config):
    """trajectory.neutral as a list (the poster's MEL and NV rows): each neutral class's rows, the first one's
    numbers those of a single-neutral run (the same noise)."""
    params = {"neutral": ["normal", "ome"], "attributes": ["com"], "swap_fractions": [0.0], "alphas": [1.0],
              "bezier_control": "none", "samples": 2, "num_inference_steps": 3, "guidance_scale": 2.0,
              "style_sigma": None, "perceptual": tiny_config["perceptual"], "variant": "class", "setting": "cfg2",
              "seed": 0, "device": "cpu", "classes": tiny_config["data"]["classes"]}
    both = traverse(tiny_ae, class_model, tiny_feature_net, tmp_path / "t.parquet", tmp_path / "p.parquet",
                    tmp_path / "t.png", params)
    assert both["neutral"].tolist() == ["normal", "ome"] and set(both["attribute"]) == {"com"}
    one = traverse(tiny_ae, class_model, tiny_feature_net, tmp_path / "o.parquet", tmp_path / "q.parquet",
                   tmp_path / "o.png", {**params, "neutral": "normal"})
    pd.testing.assert_frame_equal(both[both["neutral"] == "normal"].reset_index(drop=True), one)
    assert set(pd.read_parquet(tmp_path / "p.parquet")["neutral"]) == {"normal", "ome"}
