"""Incremental decoding (KV cache) against full recomputation: same ids, same values, less work.

Coverage by preset (random weights): tiny and mini through the whole sampler (greedy, several sampling settings,
batches of series, several paths, sliding windows, per-series generators); small and base through the whole
sampler with a short context (16 bars, 4 steps, 2 series); large, 1b and 3b at the layer level (one transformer
block and the dependency layer built with that preset's sizes), since their full models are too slow for a test.
The golden checkpoint (upstream's own forecasts) is reproduced by both paths.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ds_kronos.forecast import autoregressive_forecast, generate_tokens, sample_paths
from ds_kronos.model import PREDICTOR_PRESETS, Kronos, KronosTokenizer
from ds_kronos.model.heads import DependencyAwareLayer
from ds_kronos.model.layers import KVCache, TransformerBlock
from helpers import fixtures_dir

SETTINGS = {
    "greedy": dict(temperature=1.0, top_k=1, top_p=1.0),
    "nucleus": dict(temperature=1.0, top_k=0, top_p=0.9),
    "top_k_cool": dict(temperature=0.7, top_k=5, top_p=1.0),
    "hot_full_vocab": dict(temperature=1.5, top_k=0, top_p=1.0),
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def random_inputs(rows: int, length: int, bits: int = 10, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    s1 = torch.randint(0, 2 ** bits, (rows, length), generator=g)
    s2 = torch.randint(0, 2 ** bits, (rows, length), generator=g)
    stamp = torch.stack([torch.randint(0, n, (rows, length), generator=g) for n in (60, 24, 7, 32, 13)], -1).float()
    return s1, s2, stamp


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def both_paths(model: Kronos, history: int, pred_len: int, max_context: int, rows: int = 3, seed: int = 1,
               **sampling) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    s1, s2, stamp = random_inputs(rows, history + pred_len, model.s1_bits, seed)
    common = dict(max_context=max_context, pred_len=pred_len, **sampling)
    cached = generate_tokens(model, s1[:, :history], s2[:, :history], stamp, generator=seeded(seed), use_cache=True,
                             **common)
    full = generate_tokens(model, s1[:, :history], s2[:, :history], stamp, generator=seeded(seed), use_cache=False,
                           **common)
    return cached, full


@pytest.fixture(scope="module")
def tiny_pair() -> tuple[KronosTokenizer, Kronos]:
    torch.manual_seed(0)
    return KronosTokenizer.from_preset("tiny").eval(), Kronos.from_preset("tiny").eval()


@pytest.fixture(scope="module")
def mini() -> Kronos:
    torch.manual_seed(1)
    return Kronos.from_preset("mini").eval()


# --- Whole sampler, tiny and mini ---------------------------------------------------------------------------------

@pytest.mark.parametrize("setting", sorted(SETTINGS))
@pytest.mark.parametrize("history,pred_len,max_context", [
    (24, 8, 512),   # the window never slides: one prefill, then one position per step
    (20, 10, 24),   # slides after 4 steps: the cache is rebuilt from the window at every later step
    (30, 5, 16),    # history longer than the window: every step is a rebuild
])
def test_tiny_cached_ids_equal_recompute(tiny_pair, setting, history, pred_len, max_context):
    (c1, c2), (f1, f2) = both_paths(tiny_pair[1], history, pred_len, max_context, **SETTINGS[setting])
    assert torch.equal(c1, f1) and torch.equal(c2, f2)
    assert c1.shape == (3, history + pred_len)


@pytest.mark.parametrize("setting", ["greedy", "nucleus", "top_k_cool"])
def test_mini_cached_ids_equal_recompute(mini, setting):
    for history, pred_len, max_context in ((40, 10, 2048), (30, 8, 32)):
        (c1, c2), (f1, f2) = both_paths(mini, history, pred_len, max_context, **SETTINGS[setting])
        assert torch.equal(c1, f1) and torch.equal(c2, f2), (history, pred_len, max_context)


@pytest.mark.parametrize("name", ["small", "base"])
def test_larger_presets_cached_ids_equal_recompute_short_context(name):
    torch.manual_seed(2)
    model = Kronos.from_preset(name).eval()
    for setting in ("greedy", "nucleus"):
        (c1, c2), (f1, f2) = both_paths(model, 16, 4, 512, rows=2, **SETTINGS[setting])
        assert torch.equal(c1, f1) and torch.equal(c2, f2), setting


def test_sampled_paths_equal_with_several_paths_and_series(tiny_pair):
    tokenizer, predictor = tiny_pair
    g = torch.Generator().manual_seed(5)
    x = torch.randn(4, 32, 6, generator=g)
    stamp = random_inputs(4, 40, seed=5)[2]
    outputs = []
    for use_cache in (True, False):
        outputs.append(sample_paths(tokenizer, predictor, x, stamp[:, :32], stamp[:, 32:], 512, 8, top_p=0.9,
                                    sample_count=3, generator=seeded(9), use_cache=use_cache))
    assert outputs[0].shape == (4, 3, 40, 6)
    assert torch.equal(outputs[0], outputs[1])  # identical ids decode to identical values
    # The three paths of a series differ (they are samples), so the test is not vacuous.
    assert not torch.equal(outputs[0][:, 0], outputs[0][:, 1])
    mean_cached = autoregressive_forecast(tokenizer, predictor, x, stamp[:, :32], stamp[:, 32:], 512, 8,
                                          sample_count=3, generator=seeded(9))
    mean_full = autoregressive_forecast(tokenizer, predictor, x, stamp[:, :32], stamp[:, 32:], 512, 8,
                                        sample_count=3, generator=seeded(9), use_cache=False)
    assert np.abs(mean_cached - mean_full).max() <= 1e-5


def test_global_generator_draws_in_the_same_order(tiny_pair):
    predictor = tiny_pair[1]
    s1, s2, stamp = random_inputs(2, 30, seed=3)
    results = []
    for use_cache in (True, False):
        torch.manual_seed(1234)
        results.append(generate_tokens(predictor, s1[:, :24], s2[:, :24], stamp, 512, 6, top_p=0.9,
                                       use_cache=use_cache))
        results.append(torch.rand(1))  # the global stream is left at the same point
    assert torch.equal(results[0][0], results[2][0]) and torch.equal(results[0][1], results[2][1])
    assert torch.equal(results[1], results[3])


def test_per_series_generators_make_a_series_independent_of_its_batch(tiny_pair):
    tokenizer, predictor = tiny_pair
    g = torch.Generator().manual_seed(6)
    x = torch.randn(3, 24, 6, generator=g)
    stamp = random_inputs(3, 30, seed=6)[2]
    together = sample_paths(tokenizer, predictor, x, stamp[:, :24], stamp[:, 24:], 512, 6, top_p=0.9,
                            sample_count=2, generator=[seeded(100 + i) for i in range(3)])
    for i in range(3):
        alone = sample_paths(tokenizer, predictor, x[i:i + 1], stamp[i:i + 1, :24], stamp[i:i + 1, 24:], 512, 6,
                             top_p=0.9, sample_count=2, generator=[seeded(100 + i)])
        assert torch.equal(alone[0], together[i])
    with pytest.raises(ValueError, match="2 generators for 3 series"):
        sample_paths(tokenizer, predictor, x, stamp[:, :24], stamp[:, 24:], 512, 6, generator=[seeded(0)] * 2)


# --- The cache does less work --------------------------------------------------------------------------------------

def positions_through_first_block(model: Kronos, history: int, pred_len: int, max_context: int,
                                  use_cache: bool) -> int:
    block = model.transformer[0]
    seen: list[int] = []
    original_forward, original_cached = block.forward, block.forward_cached

    def count(original):
        def wrapper(x, *args, **kwargs):
            seen.append(x.shape[1])
            return original(x, *args, **kwargs)
        return wrapper

    block.forward, block.forward_cached = count(original_forward), count(original_cached)
    try:
        s1, s2, stamp = random_inputs(1, history + pred_len)
        generate_tokens(model, s1[:, :history], s2[:, :history], stamp, max_context, pred_len, top_k=1,
                        use_cache=use_cache)
    finally:
        del block.forward, block.forward_cached
    return sum(seen)


def test_cache_cost_grows_with_context_plus_horizon(tiny_pair):
    predictor = tiny_pair[1]
    history, pred_len = 40, 10
    assert positions_through_first_block(predictor, history, pred_len, 512, True) == history + pred_len - 1
    assert positions_through_first_block(predictor, history, pred_len, 512, False) == sum(
        history + step for step in range(pred_len))
    # Window of 44: steps 0-4 fit (40 + 4 cached positions), steps 5-9 slide and rebuild a 44-position window.
    assert positions_through_first_block(predictor, history, pred_len, 44, True) == history + 4 + 5 * 44


def test_cache_guards(tiny_pair):
    predictor = tiny_pair[1]
    s1, s2, stamp = random_inputs(2, 6)
    cache = predictor.new_cache(2, 4)
    with torch.no_grad():
        with pytest.raises(ValueError, match="exceed its capacity 4"):
            predictor.decode_s1_cached(s1, s2, stamp, cache)
        predictor.train()
        try:
            with pytest.raises(RuntimeError, match="eval"):
                predictor.decode_s1_cached(s1[:, :2], s2[:, :2], stamp[:, :2], predictor.new_cache(2, 4))
        finally:
            predictor.eval()


# --- Layer level, every preset's sizes ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(PREDICTOR_PRESETS))
def test_layer_cache_matches_full_computation_for_every_preset_size(name):
    config = PREDICTOR_PRESETS[name].config
    torch.manual_seed(3)
    block = TransformerBlock(config.d_model, config.n_heads, config.ff_dim).eval()
    dep = DependencyAwareLayer(config.d_model).eval()
    x = torch.randn(2, 12, config.d_model)
    sibling = torch.randn(2, 1, config.d_model)
    with torch.no_grad():
        full = block(x)
        attn = block.self_attn
        cache = KVCache.empty(2, attn.n_heads, attn.head_dim, 12, x.device, x.dtype)
        # A prefill of 5 positions, two single steps, then 5 positions at once (the masked multi-position case).
        parts = [block.forward_cached(x[:, :5], cache), block.forward_cached(x[:, 5:6], cache),
                 block.forward_cached(x[:, 6:7], cache), block.forward_cached(x[:, 7:], cache)]
        # A prefill is the full computation on the same positions (the same kernel calls): equal to the bit.
        torch.testing.assert_close(parts[0], block(x[:, :5]), rtol=0, atol=0)
        torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=1e-5, atol=1e-5)
        assert cache.length == 12

        # The dependency layer's decode step: one query, unmasked over the context, rotary position 0.
        dep_cache = dep.new_cache(2, 12, x.device, x.dtype)
        dep.extend_cache(full[:, :7], dep_cache)
        dep.extend_cache(full[:, 7:], dep_cache)
        expected = dep(full, sibling)[:, -1:]
        torch.testing.assert_close(dep.forward_cached(full[:, -1:], sibling, dep_cache), expected, rtol=1e-5,
                                   atol=1e-5)


# --- Golden checkpoint: upstream's own forecasts -------------------------------------------------------------------

@pytest.mark.parametrize("use_cache", [True, False])
def test_both_paths_reproduce_upstream_golden_forecasts(use_cache):
    folder = fixtures_dir() / "golden"
    v = np.load(folder / "vectors.npz")
    tokenizer = KronosTokenizer.from_pretrained(folder / "tokenizer").eval()
    predictor = Kronos.from_pretrained(folder / "predictor").eval()
    x, stamp = torch.tensor(v["x"], dtype=torch.float32), torch.tensor(v["stamp"], dtype=torch.float32)
    lookback, pred_len = int(v["lookback_window"]), int(v["ar_pred_len"])
    for key, max_context in (("ar_greedy_trunc", v["ar_max_context"][0]), ("ar_greedy_grow", v["ar_max_context"][1])):
        out = autoregressive_forecast(tokenizer, predictor, x[:, :lookback], stamp[:, :lookback], stamp[:, lookback:],
                                      int(max_context), pred_len, clip=float(v["clip"]), top_k=1, top_p=1.0,
                                      sample_count=1, use_cache=use_cache)
        np.testing.assert_allclose(out, v[key], atol=1e-5, rtol=1e-5)
    torch.manual_seed(json.loads((folder / "meta.json").read_text())["seeds"]["ar_sample"])
    out = autoregressive_forecast(tokenizer, predictor, x[:, :lookback], stamp[:, :lookback], stamp[:, lookback:],
                                  int(v["ar_max_context"][1]), pred_len, clip=5.0, top_p=0.9,
                                  sample_count=int(v["ar_sample_count"]), use_cache=use_cache)
    np.testing.assert_allclose(out, v["ar_sampled_grow"], atol=1e-5, rtol=1e-5)
