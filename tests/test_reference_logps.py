"""The length-sorted reference precompute gives TRL's own reference log-probs, in dataset order."""

from __future__ import annotations

import os

import torch

from alignment.reference_logps import length_batches, sorted_reference_trainer_class
from alignment.train_config import TrainConfig

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def test_batches_group_similar_lengths_and_cover_every_pair_once():
    lengths = [30, 5, 18, 5, 40, 12, 29]
    batches = length_batches(lengths, 3)
    assert batches == [[1, 3, 5], [2, 6, 0], [4]]
    assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))


def varied_pairs(count: int) -> list[dict]:
    rows = []
    for i in range(count):
        words = " ".join(["very"] * (i * 7 % 19))  # prompts and answers of many lengths, not in length order
        rows.append({"prompt": [{"role": "user", "content": f"Question {i}: is this {words} long?"}],
                     "chosen": [{"role": "assistant", "content": f"Answer {i}. " + "Yes, " * (i % 5)}],
                     "rejected": [{"role": "assistant", "content": "No." + " Really." * (i * 3 % 11)}]})
    return rows


def reference_columns(trainer_class, model_dir, tokenizer, dataset, tmp_path):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM

    config = TrainConfig(model=str(model_dir), output_dir=str(tmp_path), device="cpu", precompute_reference=True,
                         per_device_train_batch_size=4, max_length=160, lora_r=4, lora_alpha=8, eval_split=0.0)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    trainer = trainer_class(model=model, args=config.to_dpo_config("cpu"), train_dataset=Dataset.from_list(dataset),
                            processing_class=tokenizer, peft_config=config.peft_config())
    columns = trainer.train_dataset
    return torch.tensor(columns["ref_chosen_logps"]), torch.tensor(columns["ref_rejected_logps"])


def test_sorted_precompute_matches_trls(tiny_model_dir, bundled_tokenizer, tmp_path):
    from trl import DPOTrainer

    dataset = varied_pairs(21)  # not a multiple of the batch size: a short last batch
    expected = reference_columns(DPOTrainer, tiny_model_dir, bundled_tokenizer, dataset, tmp_path / "trl")
    got = reference_columns(sorted_reference_trainer_class(DPOTrainer), tiny_model_dir, bundled_tokenizer, dataset,
                            tmp_path / "sorted")
    for ours, theirs in zip(got, expected, strict=True):
        assert ours.shape == (21,) and bool((theirs < 0).all())
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-4)
    # The pairs differ, so a result put back in the wrong order would not match.
    assert len(set(expected[1].round(decimals=2).tolist())) > 10
