"""Pair generation jobs on a tiny random model and the real label store: counts, resume, cancel, settings."""

from __future__ import annotations

import io
import os

import pytest

from alignment.generation import SamplingSettings, generate
from alignment.settings import SettingsError
from labeling.pairs import (
    STRATEGIES,
    WRITTEN_MODEL_NAME,
    Adapter,
    PairJobError,
    SystemPrompt,
    TextProgress,
    TwoSamples,
    Written,
    add_system_prompt,
    main,
    make_strategy,
    run_pair_job,
)
from labeling.records import PromptRecord, as_messages
from labeling.store import LabelStore

TOKENS = 6


def prompts(n: int, reference: bool = False) -> list[PromptRecord]:
    return [PromptRecord(messages=as_messages(f"Create task number {i}: {'water plants ' * (i % 3)}"),
                         category="task_create", intended_label="benign", source="test",
                         reference=f"Task {i} created." if reference else None) for i in range(n)]


@pytest.fixture
def store(tmp_path):
    return LabelStore(tmp_path / "data")


def test_registry_names_all_four_strategies():
    assert set(STRATEGIES) == {"two_samples", "system_prompt", "adapter", "written"}


def test_two_samples_equal_settings_stores_one_pair_per_prompt(tiny_loaded, store):
    strategy = TwoSamples(max_new_tokens=TOKENS, temperature_a=0.9, temperature_b=0.9, seed=11)
    result = run_pair_job(tiny_loaded, prompts(5), strategy, store, batch_size=2)
    assert (result.created, result.skipped, result.cancelled) == (5, 0, False)
    pairs = store.list_pairs()
    assert len(pairs) == 5
    assert {p.prompt_text for p in pairs} == {p.text for p in prompts(5)}
    assert 0 < result.tokens <= 5 * 2 * TOKENS
    pair = pairs[0]
    assert pair.strategy == "two_samples" and pair.model_a == pair.model_b == tiny_loaded.name
    assert pair.settings["a"]["temperature"] == pair.settings["b"]["temperature"] == 0.9
    assert pair.settings["a"]["max_new_tokens"] == TOKENS
    assert pair.seed is not None and pair.settings["job_seed"] == 11
    assert pair.category == "task_create" and pair.intended_label == "benign" and pair.source == "test"


def test_two_samples_different_temperatures_are_recorded_per_side(tiny_loaded, store):
    strategy = TwoSamples(max_new_tokens=TOKENS, seed=3)
    result = run_pair_job(tiny_loaded, prompts(3), strategy, store, batch_size=8)
    assert result.created == 3
    pair = store.list_pairs()[0]
    assert (pair.settings["a"]["temperature"], pair.settings["b"]["temperature"]) == (0.7, 1.1)
    assert pair.settings["strategy"]["temperature_b"] == 1.1


def test_same_seed_reproduces_the_same_responses(tiny_loaded, tmp_path):
    outputs = []
    for run in range(2):
        store = LabelStore(tmp_path / f"run{run}")
        run_pair_job(tiny_loaded, prompts(4), TwoSamples(max_new_tokens=TOKENS, seed=5), store, batch_size=2)
        outputs.append(sorted((p.prompt_text, p.response_a, p.response_b, p.seed) for p in store.list_pairs()))
    assert outputs[0] == outputs[1]


def test_resume_skips_prompts_already_paired(tiny_loaded, store):
    strategy = TwoSamples(max_new_tokens=TOKENS, seed=1)
    run_pair_job(tiny_loaded, prompts(3), strategy, store, batch_size=2)
    result = run_pair_job(tiny_loaded, prompts(5), strategy, store, batch_size=2)
    assert (result.created, result.skipped) == (2, 3)
    assert result.skipped_reasons == {"already paired": 3}
    assert store.count_pairs() == 5
    # another strategy on the same prompts is not "already paired"
    other = run_pair_job(tiny_loaded, prompts(2), SystemPrompt(max_new_tokens=TOKENS, seed=1), store)
    assert other.created == 2


