"""Helpers shared by the tests: toy prompt sets, random adapters, toy directions, JSONL files.

Tests import them as ``from helpers import ...``: ``tests/`` has no ``__init__.py``, so pytest's default
(``prepend``) import mode puts it on ``sys.path`` when it loads ``tests/conftest.py``.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

from palette_lens.adapters.baked import BakedAdapter
from palette_lens.data.prompt_set import PromptSet
from palette_lens.data.records import Record
from palette_lens.models.residuals import collect_residuals
from palette_lens.search.direction import Direction, diff_in_means

# Words per domain that a tiny random model separates a little (the bake and pipeline tests).
TOPICS = {
    "cyber": "malware virus network password attack defend",
    "violence": "attack blood heart defend kill",
    "hate": "sorry cannot help AI assist",
    "harmless": "recipe pancakes poem sea wind morning light",
    "borderline": "kill process python program sort list",
}

# The leakage and domain-gate tests' domains (an ``illegal`` domain, no borderline).
LEAKAGE_TOPICS = {
    "cyber": "malware virus network password attack",
    "violence": "attack blood fight kill",
    "hate": "sorry cannot help assist",
    "illegal": "steal money cash police",
    "harmless": "recipe pancakes poem sea wind light",
}


def toy_records(topics: dict[str, str], n: int = 20, length: int | tuple[int, int] = (2, 5), seed: int = 0,
                numbered: bool = True) -> dict[str, list[Record]]:
    """``n`` prompts per domain of ``topics`` (domain → space-separated words): the domain name, then words drawn
    from its own list.

    Args:
        topics: domain → its words.
        n: prompts per domain.
        length: how many words a prompt draws: a fixed count, or (low, high) drawn per prompt (inclusive).
        seed: one ``random.Random(seed)`` draws every domain in order (length, then the words, per prompt).
        numbered: end each prompt with its index (keeps prompts distinct).
    """
    rng = random.Random(seed)
    out = {}
    for domain, words in topics.items():
        ws = words.split()
        recs = []
        for i in range(n):
            k = length if isinstance(length, int) else rng.randint(*length)
            text = f"{domain} " + " ".join(rng.choice(ws) for _ in range(k))
            recs.append(Record(f"{text} {i}" if numbered else text, domain))
        out[domain] = recs
    return out


def toy_prompts(topics: dict[str, str] = TOPICS, n: int = 20, length: int | tuple[int, int] = (2, 5),
                seed: int = 0, numbered: bool = True) -> PromptSet:
    """:func:`toy_records` as a :class:`PromptSet`."""
    return PromptSet(toy_records(topics, n, length, seed, numbered))


def toy_direction(model, prompts: PromptSet, layer: int = 2, domain: str = "cyber") -> Direction:
    """Difference of means (``domain`` minus harmless train prompts) at ``layer``, last position."""
    t = collect_residuals(model, prompts.part(domain, "train"), layers=[layer], positions=[-1], desc=None)
    h = collect_residuals(model, prompts.part("harmless", "train"), layers=[layer], positions=[-1], desc=None)
    r = diff_in_means(t.mean(), h.mean())[0, 0]
    return Direction(r, layer, -1, domain, model_fingerprint=model.fingerprint)


def random_adapter(model, layer_index: int = 1, seed: int = 0, domain: str = "cyber", *, scale: float = 0.2,
                   rank: int = 8, alpha: float = 16.0, meta: dict | None = None) -> BakedAdapter:
    """Random non-zero LoRA factors on every linear module of one block, with the metadata a bake writes.

    Args:
        model: the base :class:`ChatModel`.
        layer_index: the block (the adapter edits layer ``layer_index + 1``).
        seed: ``torch.Generator`` seed: the factors (A then B per module), then a random direction.
        domain: ``meta["domain"]``.
        scale: scale of the standard-normal factor entries (0.6 changes a tiny model's greedy tokens).
        rank, alpha: LoRA rank and alpha.
        meta: more metadata, on top of domain, base fingerprint and name, layer and position -1.
    """
    from palette_lens.models.tiny import random_lora_factors

    g = torch.Generator().manual_seed(seed)
    a, b = random_lora_factors(model, layer_index, g, rank=rank, scale=scale)
    assert a, "no linear modules found"
    full = {"domain": domain, "base_fingerprint": model.fingerprint, "base_model": model.name,
            "layer": layer_index + 1, "position": -1, **(meta or {})}
    return BakedAdapter(layer_index, a, b, rank=rank, alpha=alpha, meta=full,
                        direction=torch.randn(model.d_model, generator=g))


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    """One JSON object a line (UTF-8); returns ``path``."""
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path
