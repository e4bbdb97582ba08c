"""A refusal gate: the base model's own linear probe decides which prompts the aligned adapter answers.

Why (docs/OUTCOME.md): a linear probe on the *base* model's hidden state separates harmful from benign prompts far
better than any adapter trained on the same prompts behaves, so the refusal is better decided by the probe. With a
gate, each prompt is first read by the base model (adapter off); the probe of one layer scores the hidden state at
the prompt's last position (where the first answer token is read from); a score above the threshold sends the
prompt to the adapter, anything else is answered by the base model exactly as it would be without the adapter.
Conditional activation steering (Lee et al., 2024) conditions a refusal on a direction of the hidden state the same
way.

The gate is a small JSON file, ``refusal_gate.json``, next to the adapter's ``adapter_config.json``, so every place
that loads the adapter (evaluate, the app's tabs, a Space) routes through it; delete the file to use the adapter
alone. The layer is chosen by cross-validated log-loss on the prompts the gate is fitted on, never on the
evaluation prompts.

Run: ``python -m alignment.gate --adapter runs/refusal-bundled-cpu/adapter --prompts
runs/refusal-bundled-cpu/data/gate_prompts.jsonl [--model bundled] [--layer N] [--risky-flag-rate 0.05]
[--neighbours 5 --neighbour-weight 0.3] [--words-weight W]`` (fits a
gate on the prompts' ``label`` harmful/benign and writes it into the adapter folder; about a minute on 2 cores for
1,000 prompts).
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from alignment.bag_of_words import BagOfWords, fit_bag_of_words

GATE_FILE = "refusal_gate.json"
GATE_FORMAT = 1


FOUR_BIT_WARNING = (
    "Warning: the model is loaded in 4-bit, which moves the hidden states the refusal gate reads, so the gate lets "
    "more harmful prompts through to the base model (the bundled model's gate routed 49 of 62 harmful prompts in "
    "4-bit, all 62 in 16-bit). Load the model without 4-bit (--no-4bit) to get the aligned model as measured.")

# How sharply the nearest neighbours' labels are weighted by their cosine similarity (a softmax temperature of
# 1/20): at 20, a neighbour 0.05 closer than another counts e (2.7) times as much. Fixed, not fitted.
NEIGHBOUR_SHARPNESS = 20.0


class GateError(ValueError):
    """A gate file that cannot be used, or prompts a gate cannot be fitted on; the message says what to do."""


@dataclass
class RefusalGate:
    """A logistic-regression probe on one layer of the base model: ``score > threshold`` routes to the adapter.

    With ``neighbours`` > 0 the score also adds ``neighbour_weight`` times the log-odds that the prompt is harmful
    by its nearest fitting prompts (cosine similarity of the standardised states, kept in ``memory``): a linear
    probe draws one boundary for every kind of request, and the neighbours remember kinds it draws badly."""

    layer: int  # 0 = embeddings, N = the output of decoder layer N
    mean: list[float]
    std: list[float]
    weight: list[float]
    bias: float
    threshold: float = 0.0
    fitted_on: dict[str, Any] = field(default_factory=dict)  # prompt counts and where they came from
    layer_log_loss: dict[str, float] = field(default_factory=dict)  # cross-validated, per layer considered
    neighbours: int = 0  # 0: the probe alone
    neighbour_weight: float = 0.0
    memory: str = ""  # base64 of float16 (n × hidden): the fitting prompts' states, standardised, unit length
    memory_labels: str = ""  # one "1" (harmful) or "0" per memory row
    words_weight: float = 0.0  # 0: the hidden state alone
    words: dict[str, Any] = field(default_factory=dict)  # a BagOfWords (alignment.bag_of_words) as a dict

    def __post_init__(self) -> None:
        sizes = {len(self.mean), len(self.std), len(self.weight)}
        if len(sizes) != 1 or not self.weight:
            raise GateError(f"The gate's mean, std and weight must be vectors of one length; got {sorted(sizes)}.")
        if self.layer < 0:
            raise GateError(f"The gate's layer must be 0 or more, got {self.layer}.")
        if not all(math.isfinite(x) for x in (*self.mean, *self.std, *self.weight, self.bias, self.threshold)):
            raise GateError("The gate has a value that is not a finite number; fit it again.")
        if any(x <= 0 for x in self.std):
            raise GateError("The gate's std must be positive everywhere (features are divided by it); fit it again.")
        if self.neighbours < 0 or not (math.isfinite(self.neighbour_weight) and self.neighbour_weight >= 0):
            raise GateError("The gate's neighbours and neighbour_weight must be 0 or more; fit it again.")
        if self.neighbours:
            rows = len(self.memory_labels)
            if set(self.memory_labels) - {"0", "1"} or not rows:
                raise GateError("The gate's memory_labels must be a string of 0s and 1s; fit it again.")
            try:
                size = len(base64.b64decode(self.memory, validate=True))
            except ValueError as exc:
                raise GateError("The gate's memory is not base64; fit it again.") from exc
            if size != rows * self.hidden_size * 2:
                raise GateError(f"The gate's memory holds {size} bytes, not {rows} rows of {self.hidden_size} "
                                "float16 values; fit it again.")
            if self.neighbours > rows:
                raise GateError(f"The gate asks for {self.neighbours} neighbours but remembers {rows} prompts.")
        if not (math.isfinite(self.words_weight) and self.words_weight >= 0):
            raise GateError("The gate's words_weight must be 0 or more; fit it again.")
        if self.words_weight:
            try:
                BagOfWords.from_dict(self.words)
            except (KeyError, TypeError, ValueError) as exc:
                raise GateError(f"The gate's words are not a usable bag of words ({exc}); fit it again.") from exc

    @property
    def hidden_size(self) -> int:
        return len(self.weight)

    def scores(self, states: Any, texts: Sequence[str] | None = None) -> Any:
        """Scores of hidden states (n × hidden) at the gate's layer, and of the texts they were read from (needed
        when the gate reads words too); above ``threshold`` means harmful."""
        import torch

        mean, std, weight = (torch.tensor(v, dtype=torch.float32) for v in (self.mean, self.std, self.weight))
        scaled = (states.float().cpu() - mean) / std
        scores = scaled @ weight + self.bias
        if self.neighbours:
            memory = torch.frombuffer(bytearray(base64.b64decode(self.memory)), dtype=torch.float16)
            labels = torch.tensor([c == "1" for c in self.memory_labels], dtype=torch.float32)
            vote = neighbour_log_odds(scaled, memory.float().view(len(labels), -1), labels, self.neighbours)
            scores = scores + self.neighbour_weight * vote
        if self.words_weight:
            if texts is None or len(texts) != len(scores):
                raise GateError("This gate also reads the prompts' words: give the texts with their states.")
            scores = scores + self.words_weight * BagOfWords.from_dict(self.words).scores(texts)
        return scores

    def check_fits(self, model: Any, what: str = "this model") -> None:
        config = getattr(model, "config", None)
        hidden = getattr(config, "hidden_size", None)
        layers = getattr(config, "num_hidden_layers", None)
        if hidden is not None and hidden != self.hidden_size:
            raise GateError(f"The refusal gate was fitted on a model with hidden size {self.hidden_size}, but {what} "
                            f"has {hidden}: fit it again on this model (python -m alignment.gate).")
        if layers is not None and self.layer > layers:
            raise GateError(f"The refusal gate reads layer {self.layer}, but {what} has {layers} layers: fit it "
                            "again on this model (python -m alignment.gate).")

    def route(self, model: Any, tokenizer: Any, texts: Sequence[str], batch_size: int = 16) -> list[bool]:
        """For chats already formatted with the generation prompt: True where the adapter should answer."""
        with base_weights(model):
            states = last_position_states(model, tokenizer, texts, batch_size=batch_size, layer=self.layer)
        return [bool(s > self.threshold) for s in self.scores(states, texts).tolist()]

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / GATE_FILE
        data = {"format": GATE_FORMAT, **asdict(self)}
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(data), encoding="utf-8")
        tmp.replace(path)  # a crash mid-write never leaves a half-written gate next to a good adapter
        return path

    def explain(self, quantized_4bit: bool = False) -> str:
        """For people loading the adapter: what the gate does to its answers (and, on a 4-bit model, a warning)."""
        text = (f"It has a refusal gate (layer {self.layer}): the adapter answers the prompts the gate flags as "
                "harmful, the base model answers the rest.")
        return f"{text} {FOUR_BIT_WARNING}" if quantized_4bit else text

    def summary(self) -> str:
        fitted = self.fitted_on
        counts = (f" on {fitted['harmful']} harmful and {fitted['benign']} benign prompts"
                  if {"harmful", "benign"} <= fitted.keys() else "")
        neighbours = (f", plus {self.neighbour_weight:g} × the vote of its {self.neighbours} nearest fitting prompts"
                      if self.neighbours else "")
        words = (f", plus {self.words_weight:g} × a bag of words' log-odds ({len(self.words['vocabulary'])} terms)"
                 if self.words_weight else "")
        return f"refusal gate: layer {self.layer}, threshold {self.threshold:g}{counts}{neighbours}{words}"


def load_gate(folder: str | Path, model: Any = None, model_name: str = "this model") -> RefusalGate | None:
    """The gate stored in an adapter folder, or None when it has none; with ``model``, also checked to fit it."""
    path = Path(folder) / GATE_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.pop("format", None) != GATE_FORMAT:
            raise GateError(f"unknown format (this version reads format {GATE_FORMAT})")
        gate = RefusalGate(**data)
    except (OSError, ValueError, TypeError) as exc:
        raise GateError(f"{path} is not a usable refusal gate ({exc}). Fit it again with python -m alignment.gate, "
                        "or delete the file to use the adapter without a gate.") from exc
    if model is not None:
        gate.check_fits(model, model_name)
    return gate


def load_hub_gate(repo_id: str, model: Any = None, model_name: str = "this model") -> RefusalGate | None:
    """The gate of an adapter on the Hub, or None when the repository has none (checked like ``load_gate``)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        path = Path(hf_hub_download(repo_id, GATE_FILE))
    except EntryNotFoundError:
        return None
    return load_gate(path.parent, model, model_name)


