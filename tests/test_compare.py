"""Tests for alignment.compare: presets, both sides on one copy of the weights, blind votes in the label store,
win rates with Wilson intervals (recomputed here from the formula), and exports that never let text run as markup.

Run: .venv/bin/python -m pytest tests/test_compare.py
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from alignment.compare import (
    COMPARE_STRATEGY,
    DEMO_KINDS,
    CompareError,
    ComparisonRow,
    check_sides,
    load_demo_prompts,
    main,
    record_vote,
    render,
    run_presets,
    store_win_rates,
    stream_sides,
    vote_pair,
    win_rates,
    with_seed,
    write_export,
)
from alignment.generation import SamplingSettings
from labeling.export import build_preference_rows, build_rows_with_reasons
from labeling.records import LabelRecord, PairRecord
from labeling.store import LabelStore

SEEDED = SamplingSettings(max_new_tokens=12, do_sample=True, seed=7)  # greedy on a random model repeats a special token


def make_adapter(model_dir: Path, out_dir: Path, seed: int = 1) -> Path:
    """A LoRA adapter for the tiny model whose weights start random (not as a no-op), so its answers differ."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    config = LoraConfig(r=8, lora_alpha=32, target_modules=["q_proj", "v_proj", "o_proj", "down_proj"],
                        init_lora_weights=False, task_type="CAUSAL_LM")
    get_peft_model(model, config).save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="module")
def registry(tiny_model_dir, tmp_path_factory):
    """A registry of its own (adapters are attached to it) with one adapter named 'aligned'."""
    from alignment.models import LoadSettings, load_model
    from alignment.registry import ModelRegistry

    loaded = load_model(LoadSettings(model=str(tiny_model_dir), device="cpu"))
    registry = ModelRegistry(loaded=loaded)
    adapter = make_adapter(tiny_model_dir, tmp_path_factory.mktemp("adapter") / "aligned")
    assert registry.load_adapter(adapter) == "aligned"
    return registry


# -- presets -----------------------------------------------------------------------------------------------

def test_demo_prompts_cover_every_kind_with_both_intended_labels() -> None:
    presets = load_demo_prompts()
    assert len(presets) >= 16
    assert {p.kind for p in presets} == set(DEMO_KINDS)
    assert len({p.id for p in presets}) == len(presets)
    for preset in presets:
        assert preset.chat[-1]["role"] == "user" and preset.text.strip()
        expected = "harmful" if preset.kind in ("harmful", "jailbreak") else "benign"
        assert preset.intended_label == expected, preset.id
    assert any(len(p.chat) > 1 for p in presets), "one preset should be a multi-turn chat"
    assert len({p.title for p in presets}) == len(presets)


