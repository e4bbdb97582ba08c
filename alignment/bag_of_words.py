"""A bag-of-words logistic regression over a prompt's words and word pairs: the refusal gate's second reader.

Why (docs/OUTCOME.md, session 20): the gate's probe reads one hidden state of a 135M model, and some plainly
harmful requests ("a pipe bomb", "ricin") land on the benign side of its one boundary. Which words a request uses
is evidence the hidden state can blur, and a classifier of words makes different mistakes from the probe, so the
gate adds a weighted share of this model's log-odds to the probe's score (``RefusalGate.words_weight``).

Features: the words of the text (lower-cased, a few English endings cut so "bombs" and "bomb" are one word) and
each pair of neighbouring words, those in at least ``min_count`` fitting texts, weighted by inverse document
frequency, each text's vector scaled to unit length (TF-IDF). The logistic regression is fitted by L-BFGS with an
L2 penalty, by the probe's own code (alignment.probe.fit_logistic). scikit-learn would do the same; it is not a
dependency, and the gate file keeps the fitted model as plain JSON lists (``as_dict``/``from_dict``), not a pickle.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

WORD = re.compile(r"[a-z0-9]+")
ENDINGS = ("ing", "ed", "es", "s")  # cut from words of five letters or more: "bombs" -> "bomb", "making" -> "mak"


def terms(text: str) -> set[str]:
    """The words of ``text`` (endings cut) and each pair of neighbouring words, joined by "_"."""
    words = []
    for word in WORD.findall(text.lower()):
        if len(word) > 4:
            for ending in ENDINGS:
                if word.endswith(ending):
                    word = word[:-len(ending)]
                    break
        words.append(word)
    return {*words, *(f"{a}_{b}" for a, b in itertools.pairwise(words))}


@dataclass
class BagOfWords:
    """A fitted model: ``scores(texts)`` are log-odds that each text is harmful."""

    vocabulary: list[str]
    idf: list[float]
    weight: list[float]
    bias: float

    def __post_init__(self) -> None:
        if not len(self.vocabulary) == len(self.idf) == len(self.weight) or not self.vocabulary:
            raise ValueError("a bag of words needs vocabulary, idf and weight lists of one non-zero length")
        if len(set(self.vocabulary)) != len(self.vocabulary):
            raise ValueError("a bag of words' vocabulary has a term twice")
        if not all(math.isfinite(x) for x in (*self.idf, *self.weight, self.bias)):
            raise ValueError("a bag of words has a value that is not a finite number")

    def features(self, texts: Sequence[str]) -> Any:
        """TF-IDF rows (len(texts) × vocabulary), unit length; a text with no known term is all zeros."""
        import torch

        index = {term: i for i, term in enumerate(self.vocabulary)}
        rows = torch.zeros(len(texts), len(self.vocabulary))
        for row, text in enumerate(texts):
            for term in terms(text):
                column = index.get(term)
                if column is not None:
                    rows[row, column] = 1.0
        return torch.nn.functional.normalize(rows * torch.tensor(self.idf), dim=1)

    def scores(self, texts: Sequence[str]) -> Any:
        import torch

        return self.features(texts) @ torch.tensor(self.weight) + self.bias

    def as_dict(self) -> dict[str, Any]:
        return {"vocabulary": self.vocabulary, "idf": self.idf, "weight": self.weight, "bias": self.bias}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BagOfWords:
        return cls(vocabulary=list(data["vocabulary"]), idf=[float(x) for x in data["idf"]],
                   weight=[float(x) for x in data["weight"]], bias=float(data["bias"]))


def fit_bag_of_words(texts: Sequence[str], labels: Any, l2: float = 1e-5, min_count: int = 2,
                     max_iter: int = 300) -> BagOfWords:
    """Fit on ``texts`` and ``labels`` (1 = harmful) with the probe's logistic regression (alignment.probe), on
    the TF-IDF rows as they are, not standardised. ``l2`` is small because unit-length TF-IDF rows spread a
    text's evidence thinly over its terms (a larger penalty flattens it: 0.01 flagged 54% of the gate's harmful
    prompts out of fold where 1e-5 flagged 81%, session 20)."""
    from alignment.probe import fit_logistic

    seen = [terms(text) for text in texts]
    counts: dict[str, int] = {}
    for found in seen:
        for term in found:
            counts[term] = counts.get(term, 0) + 1
    vocabulary = sorted(term for term, count in counts.items() if count >= min_count)
    if not vocabulary:
        raise ValueError(f"no term occurs in {min_count} or more of the {len(texts)} texts; give more prompts")
    idf = [math.log((1 + len(texts)) / (1 + counts[term])) + 1 for term in vocabulary]
    model = BagOfWords(vocabulary, idf, [0.0] * len(vocabulary), 0.0)
    weight, bias = fit_logistic(model.features(texts), labels, l2, max_iter)
    return BagOfWords(vocabulary, idf, weight.tolist(), float(bias))
