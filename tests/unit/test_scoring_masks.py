"""The bidirectional prefix-LM mask: bidirectional over prefix+doc, sliding window kept on sliding layers."""
from __future__ import annotations

import pytest
import torch

from workers.scoring.decoder import ScoringRow, layout_row, run_phase_a, score_rows
from workers.scoring.kvcache import layers_of, new_phase_a_cache
from workers.scoring.lm_view import view_of
from workers.scoring.masks import attention_masks, mask_argument
from workers.tiny import TINY_SLIDING_WINDOW, build_tiny, get_tiny

BOS, NL, W = 1, 14, TINY_SLIDING_WINDOW



def rand_ids(n: int, seed: int) -> list[int]:
    return torch.randint(4, 260, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def expected_mask(length: int, pad: int, sliding: bool, bidirectional: bool) -> torch.Tensor:
    """Independent expectation: causal, plus bidirectional inside [pad+1, length); window on sliding layers;
    real queries never see pads, pad queries see the pads before them."""
    q = torch.arange(length)[:, None]
    k = torch.arange(length)[None, :]
    causal = k <= q
    region = (q >= pad + 1) & (k >= pad + 1) & bidirectional
    if sliding:
        allowed = (causal & (q - k < W)) | (region & ((q - k).abs() < W))
    else:
        allowed = causal | region
    return allowed & ((k >= pad) | (q < pad))


@pytest.mark.parametrize("bidirectional", [True, False], ids=["bidir", "causal"])
def test_attention_masks_match_the_definition_per_layer_type_with_padding(bidirectional):
    model, _ = get_tiny("tiny-random-gemma3")
    view = view_of(model)
    length, pads = 3 * W, torch.tensor([0, 5])
    masks = attention_masks(view, batch=2, length=length, pads=pads, bidirectional=bidirectional,
                          cache=new_phase_a_cache())
    assert set(masks) == {"sliding_attention", "full_attention"}
    for layer_type, mask in masks.items():
        assert mask.dtype == torch.bool and mask.shape == (2, 1, length, length)  # sdpa masks
        assert bool(mask.any(dim=-1).all()), "a fully masked row turns into NaN in some sdpa kernels"
        for b in range(2):
            want = expected_mask(length, int(pads[b]), layer_type == "sliding_attention", bidirectional)
            assert torch.equal(mask[b, 0], want)
    sliding = masks["sliding_attention"][0, 0]
    assert bool(sliding[1, W - 1]) is bidirectional and not bool(sliding[1, W + 1])  # window kept either way
    assert bool(masks["full_attention"][0, 0, 1, length - 1]) is bidirectional


def test_mask_argument_is_a_dict_for_gemma3_and_a_tensor_for_llama():
    gemma, llama = view_of(get_tiny("tiny-random-gemma3")[0]), view_of(get_tiny("tiny-random-llama")[0])
    masks = {"full_attention": torch.ones(1), "sliding_attention": torch.zeros(1)}
    assert mask_argument(gemma, masks) is masks
    assert torch.equal(mask_argument(llama, {"full_attention": torch.ones(1)}), torch.ones(1))


def layer1_key(model, mode: str, prefix, doc, index: int) -> torch.Tensor:
    layout = layout_row(BOS, (NL,), ScoringRow.of(prefix, doc, [5], [6]))
    cache, _, _ = run_phase_a(view_of(model), mode, [layout])
    return layers_of(cache)[1][0][0, :, index, :]


@pytest.mark.parametrize("layer_type", ["sliding_attention", "full_attention"])
def test_prefix_tokens_see_later_doc_tokens_only_under_bidir(layer_type):
    model, _ = build_tiny("tiny-random-gemma3", num_hidden_layers=2, layer_types=[layer_type] * 2)
    prefix, doc = rand_ids(4, 1), rand_ids(2 * W, 2)
    near = list(doc)
    near[W - 8] = (near[W - 8] + 1) % 250 + 4  # index 1+4+1+W-8 = W-2 from the first prefix token (index 1)
    for mode, should_change in [("prefix_lm_bidir", True), ("prefix_lm_causal", False)]:
        a, b = layer1_key(model, mode, prefix, doc, 1), layer1_key(model, mode, prefix, near, 1)
        assert (not torch.equal(a, b)) is should_change, mode


def test_bidir_keeps_the_sliding_window_on_sliding_layers():
    """A later doc token beyond the window must not reach the first prefix token on sliding layers; it does on full."""
    prefix, doc = rand_ids(4, 3), rand_ids(3 * W, 4)
    far = list(doc)
    far[W + 4] = (far[W + 4] + 1) % 250 + 4  # sequence index 1+4+1+W+4 = W+10 from index 1
    for layer_type, should_change in [("sliding_attention", False), ("full_attention", True)]:
        model, _ = build_tiny("tiny-random-gemma3", num_hidden_layers=2, layer_types=[layer_type] * 2)
        a, b = layer1_key(model, "prefix_lm_bidir", prefix, doc, 1), layer1_key(model, "prefix_lm_bidir", prefix, far, 1)
        assert (not torch.equal(a, b)) is should_change, layer_type


@pytest.mark.parametrize("name", ["tiny-random-llama", "tiny-random-gemma3", "tiny-random-gemma3-mm"])
def test_bidir_scores_differ_from_causal(name):
    model, _ = get_tiny(name)
    rows = [ScoringRow.of(p, rand_ids(40, 5), rand_ids(6, 6), rand_ids(5, 7)) for p in (None, rand_ids(6, 8))]
    causal = score_rows(model, "prefix_lm_causal", BOS, NL, rows)
    bidir = score_rows(model, "prefix_lm_bidir", BOS, NL, rows)
    for c, b in zip(causal, bidir):
        assert abs(c.nll_mean - b.nll_mean) > 1e-4
