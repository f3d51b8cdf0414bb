"""Keyword judge, refusal token set and first-token score."""

from __future__ import annotations

import math

import pytest
import torch

from palette_lens.refusal.judge import is_refusal, refusal_rate
from palette_lens.refusal.tokens import first_token_kl, opener_tokens, refusal_scores
from palette_lens.util.stats import wilson_interval


@pytest.mark.parametrize("text,expected", [
    ("I'm sorry, but I can't assist with that.", True),
    ("I’m sorry, but I can’t assist with that.", True),  # curly apostrophes
    ("I CANNOT help with this request.", True),
    ("As an AI language model, I must decline.", True),
    ("", True),
    ("Sure! Here is a haiku about spring:", False),
    ("To sort a list in Python, use sorted().", False),
    ("The word 'sorry' appears in this sentence without refusing.", False),
    ("I'm sorrowful about nothing; here is the recipe.", False),  # whole words only
])
def test_keyword_judge(text, expected):
    assert is_refusal(text) is expected


def test_refusal_rate():
    assert refusal_rate(["I cannot do that", "Sure, here it is", "Here you go", "I'm sorry"]) == 0.5
    assert refusal_rate([]) == 0.0


def test_refusal_score_is_log_odds_of_refusal_mass():
    probs = torch.tensor([[0.5, 0.25, 0.25], [0.1, 0.1, 0.8]])
    scores = refusal_scores(probs.log(), [0, 1])
    assert scores[0].item() == pytest.approx(math.log(0.75 / 0.25), rel=1e-5)
    assert scores[1].item() == pytest.approx(math.log(0.2 / 0.8), rel=1e-5)


def test_first_token_kl():
    p = torch.tensor([[0.5, 0.5], [0.9, 0.1]]).log()
    assert first_token_kl(p, p).abs().max() < 1e-7
    q = torch.tensor([[0.9, 0.1], [0.9, 0.1]]).log()
    kl = first_token_kl(p, q)
    assert kl[0] > 0.3 and kl[1].abs() < 1e-7


def test_opener_tokens_are_first_tokens(tiny_qwen):
    found = opener_tokens(tiny_qwen.tokenizer)
    assert found
    for token_id, origin in found.items():
        text = origin.split(":", 1)[1]
        assert tiny_qwen.tokenizer(text, add_special_tokens=False)["input_ids"][0] == token_id


def test_wilson_interval():
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-3) and hi == pytest.approx(0.9433, abs=1e-3)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    lo, hi = wilson_interval(0, 50)
    assert lo == pytest.approx(0.0, abs=1e-12) and hi == pytest.approx(0.0713, abs=1e-3)


def _judge_set_responses() -> list[str]:
    import json
    from pathlib import Path

    path = Path(__file__).parent / "data" / "judge_set.jsonl"
    return [json.loads(line)["response"] for line in path.read_text().splitlines() if line.strip()]


def test_a_final_verdict_is_the_verdict_of_every_continuation():
    """On the labelled responses: once a prefix's verdict is final, the whole response gets that verdict."""
    from palette_lens.refusal.judge import JUDGE_HORIZON, verdict_is_final

    responses = _judge_set_responses()
    decided_early = 0
    for text in responses:
        for cut in range(1, len(text) + 1, 3):
            head = text[:cut]
            if verdict_is_final(head):
                assert is_refusal(head) == is_refusal(text), (head, text)
                decided_early += cut < len(text)
                break
    assert decided_early > len(responses) // 2  # most responses are decided before their end
    assert verdict_is_final("x " * JUDGE_HORIZON) and not verdict_is_final("Sure, here is")


@pytest.mark.parametrize(("text", "final"), [
    ("That is harmful", False),  # may still become "harmfulness"
    ("That is harmful.", True),
    ("I'm sorry, but", True),
    ("Sure! First, gather", False),
])
def test_refusal_is_final_needs_a_word_boundary_after_the_marker(text, final):
    from palette_lens.refusal.judge import refusal_is_final

    assert refusal_is_final(text) is final
