"""RoPE re-rotation with the model's own rotary module: round trips, shifted positions, scaled RoPE types."""
from __future__ import annotations

import pytest
import torch

from tracker.errors import ConfigError
from workers.scoring.compat import cache_kwargs
from workers.scoring.decoder import score_two_phase
from workers.scoring.kvcache import layers_of, new_phase_a_cache, rerotate_span
from workers.scoring.lm_view import view_of
from workers.scoring.rotary import check_rope_supported, rope_types_by_layer_type
from workers.tiny import build_tiny, get_tiny

BOS, NL = 1, 14
DECODERS = ["tiny-random-llama", "tiny-random-gemma3", "tiny-random-gemma3-mm"]



def rand_ids(n: int, seed: int) -> list[int]:
    return torch.randint(4, 260, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


@torch.inference_mode()
def phase_a_layers(model, ids: list[int], first_position: int):
    """Cache layers of one forward over `ids` at positions first_position, first_position+1, ..."""
    view = view_of(model)
    cache = new_phase_a_cache()
    positions = torch.arange(len(ids))[None, :] + first_position
    view.text_model(input_ids=torch.tensor([ids]), position_ids=positions, use_cache=True,
                    **cache_kwargs(view.text_model, cache))
    return layers_of(cache)


@pytest.mark.parametrize("name", DECODERS)
def test_rotating_forward_and_back_restores_every_layer(name):
    model, _ = get_tiny(name)
    view = view_of(model)
    layers = phase_a_layers(model, rand_ids(50, 1), 0)
    back = rerotate_span(view, rerotate_span(view, layers, 0, torch.tensor([37])), 0, torch.tensor([-37]))
    for (k0, v0), (k1, v1) in zip(layers, back):
        assert float((k0 - k1).abs().max()) < 1e-5
        assert torch.equal(v0, v1)


@pytest.mark.parametrize("name", DECODERS)
def test_rerotated_keys_equal_keys_computed_at_the_new_positions_on_all_layers(name):
    """RoPE attention is relative, so a whole sequence shifted by d has every key rotated by exactly d."""
    model, _ = get_tiny(name)
    view = view_of(model)
    ids, shift = rand_ids(40, 2), 23
    moved = rerotate_span(view, phase_a_layers(model, ids, 0), 0, torch.tensor([shift]))
    computed = phase_a_layers(model, ids, shift)
    assert len(moved) == view.num_layers
    for (k_moved, _), (k_computed, _) in zip(moved, computed):
        assert float((k_moved - k_computed).abs().max()) < 1e-4


def test_gemma3_layer_types_use_different_rope():
    view = view_of(get_tiny("tiny-random-gemma3")[0])
    assert rope_types_by_layer_type(view) == {"sliding_attention": "default", "full_attention": "linear"}


@pytest.mark.parametrize(
    "rope",
    [
        {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 1024, "rope_theta": 10000.0},
        {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
         "original_max_position_embeddings": 256, "rope_theta": 500000.0},
        {"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0},
    ],
    ids=["yarn", "llama3", "linear"],
)
def test_scaled_rope_one_layer_prefixed_equals_bare(rope):
    """yarn scales cos/sin by attention_scaling != 1; the re-rotation must divide it out."""
    model, _ = build_tiny("tiny-random-llama", num_hidden_layers=1, rope_parameters=rope)
    if rope["rope_type"] == "yarn":
        assert view_of(model).rotary.attention_scaling > 1.05
    doc, query, answer = rand_ids(30, 3), rand_ids(5, 4), rand_ids(4, 5)
    bare = torch.tensor(score_two_phase(model, BOS, NL, None, doc, query, answer).token_nlls)
    prefixed = torch.tensor(score_two_phase(model, BOS, NL, rand_ids(9, 6), doc, query, answer).token_nlls)
    assert float((bare - prefixed).abs().max()) < 1e-5


@pytest.mark.parametrize(
    "rope",
    [
        {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0},
        {"rope_type": "longrope", "short_factor": [1.0] * 8, "long_factor": [2.0] * 8,
         "original_max_position_embeddings": 1024, "rope_theta": 10000.0},
    ],
    ids=["dynamic", "longrope"],
)
def test_length_dependent_rope_is_refused_for_two_phase(rope):
    model, _ = build_tiny("tiny-random-llama", rope_parameters=rope)
    with pytest.raises(ConfigError, match=rope["rope_type"]):
        check_rope_supported(view_of(model))
    with pytest.raises(ConfigError, match="re-rotated"):
        score_two_phase(model, BOS, NL, [5, 6], rand_ids(10, 7), [8], [9])
    full = score_two_phase(model, BOS, NL, [5, 6], rand_ids(10, 7), [8], [9], mode="full")  # no rotation needed
    assert len(full.token_nlls) == 1
