"""The frozen-layer cache: a forward pass served from it gives the same logits and LoRA gradients as one that runs
every layer, and anything it did not record runs the layers as usual."""

from __future__ import annotations

import pytest
import torch

from alignment.frozen_layers import FrozenLayerCache, first_adapted_layer


def tiny_lora(layers: int = 4, adapted: list[int] | None = None, attention_dropout: float = 0.0):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=layers, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=300, max_position_embeddings=256, pad_token_id=0,
                         attention_dropout=attention_dropout)
    base = LlamaForCausalLM(config)
    linear = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=linear, lora_dropout=0.0,
                      layers_to_transform=adapted if adapted is not None else [layers - 2, layers - 1],
                      init_lora_weights=False)  # non-zero B: the adapters change the output from the start
    return get_peft_model(base, lora), lora


def right_padded(rows: list[list[int]], width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    width = width or max(map(len, rows))
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for r, row in enumerate(rows):
        ids[r, :len(row)] = torch.tensor(row)
        mask[r, :len(row)] = 1
    return ids, mask


def logits_and_grads(model, ids, mask):
    model.zero_grad()
    out = model(input_ids=ids, attention_mask=mask)
    real = mask.bool()
    out.logits[real].logsumexp(-1).sum().backward()
    grads = torch.cat([p.grad.flatten() for n, p in model.named_parameters() if p.requires_grad])
    return out.logits[real].detach(), grads


ROWS = [[5, 17, 33, 9, 120, 4], [7, 8, 9], [200, 201, 3, 4, 5, 6, 7, 8, 9, 10], [11, 12, 13, 14]]


def test_served_batches_match_the_full_forward_and_skip_the_frozen_layers():
    model, lora = tiny_lora()
    cache = FrozenLayerCache.for_model(model, lora)
    assert cache is not None and cache.depth == 2
    with cache.recording(), torch.no_grad():
        model(*right_padded(ROWS[:2]))  # recorded in two batches of other shapes than training's
        model(*right_padded(ROWS[2:], width=12))
    assert len(cache.states) == 4

    batch = right_padded([ROWS[3], ROWS[0], ROWS[2]])  # another order, another padding width
    expected_logits, expected_grads = logits_and_grads(model, *batch)

    calls: list[int] = []
    hooks = [layer.register_forward_hook(lambda m, a, o, i=i: calls.append(i))
             for i, layer in enumerate(model.get_base_model().model.layers)]
    with cache.serving():
        logits, grads = logits_and_grads(model, *batch)
    for hook in hooks:
        hook.remove()
    torch.testing.assert_close(logits, expected_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grads, expected_grads, rtol=1e-4, atol=1e-6)
    assert grads.abs().sum() > 0
    assert cache.summary() == {"layers": 2, "sequences": 4, "cached_passes": 1, "full_passes": 0}
    # Layers 0 and 1 still answer the call (they return the cached output) but computed nothing: their forward
    # is the cache's; after the block the class's own forward is back.
    assert calls == [0, 1, 2, 3]
    assert all("forward" not in layer.__dict__ for layer in model.get_base_model().model.layers)


def test_anything_not_recorded_runs_every_layer():
    model, lora = tiny_lora()
    cache = FrozenLayerCache.for_model(model, lora)
    with cache.recording(), torch.no_grad():
        model(*right_padded(ROWS[:2]))
    unseen = right_padded([ROWS[0], ROWS[2]])  # one row recorded, one not
    left = (torch.tensor([[0, 0, 0, 7, 8, 9]]), torch.tensor([[0, 0, 0, 1, 1, 1]]))  # left padding: not served
    with torch.no_grad():
        expected = [model(*unseen).logits, model(*left).logits]
        with cache.serving():
            got = [model(*unseen).logits, model(*left).logits]
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b)
    assert cache.summary()["cached_passes"] == 0 and cache.summary()["full_passes"] == 2


def test_an_empty_cache_changes_nothing():
    model, lora = tiny_lora()
    cache = FrozenLayerCache.for_model(model, lora)
    with cache.serving():
        assert all("forward" not in layer.__dict__ for layer in model.get_base_model().model.layers)


@pytest.mark.parametrize("adapted, dropout", [([0, 1, 2, 3], 0.0), ([2, 3], 0.1)])
def test_no_cache_where_nothing_is_frozen_or_dropout_would_differ(adapted, dropout):
    model, lora = tiny_lora(adapted=adapted, attention_dropout=dropout)
    assert FrozenLayerCache.for_model(model, lora) is None


def test_the_first_adapted_layer_is_read_from_a_loaded_adapter_too():
    model, lora = tiny_lora(layers=6, adapted=[3, 4, 5])
    assert first_adapted_layer(model, lora) == 3
    assert first_adapted_layer(model) == 3  # no config: from the adapter modules in the model
