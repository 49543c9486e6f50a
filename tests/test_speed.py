"""The speed switches: validated by key, the defaults change no number, and each switch does what it says on the
CPU (what only a GPU can show, bf16 and TF32, is measured by benchmarks/gpu_speed.py)."""
import pandas as pd
import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

from pipeline_lib import torchutils
from pipeline_lib.diffusion import build_unet
from pipeline_lib.harness import configure_loading
from pipeline_lib.io import LOADING
from pipeline_lib.nets import train_classifier
from pipeline_lib.speed import Speed, set_attention
from pipeline_lib.torchutils import load_images, to_device
from conftest import CPU, TINY_UNET



@pytest.mark.parametrize("speed, message", [
    ({"attention": "flash"}, r"speed.attention must be one of \['sdpa', 'classic'\], got 'flash'"),
    ({"mixed_precision": "fp16"}, r"speed.mixed_precision must be one of \['no', 'bf16'\], got 'fp16'"),
    ({"channels_last": "yes"}, r"speed.channels_last must be true or false, got 'yes'"),
    ({"sampling_precision": "half"}, r"speed.sampling_precision must be one of \['fp32', 'bf16', 'auto'\], got 'half'"),
])
def test_a_wrong_switch_is_named(speed, message):
    with pytest.raises(ValueError, match=message):
        Speed.from_params({"speed": speed})


def test_the_workflow_passes_exactly_the_numeric_switches_to_the_stages():
    from dataclasses import fields

    from pipeline_lib.config import SPEED_NUMERIC, SPEED_SAMPLING

    assert list(SPEED_NUMERIC + SPEED_SAMPLING) == [f.name for f in fields(Speed)]


def test_loader_settings_default_to_the_jobs_own_thread(monkeypatch):
    for key, value in LOADING.items():
        monkeypatch.setitem(LOADING, key, value)  # restored after the test
    configure_loading(None)
    assert LOADING == {"workers": 0, "pin_memory": False}
    configure_loading({"speed": {"num_workers": 3, "pin_memory": True}})
    assert LOADING == {"workers": 3, "pin_memory": True}


@pytest.fixture()
def unet():
    torch.manual_seed(0)
    params = {"block_out_channels": [16, 32], "attention_levels": [False, True], "layers_per_block": 1,
              "cross_attention_dim": 16, "attention_head_dim": 8, "norm_num_groups": 8}
    return build_unet(8, 4, params).eval()


def _forward(unet, speed=Speed()):
    g = torch.Generator().manual_seed(1)
    x, cond = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 5, 16, generator=g)
    with torch.no_grad():
        return unet(speed.batch(x), torch.tensor([10, 500, 900]), encoder_hidden_states=cond).sample


def test_classic_attention_matches_sdpa_and_keeps_adapter_processors(unet):
    reference = _forward(unet)
    attn = [m for m in unet.modules() if hasattr(m, "set_processor")]
    assert attn and all(type(m.processor) is AttnProcessor2_0 for m in attn)

    class Adapter(AttnProcessor2_0):  # stands for the CLUE / GLIGEN processors
        pass

    attn[0].set_processor(Adapter())
    assert set_attention(unet, "classic") == len(attn) - 1
    assert type(attn[0].processor) is Adapter and all(type(m.processor) is AttnProcessor for m in attn[1:])
    torch.testing.assert_close(_forward(unet), reference, atol=1e-5, rtol=1e-4)
    assert set_attention(unet, "sdpa") == len(attn) - 1


def test_channels_last_changes_the_layout_not_the_result(unet):
    reference = _forward(unet)
    speed = Speed(channels_last=True)
    speed.prepare(unet)
    assert unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(_forward(unet, speed), reference, atol=1e-5, rtol=1e-4)


def test_compile_compiles_in_place_and_keeps_the_state_dict(unet, monkeypatch):
    calls = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *a, **kw: calls.append(type(self).__name__))
    keys = list(unet.state_dict())
    assert Speed(compile=True).prepare(unet) is unet and calls == ["UNet2DConditionModel"]
    assert list(unet.state_dict()) == keys


def test_default_switches_give_the_same_classifier_as_no_switches():
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(24, 3, 16, 16, generator=g) * 2 - 1, torch.arange(24) % 3
    params = {"arch": "small_cnn", "feature_dim": 8, "width": 4, "input_size": None, "shift_pixels": 1, "epochs": 2,
              "early_stopping_patience": 3, "batch_size": 8, "lr": 1e-3, "lr_patience": 2, "lr_factor": 0.5}
    _, plain = train_classifier(x, y, x, y, 3, params, 0, CPU)
    defaults = {"mixed_precision": "no", "tf32": False, "channels_last": False, "attention": "sdpa",
                "compile": False}
    _, switched = train_classifier(x, y, x, y, 3, {**params, "speed": defaults}, 0, CPU)
    pd.testing.assert_frame_equal(pd.DataFrame(plain), pd.DataFrame(switched))


def test_bf16_sampling_converts_the_denoiser_and_warns_where_the_cpu_lacks_bf16(monkeypatch, caplog):
    from pipeline_lib import speed as speed_module

    unet = build_unet(8, 4, TINY_UNET)
    assert Speed().for_sampling(unet, CPU).dtype == torch.float32  # fp32 by default: nothing changes
    monkeypatch.setattr(speed_module, "native_bf16", lambda device: False)
    with caplog.at_level("WARNING", logger="pipeline_lib"):
        half = Speed(sampling_precision="bf16").for_sampling(unet, CPU)
    assert half is unet and unet.dtype == torch.bfloat16
    assert all(p.dtype == torch.bfloat16 for p in unet.parameters())
    assert "this CPU has no native bf16 instructions" in caplog.text


@pytest.mark.parametrize("native", [True, False])
def test_auto_sampling_precision_is_bf16_only_where_the_machine_computes_it_natively(monkeypatch, caplog, native):
    from pipeline_lib import speed as speed_module

    monkeypatch.setattr(speed_module, "native_bf16", lambda device: native)
    unet = build_unet(8, 4, TINY_UNET)
    with caplog.at_level("INFO", logger="pipeline_lib"):
        sampled = Speed.from_params({"speed": {"sampling_precision": "auto"}}).for_sampling(unet, CPU)
    expected = torch.bfloat16 if native else torch.float32
    assert sampled is unet and all(p.dtype == expected for p in unet.parameters())
    assert f"samples in {str(expected).split('.')[-1]} on cpu" in caplog.text
    assert "no native bf16" not in caplog.text  # auto never takes the emulated path, so it has nothing to warn of


def test_bf16_autocast_is_gpu_only():
    assert not torch.is_autocast_enabled("cpu")
    with Speed(mixed_precision="bf16").autocast(CPU):
        assert not torch.is_autocast_enabled("cpu")


def test_decoding_threads_and_pinned_memory_change_no_number(tiny_manifest, tiny_config, monkeypatch):
    classes, splits = tiny_config["data"]["classes"], ["train_a", "train_b"]
    x0, y0, rows0 = load_images(tiny_manifest, splits, classes)
    monkeypatch.setitem(torchutils.LOADING, "workers", 2)
    monkeypatch.setitem(torchutils.LOADING, "pin_memory", True)
    x2, y2, rows2 = load_images(tiny_manifest, splits, classes)
    assert torch.equal(x0, x2) and torch.equal(y0, y2) and rows0.equals(rows2)
    assert torch.equal(to_device(x0[:4], CPU), x0[:4])  # on the CPU nothing is pinned or copied
