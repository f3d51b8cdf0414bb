"""The profile chat widget, driven programmatically on a tiny model (checkboxes, text box, button)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("ipywidgets")

from helpers import random_adapter

from palette_lens.viz.widgets import ChatTurn, ProfileChat


@pytest.fixture(scope="module")
def chat(tiny_qwen):
    # large factors: they change the tiny model's greedy tokens
    adapters = {"cyber": random_adapter(tiny_qwen, 0, 1, "cyber", scale=0.6),
                "hate": random_adapter(tiny_qwen, 1, 2, "hate", scale=0.6)}
    return ProfileChat(tiny_qwen, adapters, max_new_tokens=8)


def test_clicking_with_nothing_checked_shows_vanilla_twice(chat):
    for box in chat.checkboxes.values():
        box.value = False
    chat.prompt.value = ""
    chat.button.click()
    assert chat.last is None and "type a prompt" in chat.status.value
    chat.prompt.value = "malware virus attack <b>now</b>"
    chat.button.click()
    turn = chat.last
    assert isinstance(turn, ChatTurn) and turn.authorized == ()
    assert turn.profile == turn.vanilla and turn.vanilla.text
    assert 0.0 <= turn.vanilla.p_refusal <= 1.0
    assert "Vanilla model" in chat.vanilla_pane.value and "nothing authorized" in chat.profile_pane.value
    assert "<b>now</b>" not in turn.to_html() and "&lt;b&gt;now&lt;/b&gt;" in turn.to_html()  # escaped
    assert not chat.button.disabled


def test_checking_a_domain_changes_the_profile_answer(chat, tiny_qwen):
    before = {n: p.detach().clone() for n, p in tiny_qwen.hf_model.named_parameters()}
    chat.prompt.value = "network password attack"
    for box in chat.checkboxes.values():
        box.value = False
    chat.button.click()
    vanilla_turn = chat.last
    chat.checkboxes["cyber"].value = True
    chat.button.click()
    turn = chat.last
    assert turn.authorized == ("cyber",)
    assert turn.vanilla == vanilla_turn.vanilla  # the vanilla answer is cached, not regenerated
    assert turn.profile != turn.vanilla  # the adapter changed the answer (text and/or refusal mass)
    assert turn.profile.text != turn.vanilla.text
    assert "Profile: cyber" in chat.profile_pane.value
    assert chat.profile_pane.value != chat.vanilla_pane.value
    assert "network password attack" in chat.status.value  # the status names the prompt just answered
    assert "palette-lens-chat-profile" in chat.profile_pane._dom_classes  # a page can find the panes
    chat.checkboxes["hate"].value = True
    chat.button.click()
    both = chat.last
    assert both.authorized == ("cyber", "hate") and both.profile != turn.profile
    assert set(chat._merged) == {("cyber",), ("cyber", "hate")}  # one merged copy per profile
    for n, p in tiny_qwen.hf_model.named_parameters():  # the base model is never modified
        assert torch.equal(p, before[n])


def test_programmatic_answer_and_errors(chat, tiny_qwen, tiny_llama):
    turn = chat.answer("recipe pancakes poem", ["hate"])
    assert turn.authorized == ("hate",)
    assert chat.answer("recipe pancakes poem", ["hate"]) == turn  # cached
    with pytest.raises(ValueError, match="no adapter for bio"):
        ProfileChat(tiny_qwen, chat.adapters, authorized=["bio"])
    with pytest.raises(ValueError, match="at least one"):
        ProfileChat(tiny_qwen, {})
    from palette_lens.errors import AdapterMismatchError

    with pytest.raises(AdapterMismatchError):
        ProfileChat(tiny_llama, chat.adapters)
