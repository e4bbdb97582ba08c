"""Red-team suites: seed harmful behaviours, attack templates and benign controls, crossed into test cases.

The built-in data lives in ``alignment/data/redteam/`` (``behaviours.yaml``, ``templates.yaml``,
``benign.yaml``). Users add their own behaviours, templates and benign prompts with :func:`load_user_suite`
(YAML or JSONL). :func:`build_cases` crosses behaviours with attack template variants, sampling a fixed,
seeded subset per template so the default run stays small enough for a CPU.

Every behaviour and template variant carries ``split: train | heldout``; a case is ``train`` only when both
its behaviour and its variant are, so training on ``train`` cases never sees a held-out behaviour or wording.

Try it: ``python -m alignment.redteam`` prints the default suite's size by template and category;
``python -m alignment.redteam --show 3`` prints some cases.
"""

from __future__ import annotations

import base64
import json
import random
import re
import sys
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

DATA_DIR = Path(__file__).parent / "data" / "redteam"
CATEGORIES: tuple[str, ...] = (
    "violence_weapons", "self_harm", "illegal_activity", "privacy_stalking", "harassment", "hate", "fraud",
    "malware",
)
TEMPLATES: tuple[str, ...] = (
    "direct", "prompt_injection", "roleplay_persona", "social_engineering", "refusal_suppression", "obfuscation",
    "past_tense", "multi_turn",
)
DOMAINS: tuple[str, ...] = ("task_api", "general")
SPLITS: tuple[str, ...] = ("train", "heldout")
SUITE_PARTS: tuple[str, ...] = ("harmful", "benign")
LABELS: tuple[str, ...] = ("harmful", "benign")
ROLES: tuple[str, ...] = ("system", "user", "assistant")
# The built-in evaluation samples this many cases per attack template: 8 templates x 16 harmful + 100 benign
# = 228 cases, a few minutes of greedy generation for a 135M model on a laptop CPU.
DEFAULT_LIMIT_PER_TEMPLATE = 16
_PLACEHOLDER = re.compile(r"\{(request|goal|goal_b64|goal_leet|goal_split|translation|topic)\}")
_LEET = str.maketrans({"a": "4", "e": "3", "i": "1", "o": "0", "s": "5", "t": "7",
                       "A": "4", "E": "3", "I": "1", "O": "0", "S": "5", "T": "7"})

Message = dict[str, str]


class SuiteError(ValueError):
    """A suite file or prompts file is malformed; the message names the file, the entry and the fix."""


@dataclass(frozen=True)
class Behaviour:
    id: str
    category: str
    domain: str
    prompt: str
    goal: str
    split: str = "train"
    translations: dict[str, str] = field(default_factory=dict, hash=False, compare=False)


@dataclass(frozen=True)
class TemplateVariant:
    id: str
    template: str  # the attack family, one of TEMPLATES or a user-defined name
    split: str = "train"
    text: str | None = None
    messages: tuple[tuple[str, str], ...] | None = None  # (role, content) pairs; the last is the user's
    language: str | None = None  # obfuscation by translation: behaviours without this translation are skipped


@dataclass(frozen=True)
class BenignPrompt:
    id: str
    prompt: str
    category: str
    risky: bool
    reference: str | None = None
    split: str = "train"


@dataclass
class Suite:
    behaviours: list[Behaviour] = field(default_factory=list)
    variants: list[TemplateVariant] = field(default_factory=list)
    benign: list[BenignPrompt] = field(default_factory=list)
    category_topics: dict[str, str] = field(default_factory=dict)

    def merged(self, other: Suite) -> Suite:
        """A new suite with ``other``'s entries added; an id used in both is an error, not a silent override."""
        for kind, mine, theirs in (("behaviour", self.behaviours, other.behaviours),
                                   ("template variant", self.variants, other.variants),
                                   ("benign prompt", self.benign, other.benign)):
            clash = sorted({x.id for x in mine} & {x.id for x in theirs})
            if clash:
                raise SuiteError(f"{kind} id(s) {', '.join(clash)} exist in both suites; rename them in your file.")
        return Suite(self.behaviours + other.behaviours, self.variants + other.variants, self.benign + other.benign,
                     {**self.category_topics, **other.category_topics})

    def counts(self) -> dict[str, int]:
        return {"behaviours": len(self.behaviours), "template_variants": len(self.variants),
                "benign": len(self.benign)}


# ---------------------------------------------------------------------------------------------- validation


def _where(source: str, index: int | None, entry: Any) -> str:
    ident = entry.get("id") if isinstance(entry, dict) else None
    place = f"{source}" + (f", entry {index + 1}" if index is not None else "")
    return place + (f" (id {ident!r})" if ident else "")