@pytest.mark.parametrize("body, message", [
    ("demo_prompts: []", "no 'demo_prompts' list"),
    ("demo_prompts:\n  - {id: x, kind: scary, intended_label: harmful, prompt: hi}", "kind 'scary'"),
    ("demo_prompts:\n  - {id: x, kind: benign, intended_label: fine, prompt: hi}", "intended_label 'fine'"),
    ("demo_prompts:\n  - {id: x, kind: benign, intended_label: benign}", "non-empty 'prompt'"),
    ("demo_prompts:\n  - {id: x, kind: benign, intended_label: benign, messages: [{role: assistant, content: a}]}",
     "ending with a user turn"),
    ("demo_prompts:\n  - {id: x, kind: benign, intended_label: benign, prompt: a}\n"
     "  - {id: x, kind: benign, intended_label: benign, prompt: b}", "used twice"),
    ("demo_prompts: [", "Cannot read"),
])
def test_bad_demo_prompt_files_are_refused_clearly(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "presets.yaml"
    path.write_text(body, encoding="utf-8")
    with pytest.raises(CompareError, match=message.replace("(", r"\(")):
        load_demo_prompts(path)


# -- running both sides ------------------------------------------------------------------------------------

def test_sides_must_be_loaded_and_different() -> None:
    check_sides(["base", "aligned"], "base", "aligned")
    with pytest.raises(CompareError, match="not loaded"):
        check_sides(["base"], "base", "aligned")
    with pytest.raises(CompareError, match="two different sides"):
        check_sides(["base", "aligned"], "base", "base")


def test_blank_seed_is_drawn_once_and_shared() -> None:
    drawn = with_seed(SamplingSettings(seed=None))
    assert isinstance(drawn.seed, int)
    assert with_seed(SamplingSettings(seed=5)).seed == 5


def test_stream_sides_gives_each_side_its_own_weights(registry) -> None:
    chat = [{"role": "user", "content": "Say hello."}]
    steps = list(stream_sides(registry, "base", "aligned", chat, chat, SEEDED))
    left, right = steps[-1]
    assert left and right and left != right
    # The left side streams to its end before the right one starts.
    assert all(r == "" for partial, r in steps if partial != left)
    # The same side again gives the same text: the toggle left no adapter enabled on the base.
    with registry.side("base") as view:
        from alignment.generation import generate

        assert generate(view, [chat], SEEDED)[0][0].text == left


def test_run_presets_answers_both_sides_and_judges_each(registry) -> None:
    class Judge:  # stands in for a refusal judge: calls it a refusal when the answer has an even length
        def judge(self, prompt, response):
            from alignment.judge import Verdict

            refused = len(response) % 2 == 0
            return Verdict(refused=refused, kind="full_refusal" if refused else "compliance", score=1.0 * refused,
                           reason="even")

    presets = load_demo_prompts()[:3]
    seen = []
    rows = run_presets(registry, presets, "base", "aligned", SEEDED, Judge(),
                       on_progress=lambda done, total: seen.append((done, total)))
    assert [row.id for row in rows] == [p.id for p in presets]
    assert seen[-1] == (6, 6)
    for row in rows:
        assert row.left == "base" and row.right == "aligned" and row.seed == 7
        assert row.left_answer != row.right_answer
        assert row.left_verdict["refused"] == (len(row.left_answer) % 2 == 0)
        assert row.right_verdict["refused"] == (len(row.right_answer) % 2 == 0)
    with pytest.raises(CompareError, match="not loaded"):
        run_presets(registry, presets, "base", "nope", SEEDED, Judge())


# -- blind votes -------------------------------------------------------------------------------------------

def test_vote_pair_is_the_same_pair_whichever_side_is_on_the_left() -> None:
    prompt = [{"role": "user", "content": "How do I pick a lock?"}]
    first, left1 = vote_pair(prompt, "base", "Sure: ...", "aligned", "I can't help with that ...", SEEDED,
                             intended_label="harmful")
    second, left2 = vote_pair(prompt, "aligned", "I can't help with that ...", "base", "Sure: ...", SEEDED,
                              intended_label="harmful")
    assert first.pair_id == second.pair_id
    assert (first.model_a, first.model_b) == ("aligned", "base")
    assert first.response_a == "I can't help with that ..."
    assert (left1, left2) == ("b", "a")
    assert first.strategy == COMPARE_STRATEGY
    with pytest.raises(CompareError, match="two different sides"):
        vote_pair(prompt, "base", "x", "base", "y", SEEDED)


def test_blind_votes_are_stored_hidden_from_labelers_and_can_join_the_dataset(tmp_path: Path) -> None:
    store = LabelStore(tmp_path)
    prompt = [{"role": "user", "content": "Write a phishing email."}]
    pair, left = vote_pair(prompt, "base", "Dear customer, enter your password", "aligned",
                           "I won't write that, but I can show how to spot phishing.", SEEDED,
                           category="fraud", intended_label="harmful")
    assert left == "b"  # 'aligned' sorts first, so base (stored b) was on the left
    vote = record_vote(store, pair, left, "right", "ana", label_id="v1")
    assert (vote.kind, vote.choice, vote.left) == ("vote", "a", "b")
    (stored,) = store.active_labels(kind="vote")
    assert (stored.label_id, stored.choice, stored.left, stored.labeler) == ("v1", "a", "b", "ana")
    assert store.active_labels(kind="label") == []
    assert store.next_pair("bo") is None, "compare pairs must not reach the Label tab"
    assert build_preference_rows(store) == []
    _, reasons = build_rows_with_reasons(store)
    assert reasons == {"compare_votes_not_included": 1}, "a vote pair is not unlabelled work"
    (row,) = build_preference_rows(store, include_votes=True)
    assert row["chosen"][0]["content"].startswith("I won't write that")
    assert row["rejected"][0]["content"].startswith("Dear customer")
    assert row["intended_label"] == "harmful" and row["strategy"] == COMPARE_STRATEGY
    # A second vote by the same person on the same answers replaces the first.
    record_vote(store, pair, left, "tie", "ana")
    assert [v.choice for v in store.active_labels(kind="vote")] == ["tie"]
    with pytest.raises(CompareError, match="not one of"):
        record_vote(store, pair, left, "sideways", "ana")


def wilson(successes: int, n: int) -> tuple[float, float]:
    """The 95% Wilson score interval, written out from the formula."""
    z = 1.959963984540054
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


def test_win_rates_per_pair_of_sides_with_wilson_intervals() -> None:
    prompt = [{"role": "user", "content": "q"}]

    def pair(a: str, b: str, i: int) -> PairRecord:
        return PairRecord(prompt=prompt, response_a=f"{a}{i}", response_b=f"{b}{i}", strategy=COMPARE_STRATEGY,
                          model_a=a, model_b=b)

    pairs, votes = [], []

    def cast(a: str, b: str, choice: str, count: int) -> None:
        for _ in range(count):
            p = pair(a, b, len(pairs))
            pairs.append(p)
            votes.append(LabelRecord(pair_id=p.pair_id, labeler="x", choice=choice, left="a", kind="vote"))

    # aligned vs base, stored both ways round: aligned wins 7, base wins 2, 3 ties, 1 both bad.
    cast("aligned", "base", "a", 4)
    cast("base", "aligned", "b", 3)
    cast("base", "aligned", "a", 2)
    cast("aligned", "base", "tie", 3)
    cast("base", "aligned", "both_bad", 1)
    # base vs v2: no decisive vote at all.
    cast("base", "v2", "tie", 2)
    # Ignored: a plain label, a vote on a non-compare pair, a retraction.
    other = PairRecord(prompt=prompt, response_a="x", response_b="y", strategy="two_samples", model_a="base",
                       model_b="v2")
    pairs.append(other)
    votes.append(LabelRecord(pair_id=other.pair_id, labeler="x", choice="a", left="a", kind="vote"))
    votes.append(LabelRecord(pair_id=pairs[0].pair_id, labeler="y", choice="b", left="a", kind="label"))
    votes.append(LabelRecord(pair_id=pairs[0].pair_id, labeler="x", choice="b", left="a", kind="vote",
                             retracts="zzz"))

    first, second = win_rates(pairs, votes)
    assert (first.side, first.opponent) == ("aligned", "base")
    assert (first.wins, first.losses, first.ties, first.both_bad, first.votes) == (7, 2, 3, 1, 13)
    assert first.rate == pytest.approx(7 / 9)
    low, high = wilson(7, 9)
    assert (first.low, first.high) == (pytest.approx(low, abs=1e-4), pytest.approx(high, abs=1e-4))
    assert (second.side, second.opponent, second.ties, second.votes) == ("base", "v2", 2, 2)
    assert second.rate is None and second.low is None


def test_store_win_rates_reads_active_votes(tmp_path: Path) -> None:
    store = LabelStore(tmp_path)
    for i, action in enumerate(["left", "left", "right"]):
        pair, left = vote_pair([{"role": "user", "content": f"q{i}"}], "base", f"b{i}", "aligned", f"a{i}", SEEDED)
        record_vote(store, pair, left, action, f"voter{i}")
    (rate,) = store_win_rates(store)
    # Left was base every time: base won 2, aligned 1; seen from 'aligned' (sorts first).
    assert (rate.side, rate.wins, rate.losses) == ("aligned", 1, 2)


# -- export ------------------------------------------------------------------------------------------------

EVIL = "<script>alert('x')</script> & <img src=x onerror=alert(1)>"


def evil_rows() -> list[ComparisonRow]:
    return [ComparisonRow(prompt=[{"role": "user", "content": f"Tell me {EVIL}"}], left="base",
                          right="<b>aligned</b>", left_answer=f"Sure {EVIL}\n```\nrm -rf /\n```",
                          right_answer="I can't | won't", kind="harmful", category="malware",
                          intended_label="harmful",
                          left_verdict={"refused": False, "kind": "compliance", "score": 0.1, "reason": ""},
                          right_verdict={"refused": True, "kind": "full_refusal", "score": 0.95, "reason": ""})]


def test_html_export_escapes_all_text() -> None:
    page = render(evil_rows(), "html", title="<script>title</script>")
    assert "<script" not in page.lower() and "<img" not in page.lower() and "<b>aligned" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "&lt;b&gt;aligned&lt;/b&gt;" in page
    assert "full_refusal" in page and "compliance" in page


def test_markdown_export_keeps_answers_verbatim_in_fences_that_cannot_be_closed() -> None:
    text = render(evil_rows(), "markdown")
    assert "````text\nSure " + EVIL + "\n```\nrm -rf /\n```\n````" in text  # longer fence than the answer's
    table_row = next(line for line in text.splitlines() if line.startswith("| 1 |"))
    assert "<script" not in table_row and "I can" not in table_row
    assert "&lt;b&gt;aligned&lt;/b&gt;" in table_row and "full_refusal" in table_row


def test_jsonl_export_round_trips(tmp_path: Path) -> None:
    path = write_export(evil_rows(), tmp_path / "out" / "cmp.jsonl")
    (line,) = path.read_text(encoding="utf-8").splitlines()
    assert ComparisonRow.from_dict(json.loads(line)) == evil_rows()[0]
    with pytest.raises(CompareError, match="Nothing to export"):
        write_export([], tmp_path / "x.md")
    with pytest.raises(CompareError, match="not one of"):
        write_export(evil_rows(), tmp_path / "x.pdf")


def test_cli_win_rates_and_errors(tmp_path: Path, capsys) -> None:
    assert main(["--win-rates", "--data-dir", str(tmp_path / "none")]) == 2
    assert "No label store" in capsys.readouterr().err
    store = LabelStore(tmp_path)
    pair, left = vote_pair([{"role": "user", "content": "q"}], "base", "b", "aligned", "a", SEEDED)
    record_vote(store, pair, left, "right", "ana")
    assert main(["--win-rates", "--data-dir", str(tmp_path)]) == 0
    assert "aligned | base | 1 | 0" in capsys.readouterr().out
    assert main(["--output", str(tmp_path / "x.pdf")]) == 2
    assert "not one of" in capsys.readouterr().err


def test_cli_runs_presets_with_an_adapter(tiny_model_dir, tmp_path: Path) -> None:
    adapter = make_adapter(tiny_model_dir, tmp_path / "run" / "adapter")
    out = tmp_path / "cmp.html"
    assert main(["--model", str(tiny_model_dir), "--adapter", str(adapter), "--kinds", "benign",
                 "--max-new-tokens", "8", "--output", str(out)]) == 0
    page = out.read_text(encoding="utf-8")
    assert page.count("<tr><td>") == sum(p.kind == "benign" for p in load_demo_prompts())
    assert "<b>run</b>" in page  # the adapter is named after its run folder
