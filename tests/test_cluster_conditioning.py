"""Cluster-conditioned diffusion (cLDM paper): fitted partitions assign new points, cluster embeddings condition
the UNet, generation draws samples per cluster, and the per-cluster accuracy and similarity tables."""
import numpy as np
import pandas as pd
import pytest
import torch

from pipeline_lib.cluster.condition import ClusterEmbedding, cluster_labels, resolve_k
from pipeline_lib.cluster.fit import FittedClusters, cluster_stage
from pipeline_lib.cluster.quality import cluster_quality, pair_similarity, reference_pairs
from pipeline_lib.conditioning import REGISTRY
from pipeline_lib.diffusion import diffusion_loss, load_diffusion, noise_scheduler, train_diffusion
from pipeline_lib.generate import generate, sample_latents
from pipeline_lib.metrics import ms_ssim, ssim
from pipeline_lib.report import cluster_generation_table
from conftest import CPU

IMSAT = {"hidden": 16, "epochs": 5, "batch_size": 32, "lr": 0.003, "lambda": 0.1, "mu": 4.0, "noise": 0.1}


def test_cluster_embedding_shapes_null_row_and_config():
    emb = ClusterEmbedding("imsat", 3, [5, 0, 2], dim=8, tokens=2)
    out = emb(torch.tensor([0, 2, emb.null_index]))
    assert out.shape == (3, 2, 8) and emb.null_index == 3
    assert emb.classes == ["cluster_0", "cluster_1", "cluster_2"]
    assert not torch.allclose(out[0], out[1])
    with pytest.raises(ValueError, match="one training-image count per cluster"):
        ClusterEmbedding("imsat", 3, [1, 2])


def test_one_optimiser_step_lowers_the_cluster_conditioned_loss():
    from pipeline_lib.diffusion import build_unet

    unet = build_unet(8, 8, {"block_out_channels": [16, 32], "attention_levels": [False, True],
                             "layers_per_block": 1, "cross_attention_dim": 16, "attention_head_dim": 8,
                             "norm_num_groups": 8})
    emb = ClusterEmbedding("kmeans", 4, [1, 1, 1, 1], dim=16)
    sched = noise_scheduler({"num_train_timesteps": 1000, "beta_schedule": "linear", "beta_start": 1e-4,
                             "beta_end": 0.02, "prediction_type": "epsilon"})  # eq. 9 of the cLDM paper
    opt = torch.optim.AdamW([*unet.parameters(), *emb.parameters()], lr=1e-3)
    lat, clusters = torch.randn(4, 8, 8, 8, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 1, 2, 3])

    def loss():
        return diffusion_loss({"unet": unet, "prompt_encoder": emb}, REGISTRY["cluster"]({}), sched, lat, clusters, 0.0,
                              torch.Generator().manual_seed(5))["loss"]

    before = loss()
    opt.zero_grad()
    before.backward()
    assert emb.embed.grad[:4].abs().sum() > 0 and emb.embed.grad[4].abs().sum() == 0  # null row unused at p = 0
    opt.step()
    assert loss().item() < before.item()


def test_resolve_k_reads_the_majority_vote(tmp_path):
    sel = pd.DataFrame({"method": ["kmeans", "kmeans", "imsat"], "index": ["dunn", "majority", "majority"],
                        "rule": "", "best_k": [2, 3, 4], "value": 1.0})
    sel.to_parquet(tmp_path / "s.parquet")
    assert resolve_k(tmp_path / "s.parquet", "kmeans", "selected") == 3
    assert resolve_k(tmp_path / "s.parquet", "imsat", "selected") == 4
    assert resolve_k(tmp_path / "s.parquet", "imsat", 6) == 6
    with pytest.raises(ValueError, match="no selected k for cluster method 'other'"):
        resolve_k(tmp_path / "s.parquet", "other", "selected")