def base_weights(model: Any) -> contextlib.AbstractContextManager[Any]:
    """The base model's weights: a peft model's adapters switched off for the duration; other models as they are."""
    return model.disable_adapter() if hasattr(model, "disable_adapter") else contextlib.nullcontext()


def last_position_states(model: Any, tokenizer: Any, texts: Sequence[str], batch_size: int = 16,
                         layer: int | None = None,
                         on_progress: Callable[[int, int], None] | None = None) -> Any:
    """Hidden states at the last token of each text: (n, layers + 1, hidden), or (n, hidden) for one ``layer``."""
    import torch

    device = next(model.parameters()).device
    lengths = [len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in texts]
    order = sorted(range(len(texts)), key=lambda i: lengths[i])  # similar lengths together: little padding
    out = []
    with torch.no_grad():  # not inference_mode: probes fitted on these states need autograd
        for start in range(0, len(order), batch_size):
            batch = [texts[i] for i in order[start:start + batch_size]]
            encoded = tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            hidden = model(**encoded, output_hidden_states=True).hidden_states
            # Left padding (models.prepare_tokenizer): the last position is every text's last token.
            if layer is None:
                out.append(torch.stack([h[:, -1, :].float().cpu() for h in hidden], dim=1))
            else:
                out.append(hidden[layer][:, -1, :].float().cpu())
            if on_progress:
                on_progress(min(start + batch_size, len(texts)), len(texts))
    states = torch.cat(out)
    return states[torch.argsort(torch.tensor(order))]  # back to the order of ``texts``


