"""Shared fixtures: tiny randomly initialised chat models (no downloads) and the embedded default model."""

from __future__ import annotations

import os

import pytest
import torch

from palette_lens.tiny import tiny_chat_model


@pytest.fixture(scope="session")
def tiny_qwen():
    """A 3-layer Qwen2-style chat model with a ChatML template (random weights)."""
    return tiny_chat_model("qwen2", seed=0)


@pytest.fixture(scope="session")
def tiny_llama():
    """A 3-layer Llama-style chat model with a Llama-3 template (random weights)."""
    return tiny_chat_model("llama", seed=1)


@pytest.fixture(scope="session")
def default_model():
    """The embedded default model (builds the float cache once: about a minute)."""
    if os.environ.get("PALETTE_LENS_SKIP_INTEGRATION"):
        pytest.skip("PALETTE_LENS_SKIP_INTEGRATION is set")
    from palette_lens.models import load_model

    torch.manual_seed(0)
    return load_model()


@pytest.fixture(scope="session")
def prompts():
    from palette_lens.data import load_prompts

    return load_prompts()