def test_cluster_labels_follow_the_image_ids_and_name_what_is_missing(tmp_path):
    a = pd.DataFrame({"image_id": ["a", "b", "c", "a", "b", "c"], "method": "kmeans", "k": [2, 2, 2, 3, 3, 3],
                      "cluster": [0, 1, 1, 2, 0, 1]})
    a.to_parquet(tmp_path / "a.parquet")
    np.testing.assert_array_equal(cluster_labels(tmp_path / "a.parquet", pd.Series(["c", "a"]), "kmeans", 3), [1, 2])
    with pytest.raises(ValueError, match=r"1 training images have no cluster \(e.g. \['z'\]\)"):
        cluster_labels(tmp_path / "a.parquet", pd.Series(["a", "z"]), "kmeans", 2)
    with pytest.raises(ValueError, match=r"no kmeans partition with k = 4 \(cluster.k_values: \[2, 3\]\)"):
        cluster_labels(tmp_path / "a.parquet", pd.Series(["a"]), "kmeans", 4)


def test_reference_pairs_stay_in_the_cluster():
    gen = np.array([0, 0, 1, 2, 1])
    real = np.array([1, 0, 1, 0, 1, 1])
    pairs = reference_pairs(gen, real, 3, np.random.default_rng(0))
    assert pairs.shape == (5, 3)
    for g, row in zip(gen, pairs):
        if g == 2:
            assert (row == -1).all()  # no real image in cluster 2
        else:
            assert (real[row] == g).all()


def test_pair_similarity_is_the_mean_over_each_images_pairs():
    class L1(torch.nn.Module):
        name = "domain_perceptual"

        def forward(self, a, b):
            return (a - b).abs().flatten(1).mean(1)

    g = torch.Generator().manual_seed(0)
    xg, xr = torch.rand(3, 3, 32, 32, generator=g) * 2 - 1, torch.rand(4, 3, 32, 32, generator=g) * 2 - 1
    pairs = np.array([[0, 1], [2, 2], [-1, -1]])
    out = pair_similarity(xg, xr, pairs, L1(), CPU, batch_size=3)
    by_hand = (ssim(xg[:1], xr[:1]) + ssim(xg[:1], xr[1:2])) / 2
    np.testing.assert_allclose(out["ssim"][0], by_hand.item(), rtol=1e-6)
    np.testing.assert_allclose(out["ms_ssim"][1], ms_ssim(xg[1:2], xr[2:3]).item(), rtol=1e-6)
    np.testing.assert_allclose(out["domain_perceptual"][1], (xg[1] - xr[2]).abs().mean().item(), rtol=1e-6)
    assert np.isnan(out["ssim"][2])


@pytest.fixture(scope="module")
def clustered(tiny_manifest, tiny_ae, tmp_path_factory, tiny_config):
    out = tmp_path_factory.mktemp("clusters")
    params = {"seed": 0, "device": "cpu", "classes": tiny_config["data"]["classes"], "splits": ["train_a", "train_b"],
              "k_values": [2, 3], "features": {"pooling": "avg", "pool_size": 2, "standardize": True},
              "methods": ["kmeans", "imsat"], "kmeans_n_init": 2, "imsat": IMSAT}
    cluster_stage(tiny_manifest, tiny_ae, out / "indices.parquet", out / "selection.parquet",
                  out / "assignments.parquet", params, models_out=out / "models.pt")
    return out


def test_saved_partitions_assign_the_training_images_to_their_clusters(clustered, tiny_manifest, tiny_ae):
    from pipeline_lib.autoencoder import encode_latents, load_autoencoder
    from pipeline_lib.torchutils import load_images

    fitted = FittedClusters(clustered / "models.pt")
    x, _, rows = load_images(tiny_manifest, ["train_a", "train_b"], ["normal", "ome", "com"])
    latents, _ = encode_latents(load_autoencoder(tiny_ae, CPU), x, CPU)
    a = pd.read_parquet(clustered / "assignments.parquet")
    for method in ("kmeans", "imsat"):
        for k in (2, 3):
            part = a[(a["method"] == method) & (a["k"] == k)].set_index("image_id").loc[rows["image_id"]]
            np.testing.assert_array_equal(fitted.predict(latents, method, k), part["cluster"].to_numpy())
    with pytest.raises(ValueError, match="no kmeans partition with k = 5"):
        fitted.predict(latents, "kmeans", 5)


