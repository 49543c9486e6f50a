"""Every training augmentation is a named option (``hflip``, ``shift_pixels``) and honoured: off, a batch comes
through unchanged; on, it is mirrored or shifted as documented."""
import torch

from pipeline_lib.autoencoder import mirror_batch
from pipeline_lib.nets import augment
from pipeline_lib.torchutils import with_mirrors

BATCH = torch.arange(4 * 3 * 5 * 6, dtype=torch.float32).reshape(4, 3, 5, 6) / 360 - 0.5  # no symmetric image


def test_classifier_augmentation_off_leaves_the_batch_unchanged():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        assert torch.equal(augment(BATCH, 0, g, hflip=False), BATCH)


def test_classifier_flips_mirror_some_images_and_only_mirror_them():
    g = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(20):
        out = augment(BATCH, 0, g, hflip=True)
        for i in range(len(BATCH)):
            same, mirrored = torch.equal(out[i], BATCH[i]), torch.equal(out[i], BATCH[i].flip(-1))
            assert same != mirrored
            seen.add(mirrored)
    assert seen == {True, False}


def test_classifier_shift_without_flip_moves_the_batch_by_at_most_the_shift():
    g = torch.Generator().manual_seed(1)
    out = augment(BATCH, 1, g, hflip=False)
    candidates = []
    padded = torch.nn.functional.pad(BATCH, (1, 1, 1, 1), value=-1.0)
    for dy in range(3):
        for dx in range(3):
            candidates.append(torch.equal(out, padded[..., dy:dy + 5, dx:dx + 6]))
    assert sum(candidates) == 1  # one shift for the whole batch, never a flip


def test_diffusion_mirror_images_only_when_on():
    labels = torch.tensor([0, 1, 2, 0])
    assert torch.equal(with_mirrors(BATCH, False), BATCH) and torch.equal(with_mirrors(labels, False), labels)
    doubled = with_mirrors(BATCH, True)
    assert torch.equal(doubled[:4], BATCH) and torch.equal(doubled[4:], BATCH.flip(-1))
    assert with_mirrors(labels, True).tolist() == [0, 1, 2, 0, 0, 1, 2, 0]


def test_autoencoder_batch_mirrored_only_when_on():
    g = torch.Generator().manual_seed(0)
    assert all(torch.equal(mirror_batch(BATCH, False, g), BATCH) for _ in range(20))
    outs = [mirror_batch(BATCH, True, g) for _ in range(20)]
    assert any(torch.equal(o, BATCH.flip(-1)) for o in outs) and any(torch.equal(o, BATCH) for o in outs)
    assert all(torch.equal(o, BATCH) or torch.equal(o, BATCH.flip(-1)) for o in outs)