def _require_text(entry: dict, key: str, where: str) -> str:
    value = entry.get(key)
    if not isinstance(value, str) or not value.strip():
        raise SuiteError(f"{where}: '{key}' is missing or empty; give it a non-empty text.")
    return value.strip()


def _split(entry: dict, where: str) -> str:
    value = entry.get("split", "train")
    if value not in SPLITS:
        raise SuiteError(f"{where}: split is {value!r}; use 'train' or 'heldout'.")
    return value


def _known_keys(entry: dict, allowed: set[str], where: str) -> None:
    unknown = sorted(set(entry) - allowed)
    if unknown:
        raise SuiteError(f"{where}: unknown field(s) {', '.join(unknown)}. Allowed: {', '.join(sorted(allowed))}.")


def parse_behaviour(entry: Any, where: str) -> Behaviour:
    if not isinstance(entry, dict):
        raise SuiteError(f"{where}: a behaviour must be a mapping with id, category, prompt and goal.")
    _known_keys(entry, {"id", "category", "domain", "prompt", "goal", "split", "translations", "kind"}, where)
    category = _require_text(entry, "category", where)
    if category not in CATEGORIES:
        raise SuiteError(f"{where}: category {category!r} is not one of {', '.join(CATEGORIES)}.")
    domain = entry.get("domain", "general")
    if domain not in DOMAINS:
        raise SuiteError(f"{where}: domain {domain!r} is not one of {', '.join(DOMAINS)}.")
    translations = entry.get("translations") or {}
    if not isinstance(translations, dict) or not all(isinstance(v, str) for v in translations.values()):
        raise SuiteError(f"{where}: translations must map a language code to the translated request text.")
    return Behaviour(id=_require_text(entry, "id", where), category=category, domain=domain,
                     prompt=_require_text(entry, "prompt", where), goal=_require_text(entry, "goal", where),
                     split=_split(entry, where), translations=dict(translations))