@pytest.fixture(scope="module")
def cluster_model(clustered, tiny_manifest, tiny_ae, diffusion_params, tmp_path_factory):
    out = tmp_path_factory.mktemp("cluster_diffusion")
    params = diffusion_params(steps=4, variant="cl", conditioning="cluster", cluster_k="selected",
                              cluster_method="kmeans", prompts={})
    clusters = {"assignments": clustered / "assignments.parquet", "selection": clustered / "selection.parquet"}
    train_diffusion(tiny_manifest, tiny_ae, out / "model", out / "log.parquet", params, clusters=clusters)
    return out


def test_cluster_model_saves_its_partition_and_samples_each_cluster(cluster_model, clustered):
    model = load_diffusion(cluster_model / "model", CPU)
    emb = model.prompt_encoder
    sel = pd.read_parquet(clustered / "selection.parquet")
    k = int(sel.loc[(sel["method"] == "kmeans") & (sel["index"] == "majority"), "best_k"].item())
    assert isinstance(emb, ClusterEmbedding) and emb.config.method == "kmeans" and emb.config.k == k
    a = pd.read_parquet(clustered / "assignments.parquet")
    assert sum(emb.config.counts) == len(a[(a["method"] == "kmeans") & (a["k"] == k)])
    shape = (model.unet.config.in_channels, model.unet.config.sample_size, model.unet.config.sample_size)
    x = sample_latents(model, 0, 2, shape, 3, 2.0, torch.Generator().manual_seed(0), CPU)
    y = sample_latents(model, 0, 2, shape, 3, 2.0, torch.Generator().manual_seed(0), CPU)
    z = sample_latents(model, 1, 2, shape, 3, 2.0, torch.Generator().manual_seed(0), CPU)
    torch.testing.assert_close(x, y)
    assert not torch.allclose(x, z)


def test_cluster_conditioning_needs_the_cluster_tables(tiny_manifest, tiny_ae, diffusion_params, tmp_path):
    params = diffusion_params(steps=1, variant="cl", conditioning="cluster")
    with pytest.raises(ValueError, match="variant 'cl': cluster conditioning needs the cluster stage's assignments"):
        train_diffusion(tiny_manifest, tiny_ae, tmp_path / "m", tmp_path / "l.parquet", params)


def test_generation_and_quality_per_cluster(cluster_model, clustered, tiny_manifest, tiny_ae, tiny_feature_net,
                                            tmp_path, tiny_config):
    params = {"seed": 1, "device": "cpu", "classes": tiny_config["data"]["classes"], "variant": "cl",
              "setting": "cfg2", "guidance_scale": 2.0, "samples_per_cluster": 3, "num_inference_steps": 3,
              "batch_size": 2, "preprocess": tiny_config["preprocess"]}
    gen = generate(tiny_manifest, tiny_ae, cluster_model / "model", tmp_path / "images",
                   tmp_path / "manifest.parquet", params)
    k = int(gen["cluster_k"].iloc[0])
    trained = load_diffusion(cluster_model / "model", CPU).prompt_encoder.config.counts
    assert gen.groupby("cluster").size().to_dict() == {j: 3 for j in range(k) if trained[j]}
    assert list(gen["label"].unique()) == [f"cluster_{j}" for j in sorted(gen["cluster"].unique())]
    assert (gen["cluster_method"] == "kmeans").all() and gen["noise_seed"].notna().all()
    q = {"seed": 1, "device": "cpu", "classes": tiny_config["data"]["classes"], "splits": ["train_a", "train_b"],
         "references": 2, "perceptual": tiny_config["perceptual"], "variant": "cl", "setting": "cfg2"}
    table = cluster_quality(tiny_manifest, tmp_path / "manifest.parquet", clustered / "assignments.parquet",
                            clustered / "models.pt", tiny_ae, tmp_path / "q.parquet", tmp_path / "per.parquet",
                            q, feature_net=tiny_feature_net)
    per = pd.read_parquet(tmp_path / "per.parquet")
    assert len(per) == len(gen) and per["predicted"].between(0, k - 1).all()
    overall = table[table["cluster"] == "all"].iloc[0]
    assert overall["accuracy"] == pytest.approx(per["correct"].mean())
    assert overall["ssim"] == pytest.approx(per["ssim"].mean()) and -1 <= overall["ssim"] <= 1
    assert overall["domain_perceptual"] >= 0 and 0 < overall["ms_ssim"] <= 1
    assert set(table["cluster"]) == {"all", *(f"cluster_{j}" for j in gen["cluster"].unique())}
    assert table["k"].eq(k).all() and table["references"].eq(2).all()
    again = cluster_quality(tiny_manifest, tmp_path / "manifest.parquet", clustered / "assignments.parquet",
                            clustered / "models.pt", tiny_ae, tmp_path / "q2.parquet", tmp_path / "per2.parquet",
                            q, feature_net=tiny_feature_net)
    pd.testing.assert_frame_equal(table, again)  # seeded reference pairs: the same numbers on a rerun


