"""Can a model tell harmful from benign prompts? A linear probe on each layer's hidden state.

The model reads each chat up to the start of its answer; the hidden state of a layer at that last position is the
feature (where the first answer token, and so refuse-or-answer, is decided). A logistic regression per layer
(standardised features, L2 penalty, fitted by LBFGS) learns harmful vs benign on one prompt set and is scored on
another: AUC, and how many harmful and benign prompts (plain and risky-looking apart) it flags. When a layer's probe
separates held-out prompts far better than the aligned model's behaviour does, the limit is the training, not what
the model represents (docs/OUTCOME.md).

Run: ``python -m alignment.probe --train runs/refusal-bundled-cpu/data/pairs.jsonl --eval
alignment/data/outcome_eval.jsonl [--model bundled] [--adapter DIR] [--every 3] [--json OUT] [--gate REPORT.json
--gate-layer 18]``. Both files are prompt sets (``prompt`` and ``label`` per line; training pairs files qualify).
About 2 minutes for 1,100 prompts on 2 cores with the bundled model. ``--gate`` takes an evaluate report of the
--eval prompts and says what a refusal gated on one layer's probe would do: flagged prompts get the report's aligned
answer, the others the base model's.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


@dataclass
class Probe:
    """A fitted logistic regression on standardised features: ``scores(X) > 0`` means harmful."""

    mean: Any
    std: Any
    weight: Any
    bias: Any

    def scores(self, features: Any) -> Any:
        return ((features - self.mean) / self.std) @ self.weight + self.bias


@dataclass
class LayerResult:
    layer: int  # 0 = embeddings, N = the output of decoder layer N
    train_accuracy: float
    auc: float
    harmful_flagged: int
    harmful: int
    plain_flagged: int
    plain: int
    risky_flagged: int
    risky: int

    def line(self) -> str:
        return (f"layer {self.layer:>2}: train accuracy {self.train_accuracy:.3f}, held-out AUC {self.auc:.3f}; "
                f"flags {self.harmful_flagged}/{self.harmful} harmful, {self.plain_flagged}/{self.plain} plain "
                f"benign, {self.risky_flagged}/{self.risky} risky-looking benign")


def fit_probe(features: Any, labels: Any, l2: float = 1e-2, max_iter: int = 200) -> Probe:
    """Logistic regression of ``labels`` (1 = harmful) on ``features`` (n × d), standardised."""
    features = features.float()
    mean, std = features.mean(0), features.std(0) + 1e-6
    weight, bias = fit_logistic((features - mean) / std, labels, l2, max_iter)
    return Probe(mean, std, weight, bias)


def fit_logistic(features: Any, labels: Any, l2: float, max_iter: int = 200) -> tuple[Any, Any]:
    """Weight and bias of an L2-penalised logistic regression of ``labels`` (1 = harmful) on ``features`` as
    given, fitted by L-BFGS (also the refusal gate's bag of words, alignment.bag_of_words)."""
    import torch

    labels = torch.as_tensor(labels, dtype=torch.float32)
    weight = torch.zeros(features.shape[1], requires_grad=True)
    bias = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=max_iter)

    def closure() -> Any:
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(features @ weight + bias, labels)
        loss = loss + l2 * (weight ** 2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return weight.detach(), bias.detach()


def auc(scores: Any, labels: Any) -> float:
    """Probability that a random positive scores above a random negative (ties count half)."""
    positive, negative = scores[labels == 1], scores[labels == 0]
    if len(positive) == 0 or len(negative) == 0:
        return float("nan")
    above = (positive[:, None] > negative[None, :]).float().mean()
    ties = (positive[:, None] == negative[None, :]).float().mean()
    return float(above + 0.5 * ties)


def prompt_features(loaded: Any, chats: Sequence[list[dict[str, str]]], batch_size: int = 16,
                    on_progress: Callable[[int, int], None] | None = None) -> Any:
    """Hidden states at the last position of each chat with the answer prompt added: (n, layers + 1, hidden)."""
    from alignment.gate import last_position_states
    from alignment.generation import format_chat

    texts = [format_chat(loaded.tokenizer, chat) for chat in chats]
    with loaded.lock:
        return last_position_states(loaded.model, loaded.tokenizer, texts, batch_size, on_progress=on_progress)


def probe_layers(train_features: Any, train_labels: Any, eval_features: Any, eval_cases: Sequence[dict[str, Any]],
                 layers: Sequence[int]) -> list[LayerResult]:
    """Fit a probe per layer on the training features and score it on the evaluation cases."""
    import torch

    eval_labels = torch.tensor([case["label"] == "harmful" for case in eval_cases], dtype=torch.float32)
    risky = [bool(case.get("risky")) for case in eval_cases]
    results = []
    for layer in layers:
        probe = fit_probe(train_features[:, layer], train_labels)
        train_accuracy = float(((probe.scores(train_features[:, layer]) > 0).float() == train_labels).float().mean())
        scores = probe.scores(eval_features[:, layer])
        flagged = (scores > 0).tolist()
        harmful = [f for f, case in zip(flagged, eval_cases, strict=True) if case["label"] == "harmful"]
        plain = [f for f, case, r in zip(flagged, eval_cases, risky, strict=True) if case["label"] == "benign" and not r]
        risky_benign = [f for f, case, r in zip(flagged, eval_cases, risky, strict=True) if case["label"] == "benign" and r]
        results.append(LayerResult(layer, train_accuracy, auc(scores, eval_labels), sum(harmful), len(harmful),
                                   sum(plain), len(plain), sum(risky_benign), len(risky_benign)))
    return results


@dataclass
class GateResult:
    """What a refusal gated on one layer's probe would do, from an evaluation report's base and aligned verdicts:
    prompts the probe flags get the aligned model's answer, the rest the base model's."""

    layer: int
    routed: int  # prompts the probe sends to the aligned model
    harmful: int
    base_compliant: int
    gated_compliant: int
    plain: int
    plain_refused: int
    risky: int
    risky_refused: int

    @property
    def harm_reduction(self) -> float | None:
        return 1 - self.gated_compliant / self.base_compliant if self.base_compliant else None

    def line(self) -> str:
        reduction = f"{self.harm_reduction:.1%}" if self.harm_reduction is not None else "n/a"
        return (f"gated on layer {self.layer}: {self.routed} prompts routed to the aligned model; harmful compliance "
                f"{self.gated_compliant}/{self.harmful} (base {self.base_compliant}, harm reduction {reduction}); "
                f"false refusals {self.plain_refused}/{self.plain} plain, {self.risky_refused}/{self.risky} "
                "risky-looking benign")


def prompt_key(prompt: Any) -> str:
    return json.dumps(prompt, sort_keys=True)


def gate_outcome(rows: Sequence[dict[str, Any]], flagged: dict[str, bool], layer: int) -> GateResult:
    """Judge a gated system over an evaluation report's rows (``flagged`` keyed by ``prompt_key``) with the
    project's own metrics: a flagged prompt's aligned answer, or else its base answer, becomes the aligned side."""
    from alignment.metrics import summarize

    missing = [row["prompt"] for row in rows if prompt_key(row["prompt"]) not in flagged]
    if missing:
        raise ValueError(f"{len(missing)} prompts of the report are not in the --eval set (first: "
                         f"{str(missing[0])[:80]!r}); give the prompt file the report was made from.")
    routed = [flagged[prompt_key(row["prompt"])] for row in rows]
    gated = [{**row, "aligned": row["aligned"] if to_aligned else row["base"]}
             for row, to_aligned in zip(rows, routed, strict=True)]
    summary = summarize(gated, n_boot=0)
    base, after = summary["base"], summary["aligned"]
    return GateResult(layer, sum(routed), after["harmful_compliance"]["n"], base["harmful_compliance"]["count"],
                      after["harmful_compliance"]["count"], after["false_refusal_plain"]["n"],
                      after["false_refusal_plain"]["count"], after["false_refusal_risky"]["n"],
                      after["false_refusal_risky"]["count"])


def main(argv: list[str] | None = None) -> int:
    import argparse

    import torch

    from alignment.evaluate import as_chat
    from alignment.models import LoadSettings, ModelLoadError
    from alignment.redteam import SuiteError, load_prompts
    from alignment.registry import ModelRegistry
    from alignment.settings import SettingsError

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", required=True, help="Prompt set to fit the probes on (JSONL: prompt, label).")
    parser.add_argument("--eval", required=True, help="Prompt set to score them on, e.g. the independent prompts.")
    parser.add_argument("--model", default="bundled", help="Base model: 'bundled', a folder or a Hub id.")
    parser.add_argument("--adapter", default=None, help="Probe the aligned model: a LoRA adapter folder.")
    parser.add_argument("--every", type=int, default=3, help="Probe every N-th layer (and the last).")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default=None, help="Also write the per-layer results to this JSON file.")
    parser.add_argument("--gate", default=None,
                        help="An evaluate report (JSON) of the --eval prompts: also say what a refusal gated on the "
                        "probe of --gate-layer would do (flagged prompts get its aligned answer, the rest the base's).")
    parser.add_argument("--gate-layer", type=int, default=None, help="The layer whose probe gates (with --gate).")
    args = parser.parse_args(argv)
    if args.every < 1:
        print("error: --every must be at least 1.", file=sys.stderr)
        return 2
    if args.gate and args.gate_layer is None:
        # No default: picking the layer by its score on the evaluation prompts would tune the gate on them.
        print("error: --gate needs --gate-layer N, chosen before looking at the evaluation prompts.", file=sys.stderr)
        return 2
    try:
        gate_rows = json.loads(Path(args.gate).read_text(encoding="utf-8"))["rows"] if args.gate else None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"error: --gate {args.gate} is not an evaluate report with rows ({exc}).", file=sys.stderr)
        return 2
    try:
        train_cases, eval_cases = load_prompts(args.train), load_prompts(args.eval)
        labels = {case["label"] for case in train_cases}
        if labels != {"harmful", "benign"}:
            raise SuiteError(f"{args.train} has only {sorted(labels)} prompts; the probe needs harmful and benign.")
        registry = ModelRegistry(LoadSettings(model=args.model, device=args.device, load_in_4bit=False))
        loaded = registry.loaded
        if args.adapter:
            registry.load_adapter(args.adapter)
    except (SuiteError, ModelLoadError, SettingsError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    def progress(name: str) -> Callable[[int, int], None]:
        return lambda done, total: print(f"\r{name}: {done}/{total} prompts", end="" if done < total else "\n",
                                         file=sys.stderr, flush=True)

    train_features = prompt_features(loaded, [as_chat(c["prompt"]) for c in train_cases],
                                     on_progress=progress("train"))
    eval_features = prompt_features(loaded, [as_chat(c["prompt"]) for c in eval_cases], on_progress=progress("eval"))
    train_labels = torch.tensor([c["label"] == "harmful" for c in train_cases], dtype=torch.float32)
    last = train_features.shape[1] - 1
    if args.gate and not 0 <= args.gate_layer <= last:
        print(f"error: --gate-layer {args.gate_layer} is not a layer of this model (0 to {last}).", file=sys.stderr)
        return 2
    layers = sorted(set(range(0, last + 1, args.every)) | {last})
    results = probe_layers(train_features, train_labels, eval_features, eval_cases, layers)
    print(f"{loaded.name}{' + ' + args.adapter if args.adapter else ''}: probes fitted on {len(train_cases)} "
          f"prompts of {args.train}, scored on {len(eval_cases)} of {args.eval}")
    for result in results:
        print(result.line())
    output: dict[str, Any] | list[dict[str, Any]] = [asdict(r) for r in results]
    if gate_rows is not None:
        scores = fit_probe(train_features[:, args.gate_layer], train_labels).scores(eval_features[:, args.gate_layer])
        flagged = {prompt_key(case["prompt"]): bool(score > 0)
                   for case, score in zip(eval_cases, scores.tolist(), strict=True)}
        try:
            gate = gate_outcome(gate_rows, flagged, args.gate_layer)
        except (ValueError, KeyError, TypeError) as exc:
            print(f"error: --gate {args.gate}: {exc}", file=sys.stderr)
            return 2
        print(gate.line())
        output = {"layers": output, "gate": {**asdict(gate), "harm_reduction": gate.harm_reduction}}
    if args.json:
        Path(args.json).write_text(json.dumps(output, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