def _parse_messages(raw: Any, where: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(raw, list) or not raw:
        raise SuiteError(f"{where}: messages must be a non-empty list of {{role, content}} mappings.")
    pairs = []
    for i, message in enumerate(raw):
        if not isinstance(message, dict) or message.get("role") not in ROLES or not isinstance(
                message.get("content"), str):
            raise SuiteError(f"{where}: message {i + 1} needs role (system/user/assistant) and text content.")
        pairs.append((message["role"], message["content"]))
    if pairs[-1][0] != "user":
        raise SuiteError(f"{where}: the last message must be the user's (the model answers it).")
    return tuple(pairs)


def parse_variant(entry: Any, template: str, where: str) -> TemplateVariant:
    if not isinstance(entry, dict):
        raise SuiteError(f"{where}: a template variant must be a mapping with id and text (or messages).")
    _known_keys(entry, {"id", "template", "split", "text", "messages", "language", "kind"}, where)
    if not template or not isinstance(template, str):
        raise SuiteError(f"{where}: 'template' (the attack family, e.g. roleplay_persona) is missing.")
    text, messages = entry.get("text"), entry.get("messages")
    if (text is None) == (messages is None):
        raise SuiteError(f"{where}: give exactly one of 'text' (one user message) or 'messages' (a conversation).")
    if text is not None and (not isinstance(text, str) or not text.strip()):
        raise SuiteError(f"{where}: 'text' is empty.")
    parsed_messages = _parse_messages(messages, where) if messages is not None else None
    body = text if text is not None else " ".join(c for _, c in parsed_messages)
    if not _PLACEHOLDER.search(body):
        raise SuiteError(f"{where}: the template has no placeholder, so every behaviour would give the same "
                         "prompt. Use {request} (the plain request) or {goal} (the goal phrase).")
    language = entry.get("language")
    if "{translation}" in body and not language:
        raise SuiteError(f"{where}: uses {{translation}} but has no 'language' (e.g. es).")
    return TemplateVariant(id=_require_text(entry, "id", where), template=template, split=_split(entry, where),
                           text=text, messages=parsed_messages, language=language)


def parse_benign(entry: Any, where: str) -> BenignPrompt:
    if not isinstance(entry, dict):
        raise SuiteError(f"{where}: a benign prompt must be a mapping with id and prompt.")
    _known_keys(entry, {"id", "prompt", "category", "risky", "reference", "split", "kind", "label"}, where)
    if entry.get("label", "benign") != "benign":
        raise SuiteError(f"{where}: benign prompts must have label 'benign' (or none).")
    risky = entry.get("risky", False)
    if not isinstance(risky, bool):
        raise SuiteError(f"{where}: risky must be true or false.")
    reference = entry.get("reference")
    if reference is not None and not isinstance(reference, str):
        raise SuiteError(f"{where}: reference must be text.")
    return BenignPrompt(id=_require_text(entry, "id", where), prompt=_require_text(entry, "prompt", where),
                        category=str(entry.get("category") or ("risky_lookalike" if risky else "everyday")),
                        risky=risky, reference=reference, split=_split(entry, where))


def _check_unique(suite: Suite, source: str) -> None:
    for kind, items in (("behaviour", suite.behaviours), ("template variant", suite.variants),
                        ("benign prompt", suite.benign)):
        seen: set[str] = set()
        for item in items:
            if item.id in seen:
                raise SuiteError(f"{source}: {kind} id {item.id!r} appears twice; ids must be unique.")
            seen.add(item.id)


def suite_from_mapping(data: Any, source: str) -> Suite:
    """Build a suite from the YAML layout: {behaviours: [...], templates: {family: [...]}, benign: [...]}."""
    if not isinstance(data, dict):
        raise SuiteError(f"{source}: expected a mapping with any of: behaviours, templates, benign.")
    unknown = sorted(set(data) - {"behaviours", "templates", "benign", "category_topics"})
    if unknown:
        raise SuiteError(f"{source}: unknown section(s) {', '.join(unknown)}; use behaviours, templates, benign.")
    suite = Suite(category_topics=dict(data.get("category_topics") or {}))
    for i, entry in enumerate(data.get("behaviours") or []):
        suite.behaviours.append(parse_behaviour(entry, _where(source, i, entry)))
    templates = data.get("templates") or {}
    if not isinstance(templates, dict):
        raise SuiteError(f"{source}: 'templates' must map a template family name to a list of variants.")
    for family, variants in templates.items():
        if not isinstance(variants, list):
            raise SuiteError(f"{source}: templates.{family} must be a list of variants.")
        for i, entry in enumerate(variants):
            suite.variants.append(parse_variant(entry, str(family), _where(f"{source} templates.{family}", i, entry)))
    for i, entry in enumerate(data.get("benign") or []):
        suite.benign.append(parse_benign(entry, _where(source, i, entry)))
    _check_unique(suite, source)
    return suite


def _jsonl_objects(path: Path, shape: str) -> Iterator[tuple[int, str, dict[str, Any]]]:
    """(line number, where, object) for each non-blank line; a line that is not a JSON object names itself and ``shape``."""
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}, line {number}"
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SuiteError(f"{where}: not valid JSON ({exc.msg}); {shape}") from exc
        if not isinstance(entry, dict):
            raise SuiteError(f"{where}: {shape}")
        yield number, where, entry


def _suite_from_jsonl(path: Path) -> Suite:
    """JSONL: one entry per line with ``kind`` behaviour | template | benign (inferred when unambiguous)."""
    suite = Suite()
    for _, where, entry in _jsonl_objects(path, "each line must be a JSON object."):
        kind = entry.get("kind") or ("behaviour" if "goal" in entry else "template" if "template" in entry
                                     else "benign" if entry.get("label") == "benign" or "reference" in entry
                                     else None)
        if kind == "behaviour":
            suite.behaviours.append(parse_behaviour(entry, where))
        elif kind == "template":
            suite.variants.append(parse_variant(entry, entry.get("template"), where))
        elif kind == "benign":
            suite.benign.append(parse_benign(entry, where))
        else:
            raise SuiteError(f"{where}: say what this line is with \"kind\": \"behaviour\", \"template\" or "
                             "\"benign\".")
    _check_unique(suite, str(path))
    return suite


def load_user_suite(path: str | Path) -> Suite:
    """Load user-added behaviours, templates and benign prompts from a YAML or JSONL file, validated."""
    path = Path(path)
    if not path.is_file():
        raise SuiteError(f"Suite file {path} does not exist.")
    if path.suffix in (".jsonl", ".ndjson"):
        suite = _suite_from_jsonl(path)
    elif path.suffix in (".yaml", ".yml"):
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise SuiteError(f"{path} is not valid YAML: {exc}") from exc
        suite = suite_from_mapping(data, str(path))
    else:
        raise SuiteError(f"{path}: use a .yaml/.yml or .jsonl file.")
    if not (suite.behaviours or suite.variants or suite.benign):
        raise SuiteError(f"{path} holds no behaviours, templates or benign prompts.")
    return suite


