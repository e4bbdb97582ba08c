"""Memory planner: parts scale the right way, budgets parse, and a too-small budget yields a suggestion."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from transformers import LlamaConfig

from alignment.memory import MemoryBudgetError, estimate, parse_size, shape_of
from alignment.train_config import TrainConfig

GIB = 2**30


@pytest.fixture(scope="module")
def config_1b():
    # Shaped like a ~1.7B Llama chat model (SmolLM2-1.7B): planning needs only the config.
    return LlamaConfig(hidden_size=2048, intermediate_size=8192, num_hidden_layers=24, num_attention_heads=32,
                       num_key_value_heads=32, vocab_size=49152, tie_word_embeddings=True)


def base(**changes):
    values = dict(device="cuda", precision="fp16", max_length=512, per_device_train_batch_size=2,
                  gradient_accumulation_steps=8, lora_r=16, gradient_checkpointing=False, load_in_4bit=False)
    values.update(changes)
    return TrainConfig(**values)


def plan(config_1b, config, budget=400 * GIB):
    return estimate(config_1b, config, budget_bytes=budget, device="cuda")


@pytest.mark.parametrize("text, expected", [
    ("15GB", 15 * 10**9), ("15 GiB", 15 * GIB), ("800MB", 800 * 10**6), ("1.5g", int(1.5e9)), (2e9, 2 * 10**9),
])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["lots", "15XB", "-3GB", "0"])
def test_parse_size_rejects_nonsense(text):
    with pytest.raises(MemoryBudgetError, match="15GB"):
        parse_size(text)


def test_shape_counts_parameters_like_the_model(bundled_tokenizer):
    from tests.conftest import make_tiny_model

    model = make_tiny_model(bundled_tokenizer)
    from_model = shape_of(model)
    from_config = shape_of(model.config)
    assert from_config.total_params == pytest.approx(from_model.total_params, rel=0.01)


def test_longer_sequences_need_more_activations(config_1b):
    short = plan(config_1b, base(max_length=256)).parts["activations"]
    long = plan(config_1b, base(max_length=1024)).parts["activations"]
    assert long == pytest.approx(4 * short, rel=0.05)


def test_chosen_and_rejected_double_the_sequences(config_1b):
    one = plan(config_1b, base(per_device_train_batch_size=1)).parts["activations"]
    two = plan(config_1b, base(per_device_train_batch_size=2)).parts["activations"]
    assert two == pytest.approx(2 * one, rel=0.05)


def test_checkpointing_reduces_activations(config_1b):
    without = plan(config_1b, base(gradient_checkpointing=False)).parts["activations"]
    with_ckpt = plan(config_1b, base(gradient_checkpointing=True)).parts["activations"]
    assert with_ckpt < without / 3


def test_four_bit_reduces_weights(config_1b):
    half = plan(config_1b, base()).parts["weights"]
    four = plan(config_1b, base(load_in_4bit=True)).parts["weights"]
    assert four < half / 2.5


def test_lora_has_no_reference_copy_but_full_finetuning_does(config_1b):
    lora = plan(config_1b, base())
    full = plan(config_1b, base(lora_r=0))
    assert lora.parts["reference_forward"] < lora.parts["weights"] and "reference_weights" not in lora.parts
    assert full.parts["reference_weights"] == full.parts["weights"]
    assert full.parts["optimizer"] > 50 * lora.parts["optimizer"]


def test_small_budget_refuses_with_a_concrete_suggestion(config_1b):
    config = base(max_length=2048, per_device_train_batch_size=4)
    roomy = plan(config_1b, config)
    assert roomy.fits and roomy.suggestion is None
    tight = plan(config_1b, config, budget=int(roomy.total_bytes * 0.5))
    assert not tight.fits
    assert tight.suggestion and any(word in tight.suggestion for word in
                                    ("max_length", "per_device_train_batch_size", "gradient_checkpointing",
                                     "load_in_4bit"))
    # The suggested change must itself fit: apply the first alternative and re-plan.
    suggested = tight.suggestion.split(", or ")[0]
    changes = {}
    if "max_length" in suggested:
        changes["max_length"] = int(suggested.split("max_length ")[1].split()[0])
    if "per_device_train_batch_size" in suggested:
        changes["per_device_train_batch_size"] = int(suggested.split("per_device_train_batch_size ")[1].split()[0])
    if "gradient_checkpointing true" in suggested:
        changes["gradient_checkpointing"] = True
    if "load_in_4bit true" in suggested:
        changes["load_in_4bit"] = True
    assert plan(config_1b, replace(config, **changes), budget=tight.budget_bytes).fits


def test_impossible_budget_says_use_a_smaller_model(config_1b):
    result = plan(config_1b, base(), budget=100 * 2**20)
    assert not result.fits and "smaller model" in result.suggestion
    assert "4-bit" in result.suggestion and "reference batch" not in result.suggestion


def test_impossible_budget_names_only_what_was_tried_on_that_device(config_1b):
    # On a CPU there is no 4-bit; a precompute and a frozen-layer cache were shrunk and dropped instead.
    config = base(device="cpu", precision="fp32", precompute_reference=True, cache_frozen_layers=True,
                  lora_layers=12)
    message = estimate(config_1b, config, budget_bytes=100 * 2**20, device="cpu").suggestion
    assert "smaller model" in message and "4-bit" not in message
    assert "a reference batch of 1" in message and "no frozen-layer cache" in message


def test_cpu_budget_defaults_to_available_ram(config_1b):
    import psutil

    result = estimate(config_1b, base(device="cpu", precision="fp32"), device="cpu")
    assert 0 < result.budget_bytes <= psutil.virtual_memory().total


def test_top_layer_adapters_keep_fewer_activations(config_1b):
    every = plan(config_1b, base()).parts["activations"]
    top = plan(config_1b, base(lora_layers=6)).parts["activations"]
    assert top < every / 3  # 6 of 24 layers keep theirs (plus the embedding output and final norm)


def test_precomputed_reference_drops_the_reference_copy(config_1b):
    full = plan(config_1b, base(lora_r=0)).parts
    full_pre = plan(config_1b, base(lora_r=0, precompute_reference=True)).parts
    assert full["reference_weights"] == full["weights"] and "reference_weights" not in full_pre
    assert full_pre["reference_forward"] == 0
    assert plan(config_1b, base(precompute_reference=True)).parts["reference_forward"] == 0


def test_cuda_transients_share_memory_so_only_the_largest_counts(config_1b):
    result = plan(config_1b, base(gradient_checkpointing=True))
    assert result.shared == ("logits", "reference_forward", "layer_recompute")
    persistent = sum(size for name, size in result.parts.items() if name not in result.shared)
    assert result.total_bytes == persistent + max(result.parts[name] for name in result.shared)
    assert result.total_bytes < sum(result.parts.values())
    assert "largest" in result.describe() and "(shared)" in result.describe()


def test_cpu_plans_are_the_sum_of_their_parts(config_1b):
    result = estimate(config_1b, base(device="cpu", precision="fp32", gradient_checkpointing=True),
                      budget_bytes=400 * GIB, device="cpu")
    assert result.shared == () and result.total_bytes == sum(result.parts.values())


def test_logprob_head_works_in_tiles_so_long_batches_add_little(config_1b):
    # TRL projects at most 4096 tokens x 32768 vocabulary columns at a time; only the hidden-state copies grow.
    short = plan(config_1b, base(max_length=512, per_device_train_batch_size=4)).parts["logits"]
    long = plan(config_1b, base(max_length=2048, per_device_train_batch_size=4)).parts["logits"]
    assert short < long < 2 * short  # four times the tokens


def test_t4_recipe_fits_a_qwen_shaped_1_5b_model_in_15gb():
    # Measured on a GPU (benchmarks/bench_gpu_memory.py): t4-qlora on this shape peaks near 3 GiB; the planner
    # once refused it at 24 GiB by charging the whole (tokens x 152k vocabulary) logits eight times over.
    from transformers import Qwen2Config

    from alignment.train_config import load_train_config

    qwen = Qwen2Config(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                       num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True)
    recipe = load_train_config(str(Path(__file__).resolve().parents[1] / "recipes" / "t4-qlora.yaml"), [])
    result = estimate(qwen, recipe, budget_bytes=parse_size("15GB"), device="cuda")
    assert result.fits and result.total_bytes < 6 * GIB


def test_retain_loss_adds_its_batch_of_activations(config_1b):
    without = plan(config_1b, base())
    retained = plan(config_1b, base(retain_weight=1.0, retain_prompts="retain.jsonl", retain_batch_size=2))
    assert "retain_activations" not in without.parts
    # Two retain prompts of at most max_length tokens: about half the activations of 2 pairs (4 sequences).
    ratio = retained.parts["retain_activations"] / without.parts["activations"]
    assert 0.45 < ratio <= 0.5
    assert retained.total_bytes > without.total_bytes


def test_frozen_layer_cache_counts_a_hidden_state_per_token_of_the_data_on_cpu(config_1b):
    cached = base(device="cpu", precision="fp32", precompute_reference=True, lora_layers=6, cache_frozen_layers=True)
    tokens = 700 * 2 * 300  # 700 pairs, chosen and rejected, 300 tokens each
    result = estimate(config_1b, cached, budget_bytes=400 * GIB, device="cpu", dataset_tokens=tokens)
    assert result.parts["frozen_layer_cache"] == tokens * 2048 * 4  # one float32 hidden state per token
    plain = estimate(config_1b, replace(cached, cache_frozen_layers=False), budget_bytes=400 * GIB, device="cpu",
                     dataset_tokens=tokens)
    assert "frozen_layer_cache" not in plain.parts
    assert result.total_bytes - plain.total_bytes >= tokens * 2048 * 4
    # On CUDA the cache lives in host RAM: the GPU plan does not carry it.
    gpu = estimate(config_1b, replace(cached, device="cuda", precision="fp16"), budget_bytes=400 * GIB,
                   device="cuda", dataset_tokens=tokens)
    assert "frozen_layer_cache" not in gpu.parts


def test_a_cache_too_big_for_the_budget_is_answered_by_turning_it_off(config_1b):
    cached = base(device="cpu", precision="fp32", precompute_reference=True, lora_layers=6, cache_frozen_layers=True)
    tokens = 20_000 * 2 * 500  # a large dataset: the cache alone is about 160 GB
    without = estimate(config_1b, replace(cached, cache_frozen_layers=False), budget_bytes=400 * GIB, device="cpu",
                       dataset_tokens=tokens)
    result = estimate(config_1b, cached, budget_bytes=without.total_bytes + GIB, device="cpu", dataset_tokens=tokens)
    assert not result.fits
    assert "cache_frozen_layers false" in result.suggestion


def test_pair_token_counts_cut_at_max_length_and_scale_to_all_rows(bundled_tokenizer):
    from alignment.train import pair_token_counts

    rows = [{"prompt": "Say hello.", "chosen": " Hello there, friend." * 10, "rejected": " No." * 40}] * 6
    longest, total = pair_token_counts(rows, bundled_tokenizer)
    assert longest > 40 and total > 6 * longest
    _, capped = pair_token_counts(rows, bundled_tokenizer, max_length=10)
    assert capped == 6 * 2 * 10
    _, scaled = pair_token_counts(rows, bundled_tokenizer, limit=3)
    assert scaled == total


def test_the_command_plans_for_a_dataset_and_says_when_it_cannot_read_one(capsys):
    from alignment.memory import main

    repo = Path(__file__).resolve().parents[1]
    recipe, pairs = str(repo / "recipes" / "cpu-lora.yaml"), str(repo / "benchmarks" / "data" / "safety_prefs.jsonl")
    assert main(["--config", recipe, "--dataset", pairs, "--memory-budget", "100GB", "--device", "cpu"]) == 0
    assert "frozen_layer_cache" in capsys.readouterr().out  # the recipe caches the frozen layers
    assert main(["--config", recipe, "--dataset", "no-such-file.jsonl", "--memory-budget", "100GB"]) == 2
    assert "no-such-file.jsonl does not exist" in capsys.readouterr().err


def test_the_reference_precompute_is_a_phase_of_its_own_and_can_be_the_peak(config_1b):
    def phases(result):
        parts = result.parts
        before = sum(parts.get(name, 0) for name in ("weights", "lora_params", "reference_precompute", "overhead"))
        return before, sum(size for name, size in parts.items() if name != "reference_precompute")

    # Batch 1, adapters in the top 4 layers: a training step is small, the precompute's batches of 8 pairs are not.
    small = base(device="cpu", precision="fp32", per_device_train_batch_size=1, lora_layers=4,
                 precompute_reference=True)
    result = estimate(config_1b, small, budget_bytes=400 * GIB, device="cpu")
    before, step = phases(result)
    assert before > step and result.total_bytes == before
    assert "before training" in result.describe()
    # A train batch of 8 reads the precompute in the same batches, and its training step is now the peak.
    big = estimate(config_1b, replace(small, per_device_train_batch_size=8), budget_bytes=400 * GIB, device="cpu")
    assert big.parts["reference_precompute"] == result.parts["reference_precompute"]
    before, step = phases(big)
    assert step > before and big.total_bytes == step
    assert "reference_precompute" not in estimate(config_1b, replace(small, precompute_reference=False),
                                                  budget_bytes=400 * GIB, device="cpu").parts


def test_a_precompute_that_does_not_fit_is_answered_by_a_smaller_reference_batch(config_1b):
    small = base(device="cpu", precision="fp32", per_device_train_batch_size=1, lora_layers=4,
                 precompute_reference=True)
    plain = estimate(config_1b, small, budget_bytes=400 * GIB, device="cpu")
    step = sum(size for name, size in plain.parts.items() if name != "reference_precompute")
    assert plain.total_bytes > step  # the precompute's batches of 8 pairs are the peak
    result = estimate(config_1b, small, budget_bytes=step + GIB // 4, device="cpu")
    assert not result.fits and "set reference_batch_size" in result.suggestion
    fewer = replace(small, reference_batch_size=int(result.suggestion.split("reference_batch_size ")[1].split()[0]))
    assert fewer.precompute_batch_size < 8
    assert estimate(config_1b, fewer, budget_bytes=step + GIB // 4, device="cpu").fits
