import numpy as np
import pandas as pd
import pytest
import torch

from pipeline_lib.evaluate import quality_table
from pipeline_lib.nets import build_classifier, train_classifier
from pipeline_lib.report import summarise


def _blobs(n, rng):
    """Three classes that differ in mean colour: learnable in a few epochs."""
    y = np.repeat(np.arange(3), n)
    x = rng.normal(0, 0.3, (3 * n, 3, 16, 16)).astype(np.float32)
    for c in range(3):
        x[y == c, c] += 0.8
    return torch.from_numpy(x), torch.from_numpy(y)


def test_train_classifier_learns_and_is_deterministic():
    rng = np.random.default_rng(0)
    x, y = _blobs(20, rng)
    xv, yv = _blobs(8, rng)
    params = {"arch": "small_cnn", "feature_dim": 16, "width": 8, "shift_pixels": 1, "epochs": 10,
              "early_stopping_patience": 10, "batch_size": 16, "lr": 1e-3, "lr_patience": 2, "lr_factor": 0.5}
    m1, log1 = train_classifier(x, y, xv, yv, 3, params, seed=1, device=torch.device("cpu"))
    m2, log2 = train_classifier(x, y, xv, yv, 3, params, seed=1, device=torch.device("cpu"))
    assert log1 == log2
    assert log1[-1]["val_f1_macro"] > 0.9
    with pytest.raises(ValueError, match="training set is empty"):
        train_classifier(x[:0], y[:0], xv, yv, 3, params, seed=1, device=torch.device("cpu"))


@pytest.mark.parametrize("arch,dim", [("small_cnn", 16), ("resnet18", 512), ("vgg13", 4096)])
def test_classifier_features_and_levels(arch, dim):
    m = build_classifier(arch, 3, feature_dim=16).eval()
    x = torch.zeros(2, 3, 32, 32)
    with torch.no_grad():
        assert m.features(x).shape == (2, dim)
        assert m(x).shape == (2, 3)
        levels = m.feature_maps(x)
    assert len(levels) == 5 and all(f.ndim == 4 and len(f) == 2 for f in levels)


def test_timm_inception_v3_resizes_to_its_input_size():
    """CLUE's InceptionV3 (timm, random weights) at 299 px here 75, its smallest input: 2048 pre-logits."""
    m = build_classifier("inception_v3", 3, input_size=75).eval()
    with torch.no_grad():
        assert m.features(torch.zeros(2, 3, 32, 32)).shape == (2, 2048)
        assert [f.shape[-1] for f in m.feature_maps(torch.zeros(1, 3, 32, 32))] == [35, 15, 7, 3, 1]
    with pytest.raises(ValueError, match="'inceptionv3' is neither small_cnn nor a timm model"):
        build_classifier("inceptionv3", 3)


def test_too_small_images_fail_before_training_naming_input_size():
    rng = np.random.default_rng(0)
    x, y = _blobs(4, rng)
    params = {"arch": "inception_v3", "feature_dim": 16, "width": 8, "input_size": None, "shift_pixels": 1,
              "epochs": 1, "early_stopping_patience": 1, "batch_size": 4, "lr": 1e-3, "lr_patience": 1,
              "lr_factor": 0.5}
    with pytest.raises(ValueError, match=r"cannot take 16 x 16 px images .*set `input_size`"):
        train_classifier(x, y, x, y, 3, params, seed=0, device=torch.device("cpu"))


def test_quality_table_rows_and_identical_sets():
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(60, 4))
    labels = np.repeat([0, 1], 30)
    splits = np.array(["train_a", "test"] * 30)
    t = quality_table(feats, labels, splits, feats, labels, ["a", "b"], k=3)
    assert set(t["reference"]) == {"train", "test", "train+test"}
    assert set(t["class"]) == {"a", "b", "all"}
    assert set(t["metric"]) == {"fid", "recall", "precision", "improved_recall", "density", "coverage"}
    both = t[(t["reference"] == "train+test") & (t["class"] == "all")].set_index("metric")["value"]
    assert both["fid"] == pytest.approx(0.0, abs=1e-6)  # generated == real
    assert 0.0 <= both["recall"] <= 1.0
    # Identical sets: every sample is in its own ball, so precision, recall and coverage are 1.
    assert both["precision"] == both["improved_recall"] == both["coverage"] == 1.0 and both["density"] >= 1 / 5