def out_of_fold_scores(features: Any, labels: Any, folds: int = 5, seed: int = 0,
                       fit: Callable[[Any, Any], Callable[[Any], Any]] | None = None) -> Any:
    """Each prompt's probe score from a probe fitted without it (``folds`` random folds): how a gate fitted on
    these prompts would score one like it that it has not seen. ``fit(x, y)`` returns a scorer; by default the
    gate's own linear probe (scripts/gate_features.py passes others)."""
    import torch

    from alignment.probe import fit_probe

    fit = fit or (lambda x, y: fit_probe(x, y).scores)
    scores = torch.empty(len(labels))
    for train, fold in fold_indices(len(labels), folds, seed):
        scores[fold] = fit(features[train], labels[train])(features[fold])
    return scores


def fold_indices(count: int, folds: int, seed: int) -> list[tuple[Any, Any]]:
    """(fitting rows, held-out rows) of each of ``folds`` random folds of ``count`` rows, the same for a seed."""
    import torch

    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    return [(order[~torch.isin(order, fold)], fold) for fold in order.chunk(folds)]


def out_of_fold_word_scores(texts: Sequence[str], labels: Any, folds: int = 5, seed: int = 0) -> Any:
    """Each text's bag-of-words log-odds from a bag of words fitted without it, on the folds
    :func:`out_of_fold_scores` uses for the same ``folds`` and ``seed`` (so the two can be added)."""
    import torch

    scores = torch.empty(len(labels))
    for train, fold in fold_indices(len(labels), folds, seed):
        bag = fit_words([texts[i] for i in train.tolist()], labels[train])
        scores[fold] = bag.scores([texts[i] for i in fold.tolist()])
    return scores