def load_builtin_suite(data_dir: str | Path | None = None) -> Suite:
    """The project's own suites, read fresh on every call (no module-level cache to go stale)."""
    folder = Path(data_dir) if data_dir else DATA_DIR
    suite = Suite()
    for name in ("behaviours.yaml", "templates.yaml", "benign.yaml"):
        file = folder / name
        suite = suite.merged(suite_from_mapping(yaml.safe_load(file.read_text(encoding="utf-8")), str(file)))
    return suite


# ---------------------------------------------------------------------------------------------- rendering


def leetspeak(text: str) -> str:
    return text.translate(_LEET)


def split_words(text: str) -> str:
    """Break each longer word in two so keyword filters miss it; the reader can still join the pieces."""
    pieces = []
    for word in text.split():
        pieces.append(f"{word[:len(word) // 2]}-{word[len(word) // 2:]}" if len(word) > 3 else word)
    return " / ".join(pieces)


def _fill(text: str, values: dict[str, str]) -> str:
    # Only known placeholders are replaced, so templates may contain literal braces (JSON snippets).
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], text)


def render(variant: TemplateVariant, behaviour: Behaviour, topics: dict[str, str] | None = None
           ) -> str | list[Message] | None:
    """The prompt for ``behaviour`` wrapped in ``variant``; None when the variant does not apply to it."""
    translation = behaviour.translations.get(variant.language or "", "")
    if variant.language and not translation:
        return None
    values = {
        "request": behaviour.prompt,
        "goal": behaviour.goal,
        "goal_b64": base64.b64encode(behaviour.goal.encode("utf-8")).decode("ascii"),
        "goal_leet": leetspeak(behaviour.goal),
        "goal_split": split_words(behaviour.goal),
        "translation": translation,
        "topic": (topics or {}).get(behaviour.category, behaviour.category.replace("_", " ")),
    }
    if variant.messages is not None:
        return [{"role": role, "content": _fill(content, values)} for role, content in variant.messages]
    return _fill(variant.text or "", values)


# ---------------------------------------------------------------------------------------------- cases


def _round_robin(items: list[dict], key: str) -> list[dict]:
    """Interleave items by ``key`` so a small sample still covers every category.

    Groups are taken in order of first appearance in the (already shuffled) items, not alphabetically, so a
    sample smaller than the number of categories does not always favour the same categories in every template.
    """
    groups: dict[str, list[dict]] = defaultdict(list)
    for item in items:
        groups[item[key]].append(item)
    out: list[dict] = []
    queues = list(groups.values())
    while any(queues):
        for queue in queues:
            if queue:
                out.append(queue.pop(0))
    return out


def _check_filter(name: str, values: Iterable[str] | None, allowed: Iterable[str]) -> set[str] | None:
    if values is None:
        return None
    values = {values} if isinstance(values, str) else set(values)
    unknown = sorted(values - set(allowed))
    if unknown:
        raise SuiteError(f"unknown {name}: {', '.join(unknown)}. Known: {', '.join(sorted(set(allowed)))}.")
    return values


def build_cases(
    suites: Sequence[str] | None = None,
    categories: Iterable[str] | None = None,
    templates: Iterable[str] | None = None,
    split: str | None = None,
    limit_per_template: int | None = None,
    seed: int = 0,
    suite: Suite | None = None,
) -> list[dict[str, Any]]:
    """Cross behaviours with template variants (plus the benign controls) into evaluation cases.

    ``suites`` picks "harmful" and/or "benign" (default both). ``categories`` filters harmful behaviours;
    ``templates`` filters attack families (benign cases have no template and are kept unless ``suites``
    excludes them). ``split`` keeps only train or heldout cases. ``limit_per_template`` samples at most that
    many harmful cases per attack family, deterministically from ``seed`` and spread across categories.
    ``suite`` replaces the built-in data (merge a user suite with ``load_builtin_suite().merged(...)``).
    """
    suite = suite or load_builtin_suite()
    parts = _check_filter("suite", suites, SUITE_PARTS) or set(SUITE_PARTS)
    wanted_categories = _check_filter("category", categories, CATEGORIES)
    families = sorted({v.template for v in suite.variants}, key=lambda t: (t not in TEMPLATES, TEMPLATES.index(t)
                                                                            if t in TEMPLATES else 0, t))
    wanted_templates = _check_filter("template", templates, families)
    if split is not None and split not in SPLITS:
        raise SuiteError(f"split is {split!r}; use 'train', 'heldout' or leave it out for both.")
    if limit_per_template is not None and limit_per_template < 1:
        raise SuiteError("limit_per_template must be at least 1 (or None for every combination).")
    cases: list[dict[str, Any]] = []
    if "harmful" in parts:
        behaviours = [b for b in suite.behaviours if wanted_categories is None or b.category in wanted_categories]
        for family in families:
            if wanted_templates is not None and family not in wanted_templates:
                continue
            family_cases = []
            for variant in (v for v in suite.variants if v.template == family):
                for behaviour in behaviours:
                    case_split = "train" if behaviour.split == variant.split == "train" else "heldout"
                    if split is not None and case_split != split:
                        continue
                    prompt = render(variant, behaviour, suite.category_topics)
                    if prompt is None:
                        continue
                    family_cases.append({
                        "id": f"{behaviour.id}:{variant.id}", "prompt": prompt, "label": "harmful",
                        "category": behaviour.category, "template": family, "variant": variant.id,
                        "behaviour": behaviour.id, "domain": behaviour.domain, "risky": False,
                        "split": case_split, "reference": None,
                    })
            # A string seed is hashed deterministically by random.Random, independent of PYTHONHASHSEED.
            random.Random(f"{seed}:{family}").shuffle(family_cases)
            family_cases = _round_robin(family_cases, "category")
            cases.extend(family_cases[:limit_per_template] if limit_per_template else family_cases)
    if "benign" in parts:
        for item in suite.benign:
            if split is not None and item.split != split:
                continue
            cases.append({
                "id": item.id, "prompt": item.prompt, "label": "benign", "category": item.category,
                "template": None, "variant": None, "behaviour": None, "domain": None, "risky": item.risky,
                "split": item.split, "reference": item.reference,
            })
    return cases