def test_prompts_repeated_in_the_input_are_paired_once(tiny_loaded, store):
    result = run_pair_job(tiny_loaded, prompts(2) + prompts(2), TwoSamples(max_new_tokens=TOKENS), store)
    assert (result.created, result.skipped) == (2, 2)
    assert result.skipped_reasons == {"repeated in the input": 2}


def test_cancel_between_batches_keeps_finished_pairs_and_resume_finishes(tiny_loaded, store):
    calls = []

    def stop_after_two_batches() -> bool:
        return len(calls) >= 3  # progress is reported once at start and after every batch

    result = run_pair_job(tiny_loaded, prompts(7), TwoSamples(max_new_tokens=TOKENS, seed=2), store,
                          batch_size=2, on_progress=lambda d, t: calls.append((d, t)),
                          should_stop=stop_after_two_batches)
    assert result.cancelled and result.created == 4
    assert store.count_pairs() == 4
    assert calls == [(0, 7), (2, 7), (4, 7)]
    assert "run again" in result.message
    rest = run_pair_job(tiny_loaded, prompts(7), TwoSamples(max_new_tokens=TOKENS, seed=2), store, batch_size=2)
    assert (rest.created, rest.skipped, rest.cancelled) == (3, 4, False)
    assert store.count_pairs() == 7


def test_progress_reaches_total(tiny_loaded, store):
    calls = []
    run_pair_job(tiny_loaded, prompts(5), Written(max_new_tokens=TOKENS), store, batch_size=2,
                 on_progress=lambda d, t: calls.append((d, t)))
    # written needs references; none here, so nothing to do
    assert calls == [(0, 0)]
    calls.clear()
    run_pair_job(tiny_loaded, prompts(5, reference=True), Written(max_new_tokens=TOKENS), store, batch_size=2,
                 on_progress=lambda d, t: calls.append((d, t)))
    assert calls == [(0, 5), (2, 5), (4, 5), (5, 5)]


def test_system_prompt_side_a_really_gets_the_safety_prompt(tiny_loaded, store):
    strategy = SystemPrompt(max_new_tokens=TOKENS, do_sample=False, system_prompt="Be safe and kind.")
    items = prompts(3)
    run_pair_job(tiny_loaded, items, strategy, store, batch_size=3)
    greedy = SamplingSettings(max_new_tokens=TOKENS, do_sample=False)
    expected_a = generate(tiny_loaded, [add_system_prompt(p.messages, "Be safe and kind.") for p in items], greedy)
    expected_b = generate(tiny_loaded, [p.messages for p in items], greedy)
    by_text = {p.prompt_text: p for p in store.list_pairs()}
    for item, a, b in zip(items, expected_a, expected_b, strict=True):
        pair = by_text[item.text]
        assert (pair.response_a, pair.response_b) == (a[0].text, b[0].text)
        assert pair.settings["a"]["system_prompt"] == "Be safe and kind."
        assert pair.settings["b"]["system_prompt"] is None
        assert pair.prompt == item.messages  # the stored prompt has no system prompt added