def test_cluster_total_follows_the_training_clusters_proportions(cluster_model, tiny_manifest, tiny_config):
    """cLDM section 4.4: a setting's cluster_total shares that many images over the clusters in the proportions
    of their training images (largest remainders), instead of samples_per_cluster of each (section 4.5)."""
    model = load_diffusion(cluster_model / "model", CPU)
    trained = np.asarray(model.prompt_encoder.config.counts)
    params = {"classes": tiny_config["data"]["classes"], "samples_per_cluster": 3}
    names, counts, _ = model.conditioning.image_counts(model.prompt_encoder, tiny_manifest, params,
                                                       cluster_model / "model")
    assert [counts[n] for n in names] == [3 if t else 0 for t in trained]
    total = 2 * int(trained.sum()) + 1
    _, counts, _ = model.conditioning.image_counts(model.prompt_encoder, tiny_manifest,
                                                   {**params, "cluster_total": total}, cluster_model / "model")
    got = np.array([counts[n] for n in names])
    assert got.sum() == total and (np.abs(got - total * trained / trained.sum()) < 1).all()
    assert (got[trained == 0] == 0).all()


def test_cluster_generation_table_is_mean_and_std_over_seeds(tmp_path):
    paths = []
    for seed, acc in ((0, 0.5), (1, 0.7)):
        t = pd.DataFrame({"variant": "cl_k3", "setting": "cfg2", "seed": seed, "method": "imsat", "k": 3,
                          "cluster": ["cluster_0", "cluster_1", "all"], "n_generated": [2, 2, 4], "n_real": 9,
                          "accuracy": [acc, 1.0, (acc + 1) / 2], "ssim": 0.4 + seed * 0.1, "ms_ssim": 0.5,
                          "domain_perceptual": 0.3})
        paths.append(tmp_path / f"{seed}.parquet")
        t.to_parquet(paths[-1])
    out = cluster_generation_table(paths)
    assert list(out["cluster"]) == ["all", "cluster_0", "cluster_1"]
    row = out.iloc[1]
    assert row["accuracy_mean"] == pytest.approx(0.6) and row["accuracy_std"] == pytest.approx(np.std([.5, .7], ddof=1))
    assert row["accuracy"] == "0.600 (± 0.141)" and row["n_seeds"] == 2
    assert out.iloc[0]["ssim"] == "0.450 (± 0.071)"


# --- the cLDM paper's joint training of the clustering network (sections 3.6 and 5) ----------------------------------

def test_stage_bounds_share_the_steps_as_the_papers_epochs():
    from pipeline_lib.conditioning.cluster import stage_bounds

    # 8 steps in proportions 600 : 130 : 70 are 6, 1.3, 0.7: floors 6, 1, 0, the last step to the largest remainder
    assert stage_bounds(8, [600, 130, 70]) == [("train", 0, 6), ("finetune_1", 6, 7), ("finetune_2", 7, 8)]
    assert stage_bounds(800, [600, 130, 70]) == [("train", 0, 600), ("finetune_1", 600, 730),
                                                 ("finetune_2", 730, 800)]
    assert stage_bounds(4, [1, 0, 1]) == [("train", 0, 2), ("finetune_2", 2, 4)]  # a share of 0 skips its stage
    for bad in ([1, 1], [1, -1, 1], [0, 0, 0]):
        with pytest.raises(ValueError, match="cluster_stages: expected 3 non-negative shares"):
            stage_bounds(4, bad)