def fit_words(texts: Sequence[str], labels: Any) -> BagOfWords:
    """:func:`alignment.bag_of_words.fit_bag_of_words`, its refusal a GateError like every other of fitting."""
    try:
        return fit_bag_of_words(texts, labels)
    except ValueError as exc:
        raise GateError(f"The gate's bag of words cannot be fitted: {exc}.") from exc


def cross_validated_log_loss(features: Any, labels: Any, folds: int = 5, seed: int = 0) -> float:
    """Mean held-out log-loss of a probe over ``folds`` random folds."""
    import torch

    scores = out_of_fold_scores(features, labels, folds, seed)
    return float(torch.nn.functional.binary_cross_entropy_with_logits(scores, labels.float()))


def neighbour_log_odds(scaled: Any, memory: Any, labels: Any, k: int) -> Any:
    """Log-odds that each standardised state (n × hidden) is harmful by its ``k`` nearest rows of ``memory``
    (unit-length standardised states, with ``labels`` 1 = harmful), weighted by a softmax of cosine similarity."""
    import torch

    query = torch.nn.functional.normalize(scaled.float(), dim=1)
    nearest = (query @ memory.float().T).topk(min(k, len(labels)), dim=1)
    weights = torch.softmax(nearest.values * NEIGHBOUR_SHARPNESS, dim=1)
    harmful = (weights * labels.float()[nearest.indices]).sum(1).clamp(1e-3, 1 - 1e-3)
    return torch.log(harmful / (1 - harmful))


def neighbour_memory(features: Any, probe: Any) -> Any:
    """What a gate remembers of its fitting prompts' states (n × hidden): standardised by ``probe``, unit length,
    float16 (the precision the gate file keeps)."""
    import torch

    return torch.nn.functional.normalize((features.float() - probe.mean) / probe.std, dim=1).half()


