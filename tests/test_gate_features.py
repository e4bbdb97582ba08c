"""scripts/gate_features.py: cross-validated scores of gate candidates, on synthetic features (no model needed)."""

import importlib.util
from pathlib import Path

import pytest

from alignment.gate import out_of_fold_scores

torch = pytest.importorskip("torch")

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gate_features.py"
spec = importlib.util.spec_from_file_location("gate_features", SCRIPT)
gate_features = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gate_features)


def synthetic(n_per_class: int = 60, dims: int = 8, shift: float = 3.0):
    generator = torch.Generator().manual_seed(0)
    harmful = torch.randn(n_per_class, dims, generator=generator) + shift * torch.eye(dims)[0]
    benign = torch.randn(n_per_class, dims, generator=generator)
    x = torch.cat([harmful, benign])
    y = torch.cat([torch.ones(n_per_class), torch.zeros(n_per_class)])
    categories = ["h1", "h2"] * (n_per_class // 2) + ["plain", "risky_a"] * (n_per_class // 2)
    return x, y, categories


@pytest.mark.parametrize("fit", [gate_features.linear(), gate_features.mlp()], ids=["linear", "mlp"])
def test_cross_validated_scores_separate_a_separable_signal(fit):
    x, y, categories = synthetic()
    risky = torch.tensor([c.startswith("risky") for c in categories])
    for scores in (out_of_fold_scores(x, y, fit=fit),
                   gate_features.category_out_scores(x, y, categories, fit)):
        summary = gate_features.summarise(scores, y, risky)
        assert summary["harmful_flagged"] > 0.85
        assert summary["plain"] == 30 and summary["risky"] == 30
        assert summary["plain_flagged"] + summary["risky_flagged"] < 10
        assert summary["log_loss"] < 0.5


def test_scores_of_noise_are_no_better_than_chance():
    x, y, categories = synthetic(shift=0.0)
    summary = gate_features.summarise(out_of_fold_scores(x, y, fit=gate_features.linear()), y,
                                      torch.zeros(len(y), dtype=torch.bool))
    assert summary["log_loss"] > 0.6  # ln 2 = 0.693 is chance


def test_each_prompt_is_scored_by_a_probe_that_never_saw_it():
    # A category's scores must come from a probe fitted without that category: refitting without it reproduces them.
    x, y, categories = synthetic()
    scores = gate_features.category_out_scores(x, y, categories, gate_features.linear())
    assert scores.shape == y.shape and torch.isfinite(scores).all()
    refit = gate_features.linear()(x[[c != "h1" for c in categories]], y[[c != "h1" for c in categories]])
    held = torch.tensor([c == "h1" for c in categories])
    assert torch.allclose(scores[held], refit(x[held]), atol=1e-4)