def _joint_params(diffusion_params, **overrides):
    return diffusion_params(**{"variant": "cj", "conditioning": "cluster", "cluster_k": 3, "cluster_method": "imsat",
                               "prompts": {}, "cluster_training": "joint", "cluster_stages": [1, 1, 1],
                               "cluster_weight": 1.0, "cluster_init": "fitted", "steps": 6,
                               "cluster_imsat": {**IMSAT, "augmentation": "noise"}, **overrides})


def _joint_clusters(clustered):
    return {"assignments": clustered / "assignments.parquet", "selection": clustered / "selection.parquet",
            "models": clustered / "models.pt"}


@pytest.fixture(scope="module")
def joint_run(clustered, tiny_manifest, tiny_ae, diffusion_params, tmp_path_factory):
    """Six steps, two per stage, recording at the start of each step which clustering-network parameters learn
    and a copy of them and of the UNet's."""
    from pipeline_lib.conditioning.cluster import ClusterIds

    out, seen = tmp_path_factory.mktemp("joint_diffusion"), []
    real = ClusterIds.begin_step

    def spy(self, step, modules):
        row = real(self, step, modules)
        seen.append({"stage": row["stage"],
                     "grad": [p.requires_grad for p in modules["clusterer"].parameters()],
                     "clusterer": [p.detach().clone() for p in modules["clusterer"].parameters()],
                     "unet": [p.detach().clone() for p in modules["unet"].parameters()]})
        return row

    ClusterIds.begin_step = spy
    try:
        train_diffusion(tiny_manifest, tiny_ae, out / "model", out / "log.parquet",
                        _joint_params(diffusion_params, ema_decay=None), clusters=_joint_clusters(clustered))
    finally:
        ClusterIds.begin_step = real
    return out, seen


def _changed(a, b):
    return any(not torch.equal(x, y) for x, y in zip(a, b))


def test_joint_training_freezes_the_clustering_network_in_finetuning_1_only(joint_run):
    out, seen = joint_run
    assert [s["stage"] for s in seen] == ["train", "train", "finetune_1", "finetune_1", "finetune_2", "finetune_2"]
    for s in seen:
        assert all(g == (s["stage"] != "finetune_1") for g in s["grad"]), s["stage"]
    final = load_diffusion(out / "model", CPU)  # the UNet after the last step
    from pipeline_lib.cluster.condition import Clusterer

    last = [p.detach() for p in Clusterer.from_pretrained(str(out / "model" / "clusterer")).parameters()]
    after = [s["clusterer"] for s in seen[1:]] + [last]
    for s, nxt in zip(seen, after):
        # the clustering network moves in the steps of training and fine-tuning 2, never in fine-tuning 1
        assert _changed(s["clusterer"], nxt) == (s["stage"] != "finetune_1"), s["stage"]
    unet_after = [s["unet"] for s in seen[1:]] + [[p.detach() for p in final.unet.parameters()]]
    assert all(_changed(s["unet"], nxt) for s, nxt in zip(seen, unet_after))  # the UNet learns in every stage
    log = pd.read_parquet(out / "log.parquet")
    assert log["stage"].tolist() == [s["stage"] for s in seen]
    assert {"denoise", "imsat", "imsat_transformation", "loss"} <= set(log.columns)
    frozen = log[log["stage"] == "finetune_1"]  # fine-tuning 1 minimises the denoising loss alone
    np.testing.assert_allclose(frozen["loss"], frozen["denoise"], rtol=1e-6)
    free = log[log["stage"] != "finetune_1"]
    np.testing.assert_allclose(free["loss"], free["denoise"] + free["imsat"], rtol=1e-5, atol=1e-6)


