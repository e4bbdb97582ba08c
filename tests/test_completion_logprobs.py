"""The compact LM head on CPU gives TRL's own log-probs and gradients, from fewer scored positions."""

from __future__ import annotations

import pytest
import torch

from alignment import completion_logprobs
from tests.conftest import make_tiny_model


@pytest.fixture()
def fused_model(bundled_tokenizer):
    from trl.trainer.utils import add_fused_lm_head

    model = make_tiny_model(bundled_tokenizer, seed=3, hidden_size=64).train()
    add_fused_lm_head(model)
    yield model
    completion_logprobs.disable()


def scored(model, input_ids, labels):
    model.zero_grad()
    out = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), labels=labels, fused_lm_head=True)
    out.log_probs.sum().backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    return out.log_probs.detach(), grads


def test_compact_head_matches_trls_full_head(fused_model):
    torch.manual_seed(0)
    input_ids = torch.randint(5, 500, (4, 24))
    labels = input_ids.clone()
    labels[:, :15] = -100  # the prompt
    labels[2, 20:] = -100  # padding after a short completion

    completion_logprobs.disable()
    assert not completion_logprobs.is_enabled()
    full, full_grads = scored(fused_model, input_ids, labels)
    assert completion_logprobs.enable() and completion_logprobs.is_enabled()
    assert completion_logprobs.enable()  # idempotent: still wraps TRL's original once
    compact, compact_grads = scored(fused_model, input_ids, labels)

    mask = labels[:, 1:] != -100
    assert torch.count_nonzero(full[mask]) == mask.sum()  # real log-probs where labels are
    assert torch.all(compact[~mask] == 0) and torch.all(full[~mask] == 0)
    torch.testing.assert_close(compact, full, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(compact_grads, full_grads, rtol=1e-4, atol=1e-6)


def test_compact_head_scores_fewer_positions(fused_model, monkeypatch):
    from trl.trainer import utils as trl_utils

    rows: list[int] = []
    original = trl_utils._ChunkedLogProbFunction.apply

    def counting(hidden, *args):
        rows.append(hidden.shape[0])
        return original(hidden, *args)

    monkeypatch.setattr(trl_utils._ChunkedLogProbFunction, "apply", counting)  # TRL's kernel, not our code
    input_ids = torch.randint(5, 500, (2, 16))
    labels = input_ids.clone()
    labels[:, :12] = -100
    completion_logprobs.disable()
    scored(fused_model, input_ids, labels)
    completion_logprobs.enable()
    scored(fused_model, input_ids, labels)
    assert rows == [2 * 15, 2 * 4]  # every shifted position, then only the completion ones