def probe_with_neighbours(neighbours: int, weight: float) -> Callable[[Any, Any], Callable[[Any], Any]]:
    """A ``fit(x, y)`` for :func:`out_of_fold_scores`: the linear probe plus ``weight`` × the neighbours' vote,
    both fitted on ``x`` alone, as :class:`RefusalGate` scores them."""
    from alignment.probe import fit_probe

    def fit(features: Any, labels: Any) -> Callable[[Any], Any]:
        probe = fit_probe(features, labels)
        memory = neighbour_memory(features, probe)

        def score(states: Any) -> Any:
            scaled = (states.float() - probe.mean) / probe.std
            return probe.scores(states) + weight * neighbour_log_odds(scaled, memory, labels, neighbours)
        return score
    return fit


def threshold_for_flag_rate(scores: Sequence[float], rate: float) -> float:
    """The lowest threshold at which at most ``rate`` of ``scores`` lie above it (``score > threshold`` flags)."""
    ranked = sorted(scores, reverse=True)
    allowed = math.floor(rate * len(ranked) + 1e-9)
    return ranked[allowed] if allowed < len(ranked) else ranked[-1] - 1.0


def risky_benign(cases: Sequence[dict[str, Any]]) -> list[bool]:
    """For each case, whether it is a benign prompt marked ``risky``: what a flag rate calibrates the threshold on."""
    return [case.get("label") == "benign" and bool(case.get("risky")) for case in cases]


def fit_gate(features: Any, labels: Any, layer: int | None = None, fitted_on: dict[str, Any] | None = None,
             folds: int = 5, calibrate_on: Any = None, flag_rate: float = 0.0, neighbours: int = 0,
             neighbour_weight: float = 0.0, texts: Sequence[str] | None = None,
             words_weight: float = 0.0) -> RefusalGate:
    """Fit a gate on hidden states (n, layers + 1, hidden) and labels (1 = harmful).

    Without ``layer``, every decoder layer is scored by cross-validated log-loss on these prompts and the best
    one is used: the choice never looks at evaluation prompts. With ``flag_rate`` > 0 the threshold is the lowest
    at which, out of fold, at most that share of the benign prompts marked in ``calibrate_on`` (a boolean mask,
    e.g. the risky-looking ones) is flagged, instead of 0; ``fitted_on["threshold_from"]`` records the shares.
    With ``neighbours`` > 0 the gate remembers every prompt's state and adds ``neighbour_weight`` × the vote of
    the nearest ones (RefusalGate); the layer is still chosen by the probe alone, the threshold by both. With
    ``words_weight`` > 0 a bag of words is fitted on ``texts`` (the prompts as the model read them) and adds that
    weight × its log-odds, out of fold too when the threshold is set.
    """
    from alignment.probe import fit_probe

    n_harmful = int(labels.sum())
    if n_harmful < folds or len(labels) - n_harmful < folds:
        raise GateError(f"A gate needs at least {folds} harmful and {folds} benign prompts to fit and choose a "
                        f"layer; got {n_harmful} harmful and {len(labels) - n_harmful} benign.")
    last = features.shape[1] - 1
    losses: dict[str, float] = {}
    if layer is None:
        losses = {str(i): round(cross_validated_log_loss(features[:, i], labels, folds), 5)
                  for i in range(1, last + 1)}
        layer = int(min(losses, key=lambda key: losses[key]))
    elif not 0 <= layer <= last:
        raise GateError(f"Layer {layer} is not a layer of this model (0 to {last}).")
    if neighbours < 0 or neighbour_weight < 0 or words_weight < 0:
        raise GateError("neighbours, neighbour_weight and words_weight must be 0 or more.")
    if words_weight > 0 and (texts is None or len(texts) != len(labels)):
        raise GateError("A gate that reads words needs the text of every prompt it is fitted on.")
    if neighbours > len(labels) - len(labels) // folds:
        raise GateError(f"{neighbours} neighbours is more than the {len(labels) - len(labels) // folds} prompts "
                        f"a fold of {len(labels)} is fitted on; use fewer.")
    use_neighbours = neighbours > 0 and neighbour_weight > 0
    probe = fit_probe(features[:, layer], labels)
    counts: dict[str, Any] = {"harmful": n_harmful, "benign": len(labels) - n_harmful}
    threshold = 0.0
    if flag_rate > 0:
        import torch

        mask = torch.as_tensor(calibrate_on, dtype=torch.bool) if calibrate_on is not None else None
        if mask is None or int((mask & (labels == 0)).sum()) < folds:
            raise GateError("Setting the threshold by a flag rate needs at least "
                            f"{folds} benign prompts to calibrate on; mark them, or use flag rate 0.")
        mask = mask & (labels == 0)
        scores = out_of_fold_scores(features[:, layer], labels, folds, fit=probe_with_neighbours(
            neighbours, neighbour_weight) if use_neighbours else None)
        if words_weight > 0:
            scores = scores + words_weight * out_of_fold_word_scores(texts, labels, folds)
        threshold = float(threshold_for_flag_rate(scores[mask].tolist(), flag_rate))
        counts["threshold_from"] = {
            "flag_rate": flag_rate, "calibration_prompts": int(mask.sum()),
            "calibration_flagged": round(float((scores[mask] > threshold).float().mean()), 4),
            "harmful_flagged": round(float((scores[labels == 1] > threshold).float().mean()), 4),
            "harmful_flagged_at_0": round(float((scores[labels == 1] > 0).float().mean()), 4),
            "calibration_flagged_at_0": round(float((scores[mask] > 0).float().mean()), 4)}
    readers: dict[str, Any] = {}  # what the gate reads besides the probe's layer
    if use_neighbours:
        unit = neighbour_memory(features[:, layer], probe)
        readers |= {"neighbours": neighbours, "neighbour_weight": neighbour_weight,
                    "memory": base64.b64encode(unit.numpy().tobytes()).decode("ascii"),
                    "memory_labels": "".join("1" if v else "0" for v in labels.tolist())}
    if words_weight > 0:
        readers |= {"words_weight": words_weight, "words": fit_words(texts, labels).as_dict()}
    return RefusalGate(layer=layer, mean=probe.mean.tolist(), std=probe.std.tolist(), weight=probe.weight.tolist(),
                       bias=float(probe.bias), threshold=threshold, fitted_on={**counts, **(fitted_on or {})},
                       layer_log_loss=losses, **readers)