def test_joint_model_saves_its_own_clusters_and_generation_follows_them(joint_run, clustered, tiny_manifest,
                                                                       tiny_ae, tiny_feature_net, tmp_path,
                                                                       tiny_config):
    from pipeline_lib.autoencoder import encode_latents, load_autoencoder
    from pipeline_lib.torchutils import load_images

    out, _ = joint_run
    a = pd.read_parquet(out / "model" / "cluster_assignments.parquet")
    model = load_diffusion(out / "model", CPU)
    counts = model.prompt_encoder.config.counts
    assert model.prompt_encoder.config.k == 3 and counts == np.bincount(a["cluster"], minlength=3).tolist()
    x, _, rows = load_images(tiny_manifest, ["train_a", "train_b"], tiny_config["data"]["classes"])
    latents, _ = encode_latents(load_autoencoder(tiny_ae, CPU), x, CPU)
    fitted = FittedClusters(out / "model" / "clusters.pt")  # the cluster stage's format: the same assignments
    np.testing.assert_array_equal(fitted.predict(latents, "imsat", 3),
                                  a.set_index("image_id").loc[rows["image_id"], "cluster"].to_numpy())
    params = {"seed": 1, "device": "cpu", "classes": tiny_config["data"]["classes"], "variant": "cj",
              "setting": "cfg2", "guidance_scale": 2.0, "samples_per_cluster": 2, "num_inference_steps": 2,
              "batch_size": 4, "preprocess": tiny_config["preprocess"]}
    gen = generate(tiny_manifest, tiny_ae, out / "model", tmp_path / "images", tmp_path / "manifest.parquet", params)
    assert gen.groupby("cluster").size().to_dict() == {j: 2 for j in range(3) if counts[j]}
    q = {"seed": 1, "device": "cpu", "classes": tiny_config["data"]["classes"], "splits": ["train_a", "train_b"],
         "references": 1, "perceptual": tiny_config["perceptual"], "variant": "cj", "setting": "cfg2"}
    cluster_quality(tiny_manifest, tmp_path / "manifest.parquet", clustered / "assignments.parquet",
                    clustered / "models.pt", tiny_ae, tmp_path / "q.parquet", tmp_path / "per.parquet", q,
                    feature_net=tiny_feature_net, model_dir=out / "model")
    per = pd.read_parquet(tmp_path / "per.parquet")
    gen_latents, _ = encode_latents(load_autoencoder(tiny_ae, CPU), load_images(
        tmp_path / "manifest.parquet", ["synthetic"], [f"cluster_{j}" for j in range(3)])[0], CPU)
    np.testing.assert_array_equal(per["predicted"], fitted.predict(gen_latents, "imsat", 3))  # the model's clusters