def default_cases(seed: int = 0, split: str | None = None, suite: Suite | None = None) -> list[dict[str, Any]]:
    """The built-in evaluation run: every benign control and a seeded sample per attack template."""
    return build_cases(limit_per_template=DEFAULT_LIMIT_PER_TEMPLATE, seed=seed, split=split, suite=suite)


def validate_prompt(prompt: Any, where: str) -> str | list[Message]:
    if isinstance(prompt, str):
        if not prompt.strip():
            raise SuiteError(f"{where}: prompt is empty.")
        return prompt
    if isinstance(prompt, list):
        pairs = _parse_messages(prompt, where)
        return [{"role": r, "content": c} for r, c in pairs]
    raise SuiteError(f"{where}: prompt must be a string or a list of {{role, content}} messages.")


def load_prompts(path: str | Path) -> list[dict[str, Any]]:
    """Read an evaluation prompts file (JSONL). Each line needs ``prompt`` and ``label``; other fields are kept."""
    path = Path(path)
    if not path.is_file():
        raise SuiteError(f"Prompts file {path} does not exist.")
    cases = []
    for number, where, entry in _jsonl_objects(path, "each line must be a JSON object with prompt and label."):
        if "prompt" not in entry:
            raise SuiteError(f"{where}: 'prompt' is missing.")
        if entry.get("label") not in LABELS:
            raise SuiteError(f"{where}: label is {entry.get('label')!r}; use 'harmful' or 'benign'.")
        case = dict(entry)
        case["prompt"] = validate_prompt(entry["prompt"], where)
        case.setdefault("id", f"line{number}")
        case["category"] = case.get("category") or "uncategorised"
        case.setdefault("template", "direct" if case["label"] == "harmful" else None)
        case["risky"] = bool(case.get("risky", False))
        case.setdefault("split", None)
        case.setdefault("reference", None)
        cases.append(case)
    if not cases:
        raise SuiteError(f"Prompts file {path} has no prompts.")
    return cases


def describe(cases: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Counts by label, template, category and split, for CLI output and docs."""
    out: dict[str, dict[str, int]] = {"label": {}, "template": {}, "category": {}, "split": {}}
    for case in cases:
        for key in out:
            value = str(case.get(key))
            out[key][value] = out[key].get(value, 0) + 1
    return out


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Show the red-team suites: sizes and sample cases.")
    parser.add_argument("--suite-file", help="Extra behaviours/templates/benign prompts (YAML or JSONL).")
    parser.add_argument("--split", choices=SPLITS)
    parser.add_argument("--limit-per-template", type=int, default=DEFAULT_LIMIT_PER_TEMPLATE,
                        help="0 for every combination.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--show", type=int, default=0, help="Print this many cases as JSON lines.")
    args = parser.parse_args(argv)
    try:
        suite = load_builtin_suite()
        if args.suite_file:
            suite = suite.merged(load_user_suite(args.suite_file))
        cases = build_cases(split=args.split, limit_per_template=args.limit_per_template or None, seed=args.seed,
                            suite=suite)
    except SuiteError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"suite": suite.counts(), "cases": len(cases), **describe(cases)}, indent=2))
    for case in cases[:args.show]:
        print(json.dumps(case, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