def test_add_system_prompt_merges_with_an_existing_system_message():
    merged = add_system_prompt([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
                               "Be safe.")
    assert merged == [{"role": "system", "content": "Be safe.\n\nBe brief."}, {"role": "user", "content": "hi"}]
    assert add_system_prompt([{"role": "user", "content": "hi"}], "Be safe.")[0] == {"role": "system",
                                                                                    "content": "Be safe."}


def test_written_pairs_model_answer_with_reference_and_skips_prompts_without(tiny_loaded, store):
    items = prompts(3, reference=True) + [PromptRecord(messages=as_messages("No reference here"))]
    result = run_pair_job(tiny_loaded, items, Written(max_new_tokens=TOKENS, seed=4), store)
    assert (result.created, result.skipped) == (3, 1)
    assert result.skipped_reasons == {"no written reference answer": 1}
    for pair in store.list_pairs():
        assert pair.response_b == f"Task {pair.prompt_text.split()[3].rstrip(':')} created."
        assert pair.model_b == WRITTEN_MODEL_NAME and pair.settings["b"] == {"source": "reference"}


@pytest.fixture
def peft_loaded(bundled_tokenizer):
    from peft import LoraConfig, get_peft_model

    from alignment.models import LoadedModel
    from tests.conftest import make_tiny_model

    base = make_tiny_model(bundled_tokenizer, seed=7)
    config = LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    model = get_peft_model(base, config, adapter_name="aligned").eval()
    return LoadedModel(name="tiny-base", model=model, tokenizer=bundled_tokenizer, device="cpu", dtype="float32",
                       quantized_4bit=False, source="test", load_seconds=0.0)


def test_adapter_strategy_generates_base_and_adapter_sides(peft_loaded, bundled_tokenizer, store):
    from types import SimpleNamespace

    from tests.conftest import make_tiny_model

    items = prompts(4)
    strategy = Adapter(max_new_tokens=TOKENS, do_sample=False, adapter_name="aligned")
    result = run_pair_job(peft_loaded, items, strategy, store, batch_size=4)
    assert result.created == 4
    greedy = SamplingSettings(max_new_tokens=TOKENS, do_sample=False)
    plain = SimpleNamespace(model=make_tiny_model(bundled_tokenizer, seed=7), tokenizer=bundled_tokenizer)
    base_answers = generate(plain, [p.messages for p in items], greedy)
    adapter_answers = generate(peft_loaded, [p.messages for p in items], greedy)
    by_text = {p.prompt_text: p for p in store.list_pairs()}
    for item, base, tuned in zip(items, base_answers, adapter_answers, strict=True):
        pair = by_text[item.text]
        assert pair.response_a == base[0].text  # adapter disabled = the plain base model
        assert pair.response_b == tuned[0].text
    assert any(p.response_a != p.response_b for p in by_text.values())
    pair = next(iter(by_text.values()))
    assert (pair.model_a, pair.model_b) == ("tiny-base", "tiny-base + aligned")
    assert pair.settings["b"]["adapter"] == "aligned" and pair.settings["a"]["adapter"] is None
    # adapter_answers were generated after the job and match side B, so the adapter was switched back on
    assert peft_loaded.model.active_adapter == "aligned"
    # resume is keyed on the adapter side's name
    again = run_pair_job(peft_loaded, items, strategy, store, batch_size=4)
    assert (again.created, again.skipped) == (0, 4)


def test_adapter_strategy_refuses_a_model_without_that_adapter(tiny_loaded, peft_loaded, store):
    with pytest.raises(PairJobError, match="peft model"):
        run_pair_job(tiny_loaded, prompts(1), Adapter(max_new_tokens=TOKENS), store)
    with pytest.raises(PairJobError, match="aligned"):
        run_pair_job(peft_loaded, prompts(1), Adapter(max_new_tokens=TOKENS, adapter_name="other"), store)
    assert store.count_pairs() == 0


def test_strategy_settings_are_validated_with_clear_messages():
    with pytest.raises(SettingsError, match="greedy"):
        TwoSamples(do_sample=False)
    with pytest.raises(SettingsError, match="temperature_b"):
        TwoSamples(temperature_b=0)
    with pytest.raises(SettingsError, match="system_prompt is empty"):
        SystemPrompt(system_prompt="  ")
    with pytest.raises(SettingsError, match="use one of"):
        make_strategy("best_of_n")
    with pytest.raises(SettingsError, match="unknown setting"):
        make_strategy("written", {"temprature": 1})
    strategy = make_strategy("two_samples", {"temperature_b": "1.3", "seed": "9"})
    assert (strategy.temperature_b, strategy.seed) == (1.3, 9)


def test_batch_size_must_be_positive(tiny_loaded, store):
    with pytest.raises(SettingsError, match="batch_size"):
        run_pair_job(tiny_loaded, prompts(1), TwoSamples(max_new_tokens=TOKENS), store, batch_size=0)


def test_text_progress_shows_count_elapsed_and_time_left():
    stream = io.StringIO()
    bar = TextProgress(stream, width=10)
    bar(0, 4)
    bar(2, 4)
    bar(4, 4)
    text = stream.getvalue()
    assert "0/4 prompts" in text and "left ?" in text
    assert "[#####.....] 2/4" in text and "elapsed 0:0" in text
    assert text.endswith("\n") and "[##########] 4/4" in text


def test_cli_generates_pairs_into_the_data_dir(tiny_model_dir, tmp_path, capsys):
    prompt_file = tmp_path / "p.txt"
    prompt_file.write_text("Plan my week\nBook a dentist appointment\n", encoding="utf-8")
    data = tmp_path / "data"
    code = main(["--data-dir", str(data), "--model", str(tiny_model_dir), "--device", "cpu",
                 "--file", str(prompt_file), "--set", "risky_benign", "--limit", "2",
                 "--strategy", "two_samples", "--max-new-tokens", "4", "--seed", "3"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "4/4 prompts" in captured.err and "elapsed" in captured.err
    assert "4 new pairs" in captured.out
    pairs = LabelStore(data).list_pairs()
    assert len(pairs) == 4 and {p.source for p in pairs} == {"upload:p.txt", "builtin:risky_benign"}


def test_cli_adapter_strategy_loads_a_saved_adapter(tiny_model_dir, bundled_tokenizer, tmp_path, capsys):
    from peft import LoraConfig, get_peft_model

    from tests.conftest import make_tiny_model

    adapter_dir = tmp_path / "adapter"
    config = LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(make_tiny_model(bundled_tokenizer), config).save_pretrained(adapter_dir)
    data = tmp_path / "data"
    code = main(["--data-dir", str(data), "--model", str(tiny_model_dir), "--device", "cpu", "--set", "benign",
                 "--limit", "2", "--strategy", "adapter", "--adapter", str(adapter_dir), "--max-new-tokens", "4"])
    assert code == 0, capsys.readouterr().err
    pairs = LabelStore(data).list_pairs()
    assert len(pairs) == 2
    assert all(p.model_b == f"{p.model_a} + {adapter_dir}" for p in pairs)


def test_cli_errors_are_clear_and_nonzero(tiny_model_dir, tmp_path, capsys):
    code = main(["--data-dir", str(tmp_path), "--model", str(tiny_model_dir), "--strategy", "written"])
    assert code == 2 and "No prompts chosen" in capsys.readouterr().err
    code = main(["--data-dir", str(tmp_path), "--model", str(tiny_model_dir), "--set", "nope"])
    assert code == 2 and "Available sets" in capsys.readouterr().err
    code = main(["--data-dir", str(tmp_path), "--model", str(tiny_model_dir), "--set", "benign",
                 "--option", "temperature=0"])
    assert code == 2 and "temperature" in capsys.readouterr().err
    code = main(["--data-dir", str(tmp_path), "--set", "benign", "--strategy", "adapter"])
    assert code == 2 and "--adapter" in capsys.readouterr().err


@pytest.mark.slow
def test_bundled_model_generates_real_pairs(tmp_path):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from alignment.models import LoadSettings, load_model
    from labeling.prompt_sets import load_set

    loaded = load_model(LoadSettings(model="bundled", device="cpu"))
    items = load_set("benign", limit=1) + load_set("harmful", limit=1)
    store = LabelStore(tmp_path)
    result = run_pair_job(loaded, items, SystemPrompt(max_new_tokens=16, seed=0), store, batch_size=2)
    assert result.created == 2 and result.tokens > 0
    pairs = store.list_pairs()
    assert all(p.response_a.strip() and p.response_b.strip() for p in pairs)
    assert all(p.model_a == loaded.name for p in pairs)