def fit_gate_on_prompts(loaded: Any, cases: Sequence[dict[str, Any]], layer: int | None = None,
                        source: str = "", on_progress: Callable[[int, int], None] | None = None,
                        risky_flag_rate: float = 0.0, neighbours: int = 0,
                        neighbour_weight: float = 0.0, words_weight: float = 0.0) -> RefusalGate:
    """Read each case's prompt with the base model (adapters off) and fit a gate on its ``label``; with
    ``risky_flag_rate``, the threshold is aimed at that share of the benign cases marked ``risky``; with
    ``neighbours``, the nearest fitting prompts vote too, with ``words_weight`` a bag of words (fit_gate)."""
    with loaded.lock:
        return fit_gate_with_model(loaded.model, loaded.tokenizer, cases, layer, source, on_progress,
                                   risky_flag_rate, neighbours, neighbour_weight, words_weight)


def fit_gate_with_model(model: Any, tokenizer: Any, cases: Sequence[dict[str, Any]], layer: int | None = None,
                        source: str = "", on_progress: Callable[[int, int], None] | None = None,
                        risky_flag_rate: float = 0.0, neighbours: int = 0,
                        neighbour_weight: float = 0.0, words_weight: float = 0.0) -> RefusalGate:
    """:func:`fit_gate_on_prompts` for a bare model and tokenizer (a training run's, right after training)."""
    import torch

    from alignment.evaluate import as_chat
    from alignment.generation import format_chat

    labels = {case.get("label") for case in cases}
    if not labels <= {"harmful", "benign"}:
        raise GateError(f"Prompts must be labelled harmful or benign; found {sorted(map(str, labels))}.")
    texts = [format_chat(tokenizer, as_chat(case["prompt"])) for case in cases]
    padding_side, training = tokenizer.padding_side, model.training
    tokenizer.padding_side = "left"  # last_position_states reads the last position; a trainer may have changed it
    model.eval()
    try:
        with base_weights(model):
            states = last_position_states(model, tokenizer, texts, on_progress=on_progress)
    finally:
        tokenizer.padding_side = padding_side
        model.train(training)
    targets = torch.tensor([case["label"] == "harmful" for case in cases], dtype=torch.float32)
    return fit_gate(states, targets, layer, fitted_on={"source": source} if source else None,
                    calibrate_on=risky_benign(cases), flag_rate=risky_flag_rate, neighbours=neighbours,
                    neighbour_weight=neighbour_weight, texts=texts, words_weight=words_weight)


