"""Published model folders: bit-exact round trips, strict loading with named problems, presets, precision."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from ds_kronos.errors import ModelFolderError
from ds_kronos.model import PREDICTOR_PRESETS, Kronos, KronosConfig, KronosTokenizer, KronosTokenizerConfig
from ds_kronos.model.layers import RotaryEmbedding
from helpers import fixtures_dir

GOLDEN = fixtures_dir() / "golden"


@pytest.mark.parametrize("kind,cls", [("tokenizer", KronosTokenizer), ("predictor", Kronos)])
def test_golden_save_load_is_bit_exact(tmp_path, kind, cls):
    source = GOLDEN / kind
    model = cls.from_pretrained(source)
    out = model.save_pretrained(tmp_path / kind)
    original, written = load_file(str(source / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert sorted(original) == sorted(written)
    for name, tensor in original.items():
        assert written[name].dtype == tensor.dtype, name
        assert torch.equal(written[name], tensor), name
    # config.json is byte-identical to what huggingface_hub's mixin wrote for upstream.
    assert (out / "config.json").read_text() == (source / "config.json").read_text()
    reloaded = cls.from_pretrained(out)
    for (name, a), (_, b) in zip(model.state_dict().items(), reloaded.state_dict().items()):
        assert torch.equal(a, b), name


def test_upstream_style_constructor_kwargs_match_config():
    values = json.loads((GOLDEN / "predictor" / "config.json").read_text())
    assert Kronos(**values).config == KronosConfig(**values)


def test_save_replaces_existing_folder_without_leftovers(tmp_path):
    model = Kronos.from_preset("tiny")
    model.save_pretrained(tmp_path / "best")
    with torch.no_grad():
        model.head.proj_s1.bias.add_(1.0)
    model.save_pretrained(tmp_path / "best")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]
    assert torch.equal(Kronos.from_pretrained(tmp_path / "best").head.proj_s1.bias, model.head.proj_s1.bias)


def _copy_golden(tmp_path, kind="predictor"):
    folder = tmp_path / kind
    shutil.copytree(GOLDEN / kind, folder)
    for path in folder.iterdir():
        path.chmod(0o644)
    folder.chmod(0o755)
    return folder


def _rewrite_weights(folder, change):
    state = load_file(str(folder / "model.safetensors"))
    change(state)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})


def test_missing_unexpected_and_misshaped_tensors_are_named(tmp_path):
    folder = _copy_golden(tmp_path)

    def damage(state):
        del state["norm.weight"]
        state["extra.weight"] = torch.zeros(3)
        state["head.proj_s1.bias"] = torch.zeros(7)
    _rewrite_weights(folder, damage)
    with pytest.raises(ModelFolderError) as info:
        Kronos.from_pretrained(folder)
    message = str(info.value)
    assert "1 missing tensor(s): norm.weight" in message
    assert "1 unexpected tensor(s): extra.weight" in message
    assert "head.proj_s1.bias (file (7,), model (16,))" in message


def test_missing_buffer_is_refused(tmp_path):
    folder = _copy_golden(tmp_path, "tokenizer")
    _rewrite_weights(folder, lambda state: state.pop("tokenizer.bsq.group_basis"))
    with pytest.raises(ModelFolderError, match="tokenizer.bsq.group_basis"):
        KronosTokenizer.from_pretrained(folder)


def test_config_problems_are_named(tmp_path):
    folder = _copy_golden(tmp_path)
    values = json.loads((folder / "config.json").read_text())
    values.pop("n_layers")
    values["rope_theta"] = 1.0
    (folder / "config.json").write_text(json.dumps(values))
    with pytest.raises(ModelFolderError, match=r"missing key\(s\) n_layers; unexpected key\(s\) rope_theta"):
        Kronos.from_pretrained(folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ModelFolderError, match="not valid JSON"):
        Kronos.from_pretrained(folder)


def test_hub_id_without_network_fails_fast_with_download_hint(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelFolderError, match=r"huggingface-cli download NeoQuasar/Kronos-small --local-dir"):
        Kronos.from_pretrained("NeoQuasar/Kronos-small")


def test_missing_folder_and_pickle_only_folder(tmp_path):
    with pytest.raises(ModelFolderError, match="does not exist"):
        Kronos.from_pretrained(tmp_path / "nope")
    folder = tmp_path / "old"
    folder.mkdir()
    shutil.copy(GOLDEN / "predictor" / "config.json", folder / "config.json")
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04not really")
    with pytest.raises(ModelFolderError, match="pickle"):
        Kronos.from_pretrained(folder)


def test_published_presets_have_published_parameter_counts():
    expected = {"mini": 4_108_032, "small": 24_741_376, "base": 102_310_592}
    for name, count in expected.items():
        with torch.device("meta"):
            model = Kronos.from_preset(name)
        assert sum(p.numel() for p in model.parameters()) == count, name
    for name in ("base", "2k"):
        with torch.device("meta"):
            tok = KronosTokenizer.from_preset(name)
        assert sum(p.numel() for p in tok.parameters()) == 3_958_042
    assert KronosTokenizer.from_preset("2k").config.group_size == 5


def test_scaling_presets_sizes():
    sizes = {}
    for name in ("large", "1b", "3b"):
        with torch.device("meta"):
            sizes[name] = sum(p.numel() for p in Kronos.from_preset(name).parameters())
    assert abs(sizes["large"] - 499.2e6) < 0.1e6
    assert 0.9e9 < sizes["1b"] < 1.1e9
    assert 2.8e9 < sizes["3b"] < 3.2e9


def test_tiny_presets_are_small_and_paired():
    predictor, tokenizer = Kronos.from_preset("tiny"), KronosTokenizer.from_preset("tiny")
    assert sum(p.numel() for p in predictor.parameters()) < 1_000_000
    assert sum(p.numel() for p in tokenizer.parameters()) < 1_000_000
    assert PREDICTOR_PRESETS["tiny"].tokenizer == "tiny"
    assert (predictor.config.s1_bits, predictor.config.s2_bits) == (tokenizer.config.s1_bits,
                                                                     tokenizer.config.s2_bits)


def test_unknown_preset_lists_choices():
    with pytest.raises(ModelFolderError, match="unknown predictor preset 'huge'.*tiny, mini, small"):
        Kronos.from_preset("huge")


def test_preset_init_follows_upstream_scheme():
    torch.manual_seed(0)
    model = Kronos.from_preset("tiny")
    assert torch.equal(model.norm.weight, torch.ones_like(model.norm.weight))
    assert torch.equal(model.head.proj_s1.bias, torch.zeros_like(model.head.proj_s1.bias))
    std = model.embedding.emb_s1.weight.std().item()
    assert abs(std - 64 ** -0.5) < 0.02


def test_rotary_positions_stay_exact_in_bf16():
    """Upstream rounds inv_freq and the cached angles to bf16 (errors ~0.2 rad by position 100); here not."""
    rotary = RotaryEmbedding(64).to(torch.bfloat16)
    assert rotary.inv_freq.dtype == torch.float32
    torch.testing.assert_close(rotary.inv_freq, RotaryEmbedding(64).inv_freq, rtol=0, atol=0)
    cos, sin = rotary.cos_sin(128, torch.device("cpu"))
    assert cos.dtype == torch.float32
    positions = torch.arange(128, dtype=torch.float64)
    inv_freq = 1.0 / (10000 ** (torch.arange(0, 64, 2, dtype=torch.float64) / 64))
    angles = torch.outer(positions, inv_freq)
    assert (cos[:, :32].double() - angles.cos()).abs().max() < 1e-4
    # The rotated bf16 vectors agree with an fp64 rotation to bf16 rounding (~1e-2), not to angle errors (~0.2).
    q = torch.randn(1, 1, 128, 64)
    rotated, _ = rotary(q.to(torch.bfloat16), q.to(torch.bfloat16))
    q64 = q.double()
    full_angles = torch.cat([angles, angles], dim=-1)
    reference = q64 * full_angles.cos() + torch.cat([-q64[..., 32:], q64[..., :32]], dim=-1) * full_angles.sin()
    assert (rotated.double() - reference).abs().max() < 0.05


def test_bf16_predictor_tracks_fp32():
    torch.manual_seed(1)
    model = Kronos.from_preset("tiny").eval()
    s1 = torch.randint(0, 1024, (2, 100))
    s2 = torch.randint(0, 1024, (2, 100))
    with torch.no_grad():
        ref, _ = model(s1, s2, use_teacher_forcing=True, s1_targets=s1)
        low, _ = model.to(torch.bfloat16)(s1, s2, use_teacher_forcing=True, s1_targets=s1)
    assert low.dtype == torch.bfloat16
    assert (low.float() - ref).abs().max() < 0.15 * ref.abs().max()


def test_decode_half_with_unequal_bit_widths():
    """Upstream's decode(half=True) assumes s1_bits == s2_bits; here each part uses its own width."""
    torch.manual_seed(2)
    tok = KronosTokenizer(KronosTokenizerConfig(d_model=16, n_heads=2, ff_dim=32, n_enc_layers=2, n_dec_layers=2,
                                                s1_bits=3, s2_bits=5, group_size=4)).eval()
    x = torch.randn(2, 10, 6)
    s1, s2 = tok.encode(x, half=True)
    assert int(s1.max()) < 8 and int(s2.max()) < 32
    full = tok.encode(x)
    assert torch.equal(full, s1 + (s2 << 3))
    torch.testing.assert_close(tok.decode([s1, s2], half=True), tok.decode(full, half=False))


def test_padding_mask_hides_padded_keys():
    torch.manual_seed(3)
    model = Kronos.from_preset("tiny").eval()
    s1 = torch.randint(0, 1024, (1, 12))
    s2 = torch.randint(0, 1024, (1, 12))
    pad = torch.zeros(1, 12, dtype=torch.bool)
    pad[:, :4] = True  # left padding
    with torch.no_grad():
        masked, _ = model(s1, s2, padding_mask=pad, use_teacher_forcing=True, s1_targets=s1)
        changed = s1.clone()
        changed[:, :4] = (changed[:, :4] + 7) % 1024
        masked_changed, _ = model(changed, s2, padding_mask=pad, use_teacher_forcing=True, s1_targets=changed)
    assert torch.isfinite(masked).all()
    torch.testing.assert_close(masked[:, 4:], masked_changed[:, 4:])
    assert not math.isclose(float(masked[:, 3].sum()), float(masked_changed[:, 3].sum()))