def test_joint_context_is_the_hard_cluster_with_a_straight_through_gradient(clustered, tiny_ae, diffusion_params):
    from pipeline_lib.cluster.condition import Clusterer
    from pipeline_lib.conditioning.cluster import ClusterIds

    clusterer = Clusterer.from_fitted(clustered / "models.pt", "imsat", 3)
    emb = ClusterEmbedding("imsat", 3, [1, 1, 1], dim=8)
    cond = ClusterIds.for_training(_joint_params(diffusion_params), None, _joint_clusters(clustered))
    cond.bounds = [("train", 0, 1), ("finetune_1", 1, 2)]
    latents = torch.randn(5, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    drop = torch.tensor([False, False, False, False, True])
    modules = {"clusterer": clusterer, "prompt_encoder": emb}
    for step, learns in ((0, True), (1, False)):
        cond.begin_step(step, modules)
        clusterer.zero_grad()
        ctx = cond.training_context(modules, latents, torch.zeros(5, dtype=torch.long), drop, [], None)
        hard = clusterer.predict(latents)
        expected = emb(torch.where(drop, torch.tensor(3), hard))  # the value: the embedding of the cluster's id
        torch.testing.assert_close(ctx, expected, rtol=1e-6, atol=1e-6)
        ctx.square().sum().backward()
        grads = [p.grad for p in clusterer.parameters()]
        assert (all(g is not None and g.abs().sum() > 0 for g in grads) if learns
                else all(g is None for g in grads)), step


def test_joint_image_views_are_aligned_with_the_mirrored_latents(clustered, tiny_manifest, tiny_ae, diffusion_params,
                                                                 tmp_path):
    from pipeline_lib.conditioning.cluster import ClusterIds

    real, kept = ClusterIds.extra_modules, {}

    def spy(self, unet, data, device):
        mods = real(self, unet, data, device)
        kept["views"], kept["n"] = self.per_image[0], len(data.rows)
        return mods

    ClusterIds.extra_modules = spy
    try:
        imsat = {**IMSAT, "augmentation": "image", "views": 2, "rotation": 90, "translation": 0.1, "scaling": 0.1}
        train_diffusion(tiny_manifest, tiny_ae, tmp_path / "m", tmp_path / "l.parquet",
                        _joint_params(diffusion_params, steps=1, hflip=True, cluster_imsat=imsat),
                        clusters=_joint_clusters(clustered))
    finally:
        ClusterIds.extra_modules = real
    views = kept["views"]
    assert views.shape[:2] == (2 * kept["n"], 2) and torch.isfinite(views).all()
    assert not torch.allclose(views[:, 0], views[:, 1])  # two different transformations of each image


def test_joint_training_needs_imsat_and_its_network(clustered, tiny_manifest, tiny_ae, diffusion_params, tmp_path):
    clusters = _joint_clusters(clustered)
    with pytest.raises(ValueError, match="joint trains the cluster stage's IMSAT network"):
        train_diffusion(tiny_manifest, tiny_ae, tmp_path / "m", tmp_path / "l.parquet",
                        _joint_params(diffusion_params, cluster_method="kmeans"), clusters=clusters)
    with pytest.raises(ValueError, match="joint trains the cluster stage's IMSAT network"):
        train_diffusion(tiny_manifest, tiny_ae, tmp_path / "m", tmp_path / "l.parquet",
                        _joint_params(diffusion_params), clusters={**clusters, "models": None})


def test_joint_training_resumes_across_a_stage_boundary(clustered, tiny_manifest, tiny_ae, diffusion_params,
                                                        tmp_path, monkeypatch):
    from pipeline_lib import diffusion

    params = _joint_params(diffusion_params, checkpoint_every=2)

    def train(name):
        train_diffusion(tiny_manifest, tiny_ae, tmp_path / name / "model", tmp_path / name / "log.parquet", params,
                        clusters=_joint_clusters(clustered))
        return pd.read_parquet(tmp_path / name / "log.parquet")

    full = train("full")
    real, count = diffusion.diffusion_loss, {"n": 0}

    def killed(*args, **kw):
        count["n"] += 1
        if count["n"] == 4:  # in fine-tuning 1, after the checkpoint at the end of training
            raise KeyboardInterrupt
        return real(*args, **kw)

    with monkeypatch.context() as m:
        m.setattr(diffusion, "diffusion_loss", killed)
        with pytest.raises(KeyboardInterrupt):
            train("killed")
    pd.testing.assert_frame_equal(full, train("killed"))
    assert (tmp_path / "full" / "model" / "cluster_assignments.parquet").read_bytes() == \
        (tmp_path / "killed" / "model" / "cluster_assignments.parquet").read_bytes()


@pytest.mark.slow  # two training processes started by torch.distributed.run
def test_joint_training_in_two_processes_keeps_the_frozen_network_as_it_was(clustered, tiny_manifest, tiny_ae,
                                                                          diffusion_params, tmp_path):
    """Fine-tuning 1 alone (stages 0 : 1 : 0) under DistributedDataParallel: the network, frozen after DDP wrapped
    it, gets no gradient in any process and is not stepped (AdamW's weight decay would move it even on a zero
    gradient)."""
    from pipeline_lib.cluster.condition import Clusterer

    params = _joint_params(diffusion_params, steps=2, gpus=2, cluster_stages=[0, 1, 0], ema_decay=None)
    train_diffusion(tiny_manifest, tiny_ae, tmp_path / "m", tmp_path / "l.parquet", params,
                    clusters=_joint_clusters(clustered))
    assert pd.read_parquet(tmp_path / "l.parquet")["stage"].tolist() == ["finetune_1", "finetune_1"]
    trained = Clusterer.from_pretrained(str(tmp_path / "m" / "clusterer")).state_dict()
    fitted = Clusterer.from_fitted(clustered / "models.pt", "imsat", 3).state_dict()
    assert trained.keys() == fitted.keys() and all(torch.equal(trained[k], fitted[k]) for k in fitted)
