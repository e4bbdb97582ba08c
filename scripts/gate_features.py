"""Compare what the refusal gate could read: other layers, several layers, mean-pooled states, a small MLP.

Each candidate is scored by cross-validation on the prompts the recipe's gate is fitted on (never on an evaluation
set): random 5-fold, and leave-one-category-out (every prompt of a category is scored by a probe fitted without
that category, the harder test of prompts unlike the training ones). Per candidate it prints the log-loss, the
share of harmful prompts flagged, and how many plain and risky-looking benign prompts are flagged (score > 0, the
gate's threshold). With ``--route-eval`` it then routes the recipe run's evaluation prompts with the run's gate and
with one candidate fitted on all the gate prompts, and lists the prompts they route differently (a one-shot check
of a candidate chosen by the table, docs/OUTCOME.md, session 13).

Run (after the recipe, which writes the gate prompts and their hidden states; about 3 minutes on 2 cores):
    python scripts/gate_features.py --run runs/refusal-bundled-cpu [--route-eval last+mean]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

Scorer = Callable[[Any], Any]
Fitter = Callable[[Any, Any], Scorer]


def linear(l2: float = 1e-2) -> Fitter:
    from alignment.probe import fit_probe

    return lambda x, y: fit_probe(x, y, l2=l2).scores


def mlp(hidden: int = 64, weight_decay: float = 1e-2, epochs: int = 300, seed: int = 0) -> Fitter:
    """A one-hidden-layer probe with dropout, trained full-batch: does a non-linear read separate better?"""
    def fit(x: Any, y: Any) -> Scorer:
        import torch

        torch.manual_seed(seed)
        mean, std = x.mean(0), x.std(0) + 1e-6
        net = torch.nn.Sequential(torch.nn.Dropout(0.2), torch.nn.Linear(x.shape[1], hidden), torch.nn.GELU(),
                                  torch.nn.Linear(hidden, 1))
        optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=weight_decay)
        with torch.enable_grad():
            for _ in range(epochs):
                optimizer.zero_grad()
                loss = torch.nn.functional.binary_cross_entropy_with_logits(net((x - mean) / std).squeeze(1), y)
                loss.backward()
                optimizer.step()
        net.eval()
        return lambda z: net((z - mean) / std).squeeze(1).detach()
    return fit


def category_out_scores(x: Any, y: Any, categories: list[str], fit: Fitter) -> Any:
    import torch

    scores = torch.empty(len(y))
    for category in sorted(set(categories)):
        held = torch.tensor([c == category for c in categories])
        scores[held] = fit(x[~held], y[~held])(x[held])
    return scores


def summarise(scores: Any, y: Any, risky: Any) -> dict[str, float]:
    """Log-loss, share of harmful flagged, and flagged counts of plain and risky-looking benign prompts."""
    import torch

    flagged = scores > 0
    plain = (y == 0) & ~risky
    return {"log_loss": round(float(torch.nn.functional.binary_cross_entropy_with_logits(scores, y)), 3),
            "harmful_flagged": round(float(flagged[y == 1].float().mean()), 3),
            "plain_flagged": int(flagged[plain].sum()), "plain": int(plain.sum()),
            "risky_flagged": int(flagged[risky].sum()), "risky": int(risky.sum())}


def mean_states(model: Any, tokenizer: Any, texts: list[str], layer: int, batch_size: int = 16) -> Any:
    """Each text's hidden states at ``layer`` averaged over its tokens (padding left out)."""
    import torch

    out = []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            encoded = tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True,
                                add_special_tokens=False)
            hidden = model(**encoded, output_hidden_states=True).hidden_states[layer].float()
            mask = encoded["attention_mask"].unsqueeze(-1).float()
            out.append((hidden * mask).sum(1) / mask.sum(1))
    return torch.cat(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", default="runs/refusal-bundled-cpu", help="a finished recipe run's folder")
    parser.add_argument("--layer", type=int, default=18, help="the layer of the single-layer and mean candidates")
    parser.add_argument("--route-eval", choices=["last+mean", "layers"], default=None,
                        help="route the run's evaluation prompts with this candidate and with the run's gate")
    args = parser.parse_args(argv)

    import torch

    from alignment.evaluate import as_chat
    from alignment.gate import last_position_states, load_gate, out_of_fold_scores
    from alignment.generation import format_chat
    from alignment.models import load_model

    run = Path(args.run)
    states_file, prompts_file = run / "data" / "gate_states.pt", run / "data" / "gate_prompts.jsonl"
    if not states_file.exists() or not prompts_file.exists():
        print(f"Error: {states_file} or {prompts_file} is missing. Run the recipe first "
              "(python -m alignment.outcome --config recipes/refusal-bundled-cpu.yaml).", file=sys.stderr)
        return 2
    rows = [json.loads(line) for line in prompts_file.read_text().splitlines() if line.strip()]
    y = torch.tensor([row["label"] == "harmful" for row in rows], dtype=torch.float32)
    categories = [row.get("category", "") for row in rows]
    risky = torch.tensor([c.startswith("risky") for c in categories])

    loaded = load_model(model="bundled", device="cpu")
    texts = [format_chat(loaded.tokenizer, as_chat(row["prompt"])) for row in rows]
    saved = torch.load(states_file)
    by_text = dict(zip(saved["texts"], saved["states"], strict=True))
    if not all(text in by_text for text in texts):
        print(f"Error: {states_file} lacks the states of some of the gate's prompts (a gate fitted before they "
              "were kept there). Fit the gate again: delete adapter/refusal_gate.json and run python -m "
              "alignment.outcome.", file=sys.stderr)
        return 2
    last = torch.stack([by_text[text] for text in texts]).float()
    mean = mean_states(loaded.model, loaded.tokenizer, texts, args.layer)
    layer = args.layer
    candidates: dict[str, tuple[Any, Fitter]] = {
        f"last position, layer {layer} (the recipe's gate)": (last[:, layer], linear()),
        f"last position, layer {layer}, l2 0.1": (last[:, layer], linear(0.1)),
        f"last position, layers {layer - 6}, {layer}, {layer + 6}": (last[:, [layer - 6, layer, layer + 6]].flatten(1),
                                                                      linear()),
        f"last position, mean of layers {layer - 6}-{layer + 6}": (last[:, layer - 6:layer + 7].mean(1), linear()),
        f"mean over tokens, layer {layer}": (mean, linear()),
        f"last position + mean over tokens, layer {layer}": (torch.cat([last[:, layer], mean], 1), linear()),
        f"last position, layer {layer}, MLP": (last[:, layer], mlp()),
    }
    print("| candidate | 5-fold: log-loss | harmful flagged | plain / risky benign flagged | category out: log-loss "
          "| harmful flagged | plain / risky benign flagged |\n|---|---|---|---|---|---|---|")
    losses: dict[str, float] = {}
    for name, (x, fit) in candidates.items():
        cv = summarise(out_of_fold_scores(x, y, fit=fit), y, risky)
        losses[name] = cv["log_loss"]
        out = summarise(category_out_scores(x, y, categories, fit), y, risky)
        print(f"| {name} | {cv['log_loss']} | {cv['harmful_flagged']} | {cv['plain_flagged']}/{cv['plain']}, "
              f"{cv['risky_flagged']}/{cv['risky']} | {out['log_loss']} | {out['harmful_flagged']} | "
              f"{out['plain_flagged']}/{out['plain']}, {out['risky_flagged']}/{out['risky']} |", flush=True)
    baseline, best = next(iter(losses)), min(losses, key=lambda k: losses[k])
    print(f"\nBest 5-fold log-loss: {best}, {losses[best]}; ratio to the recipe's gate ({losses[baseline]}): "
          f"{losses[best] / losses[baseline]:.2f} (below 1 is better)")

    if args.route_eval:
        gate = load_gate(run / "adapter")
        if gate is None:
            print(f"Error: {run / 'adapter'} has no refusal gate to compare with.", file=sys.stderr)
            return 2

        def features(states: Any, means: Any) -> Any:
            if args.route_eval == "last+mean":
                return torch.cat([states[:, layer], means], 1)
            return states[:, [layer - 6, layer, layer + 6]].flatten(1)

        candidate = linear()(features(last, mean), y)
        for report in sorted(run.glob("eval_*.json")):
            eval_rows = json.loads(report.read_text())["rows"]
            eval_texts = [format_chat(loaded.tokenizer, as_chat(row["prompt"])) for row in eval_rows]
            eval_last = last_position_states(loaded.model, loaded.tokenizer, eval_texts)
            old, new = gate.scores(eval_last[:, gate.layer]), candidate(
                features(eval_last, mean_states(loaded.model, loaded.tokenizer, eval_texts, layer)))
            print(f"\n{report.name}: prompts routed differently (score > 0 goes to the adapter)")
            for row, a, b in zip(eval_rows, old.tolist(), new.tolist(), strict=True):
                if (a > 0) != (b > 0):
                    kind = "harmful" if row["label"] == "harmful" else ("risky" if row.get("risky") else "plain")
                    print(f"  {kind:8s} gate {a:6.2f}  candidate {b:6.2f}  {str(row['prompt'])[:90]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