def test_evaluate_reads_cached_real_features_with_the_same_numbers(tiny_manifest, tiny_feature_net, tmp_path,
                                                                   tiny_config):
    from pipeline_lib.evaluate import evaluate_synthetic
    from pipeline_lib.io import feature_frame
    from pipeline_lib.nets import extract_features, load_feature_net
    from pipeline_lib.torchutils import load_images

    classes = tiny_config["data"]["classes"]
    real = pd.read_parquet(tiny_manifest)
    fake = real[real["split"] == "train_a"].assign(split="synthetic")  # stand-in generated set, same folder
    fake.to_parquet(tiny_manifest.parent / "fake.parquet")
    x, _, rows = load_images(tiny_manifest, ["train_a", "train_b", "test", "external"], classes)
    feats = extract_features(load_feature_net(tiny_feature_net, torch.device("cpu")), x, torch.device("cpu"))
    feature_frame(feats, rows).to_parquet(tmp_path / "real.parquet")
    params = {"recall_k": 3, "precision_k": 2, "density_k": 2, "is_splits": 2, "variant": "v", "setting": "s",
              "seed": 0, "device": "cpu", "classes": classes}
    a = evaluate_synthetic(tiny_manifest, tiny_feature_net, tiny_manifest.parent / "fake.parquet",
                           tmp_path / "a.parquet", params, features_out=tmp_path / "f.parquet")
    b = evaluate_synthetic(tiny_manifest, tiny_feature_net, tiny_manifest.parent / "fake.parquet",
                           tmp_path / "b.parquet", params, real_features=tmp_path / "real.parquet")
    pd.testing.assert_frame_equal(a, b)
    assert set(a.loc[a["reference"] == "none", "metric"]) == {"inception_score", "inception_score_std"}
    assert 1.0 <= a.loc[a["metric"] == "inception_score", "value"].item() <= len(classes)
    assert len(pd.read_parquet(tmp_path / "f.parquet")) == len(fake)


def test_summarise_mean_and_sample_std():
    df = pd.DataFrame({"arch": ["x", "x", "y"], "f1": [0.6, 0.8, 0.5]})
    s = summarise(df, ["arch"], ["f1"]).set_index("arch")
    assert s.loc["x", "mean"] == pytest.approx(0.7)
    assert s.loc["x", "std"] == pytest.approx(np.std([0.6, 0.8], ddof=1))
    assert s.loc["x", "n_seeds"] == 2 and np.isnan(s.loc["y", "std"])


def test_augment_flips_and_shifts_with_black_border():
    from pipeline_lib.nets import augment

    x = torch.arange(2 * 3 * 6 * 6, dtype=torch.float32).reshape(2, 3, 6, 6) / 100
    out = augment(x, 2, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    # Every output is the input (or its mirror) moved by at most 2 px, with -1 (black) where it moved out.
    for i in range(2):
        ok = False
        for img in (x[i], x[i].flip(-1)):
            for dy in range(-2, 3):
                for dx in range(-2, 3):
                    moved = torch.full_like(img, -1.0)
                    ys, yd = (slice(max(0, dy), 6 + min(0, dy)), slice(max(0, -dy), 6 + min(0, -dy)))
                    xs, xd = (slice(max(0, dx), 6 + min(0, dx)), slice(max(0, -dx), 6 + min(0, -dx)))
                    moved[:, yd, xd] = img[:, ys, xs]
                    ok |= torch.equal(moved, out[i])
        assert ok
    flipped_only = augment(x, 0, torch.Generator().manual_seed(1))
    assert all(torch.equal(o, i) or torch.equal(o, i.flip(-1)) for o, i in zip(flipped_only, x))


def test_timm_inception_v3_domain_network_trains_saves_and_embeds(tiny_manifest, tiny_config, tmp_path):
    """CLUE's domain network (timm InceptionV3 from scratch on train_a, selected on train_b), at its smallest
    input here: the saved model loads back with the same features."""
    from pipeline_lib.feature_net import train_feature_net
    from pipeline_lib.io import feature_columns
    from pipeline_lib.nets import extract_features, load_feature_net
    from pipeline_lib.torchutils import load_images

    params = {k: v for k, v in tiny_config["evaluate"].items() if not k.endswith(("_k", "_splits"))}
    params |= {"arch": "inception_v3", "input_size": 75, "epochs": 1, "seed": 0, "device": "cpu",
               "classes": tiny_config["data"]["classes"]}
    train_feature_net(tiny_manifest, tmp_path / "m.pt", tmp_path / "log.parquet", params,
                      features_out=tmp_path / "real.parquet")
    net = load_feature_net(tmp_path / "m.pt", torch.device("cpu"))
    x, _, rows = load_images(tiny_manifest, ["test"], tiny_config["data"]["classes"])
    feats = extract_features(net, x, torch.device("cpu"))
    assert feats.shape == (len(x), 2048)
    cached = pd.read_parquet(tmp_path / "real.parquet").set_index("image_id").loc[rows["image_id"]]
    assert np.allclose(cached[feature_columns(cached)].to_numpy(), feats, atol=1e-4)
