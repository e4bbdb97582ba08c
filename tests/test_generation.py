"""Batched and streamed generation on a tiny random model: shapes, order, seeds, stopping and cancelling."""

import pytest

from alignment.generation import GenerationCancelled, SamplingSettings, generate, stream_chat
from alignment.settings import SettingsError

CHATS = [
    [{"role": "user", "content": "hi"}],
    [{"role": "user", "content": "Please create a task to review the quarterly budget with the finance team."}],
    [{"role": "user", "content": "Schedule standup"}],
]


def test_n_responses_per_chat_with_token_counts(tiny_loaded):
    settings = SamplingSettings(max_new_tokens=12, seed=3)
    out = generate(tiny_loaded, CHATS, settings, n=2, batch_size=2)
    assert [len(gens) for gens in out] == [2, 2, 2]
    for gens in out:
        for gen in gens:
            assert 1 <= gen.tokens <= 12
            assert gen.finished or gen.tokens == 12


def test_same_seed_same_text_and_order_independent_of_batching(tiny_loaded):
    settings = SamplingSettings(max_new_tokens=10, do_sample=False)
    together = generate(tiny_loaded, CHATS, settings, batch_size=8)
    alone = [generate(tiny_loaded, [chat], settings)[0] for chat in CHATS]
    assert [g[0].text for g in together] == [g[0].text for g in alone]
    sampled = SamplingSettings(max_new_tokens=10, seed=7)
    assert [g[0].text for g in generate(tiny_loaded, CHATS, sampled)] == \
        [g[0].text for g in generate(tiny_loaded, CHATS, sampled)]


def test_progress_and_cancel_between_batches(tiny_loaded):
    seen = []
    generate(tiny_loaded, CHATS, SamplingSettings(max_new_tokens=4, seed=1), batch_size=1,
             on_progress=lambda done, total: seen.append((done, total)))
    assert seen == [(1, 3), (2, 3), (3, 3)]
    calls = iter([False, True])
    with pytest.raises(GenerationCancelled) as info:
        generate(tiny_loaded, CHATS, SamplingSettings(max_new_tokens=4, seed=1), batch_size=1,
                 should_stop=lambda: next(calls))
    assert info.value.done == 1 and len(info.value.partial) == 1


def test_greedy_with_several_responses_is_refused(tiny_loaded):
    with pytest.raises(SettingsError, match="sampling"):
        generate(tiny_loaded, CHATS, SamplingSettings(do_sample=False), n=2)


def test_stream_matches_batched_greedy_text(tiny_loaded):
    settings = SamplingSettings(max_new_tokens=10, do_sample=False)
    pieces = list(stream_chat(tiny_loaded, CHATS[1], settings))
    assert pieces, "streaming yielded nothing"
    assert all(len(a) <= len(b) for a, b in zip(pieces, pieces[1:], strict=False))
    assert pieces[-1] == generate(tiny_loaded, [CHATS[1]], settings)[0][0].text


@pytest.mark.parametrize("bad", [{"max_new_tokens": 0}, {"temperature": 0}, {"top_p": 1.5}])
def test_sampling_settings_validation(bad):
    with pytest.raises(SettingsError):
        SamplingSettings(**bad)