def main(argv: list[str] | None = None) -> int:
    import argparse

    from alignment.models import LoadSettings, ModelLoadError, load_model
    from alignment.redteam import SuiteError, load_prompts
    from alignment.settings import SettingsError

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapter", required=True, help="The adapter folder the gate is written into.")
    parser.add_argument("--prompts", required=True,
                        help="Prompts to fit on (JSONL with prompt and label harmful/benign), e.g. the run's "
                        "data/pairs.jsonl. Not the evaluation prompts: the gate would be tuned on them.")
    parser.add_argument("--model", default="bundled", help="The base model the adapter was trained on.")
    parser.add_argument("--layer", type=int, default=None,
                        help="Layer to read (default: the best by cross-validated log-loss on --prompts).")
    parser.add_argument("--risky-flag-rate", type=float, default=0.0,
                        help="0 (default): threshold 0. Otherwise the threshold at which, out of fold, at most this "
                        "share of the benign prompts marked \"risky\": true is flagged (the recipe's "
                        "gate_risky_flag_rate).")
    parser.add_argument("--neighbours", type=int, default=0,
                        help="0 (default): the probe alone. Otherwise the gate also remembers every prompt's state "
                        "and adds --neighbour-weight times the vote of this many nearest ones (the recipe's "
                        "gate_neighbours).")
    parser.add_argument("--neighbour-weight", type=float, default=0.0,
                        help="How much the neighbours' vote (log-odds) adds to the probe's score (the recipe's "
                        "gate_neighbour_weight).")
    parser.add_argument("--words-weight", type=float, default=0.0,
                        help="0 (default): the hidden state alone. Otherwise a bag of words is fitted on the same "
                        "prompts and this times its log-odds adds to the score (the recipe's gate_words_weight).")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if not 0 <= args.risky_flag_rate < 1:
        print(f"error: --risky-flag-rate must be at least 0 and below 1, got {args.risky_flag_rate}.",
              file=sys.stderr)
        return 2
    if args.neighbours < 0 or not (0 <= args.neighbour_weight < math.inf and 0 <= args.words_weight < math.inf):
        print("error: --neighbours, --neighbour-weight and --words-weight must be 0 or more.", file=sys.stderr)
        return 2
    adapter = Path(args.adapter)
    if not (adapter / "adapter_config.json").is_file():
        print(f"error: {adapter} has no adapter_config.json: give the adapter/ folder of a training run.",
              file=sys.stderr)
        return 2
    try:
        cases = load_prompts(args.prompts)
        loaded = load_model(LoadSettings(model=args.model, device=args.device, load_in_4bit=False))
    except (SuiteError, ModelLoadError, SettingsError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    def progress(done: int, total: int) -> None:
        print(f"\rgate: reading {done}/{total} prompts", end="" if done < total else "\n", file=sys.stderr,
              flush=True)

    try:
        gate = fit_gate_on_prompts(loaded, cases, args.layer, source=args.prompts, on_progress=progress,
                                   risky_flag_rate=args.risky_flag_rate, neighbours=args.neighbours,
                                   neighbour_weight=args.neighbour_weight, words_weight=args.words_weight)
    except GateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    path = gate.save(adapter)
    print(f"{gate.summary()}; written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
