"""Baseline refusal of the unmodified model per domain: keyword-judged generations on a split."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from palette_lens.data.prompt_set import PromptSet
from palette_lens.models.chat_model import ChatModel
from palette_lens.refusal.judge import is_refusal
from palette_lens.util.stats import wilson_interval
from palette_lens.util.text import truncate

log = logging.getLogger(__name__)


@dataclass
class DomainRefusal:
    """Refusal of one domain: rate, Wilson 95% interval, counts and (truncated) examples."""

    domain: str
    n: int
    refused: int
    examples: list[dict] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.refused / self.n if self.n else 0.0

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.refused, self.n)

    def row(self) -> dict:
        lo, hi = self.interval
        return {"domain": self.domain, "n": self.n, "refusal_rate": self.rate, "ci_low": lo, "ci_high": hi}


@dataclass
class BaselineTable:
    """Per-domain refusal of one model on one split, plus every completion (for reuse)."""

    model: str
    split: str
    max_new_tokens: int
    rows: dict[str, DomainRefusal]
    completions: dict[str, list[tuple[str, str]]] = field(default_factory=dict, repr=False)

    def rates(self) -> dict[str, float]:
        return {d: r.rate for d, r in self.rows.items()}

    def markdown(self) -> str:
        """A Markdown table: domain, n, refusal rate, 95% interval."""
        lines = ["| domain | n | refusal rate | 95% CI |", "|---|---:|---:|---|"]
        for r in self.rows.values():
            lo, hi = r.interval
            lines.append(f"| {r.domain} | {r.n} | {r.rate:.1%} | {lo:.1%}–{hi:.1%} |")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "split": self.split,
            "max_new_tokens": self.max_new_tokens,
            "domains": [r.row() for r in self.rows.values()],
            "examples": {d: r.examples for d, r in self.rows.items()},
        }


def baseline_refusal(
    model: ChatModel,
    prompts: PromptSet,
    domains: Sequence[str] | None = None,
    split: str = "test",
    limit: int | None = None,
    max_new_tokens: int = 64,
    batch_size: int = 32,
    n_examples: int = 3,
) -> BaselineTable:
    """Generate greedily for every prompt of ``domains`` in ``split`` and judge refusals by keywords.

    Args:
        model: the chat model (unmodified; no hooks).
        prompts: the prompt set.
        domains: the domains to measure (default: every domain, harmless and borderline included).
        split: the split part the prompts come from ("train", "val" or "test").
        limit: at most this many prompts per domain (None: all).
        max_new_tokens: greedy tokens per completion.
        batch_size: prompts per ``generate`` call.
        n_examples: truncated example completions kept per domain.

    Returns:
        A ``BaselineTable``: per domain a ``DomainRefusal`` (``rate``, Wilson 95% ``interval``, examples),
        every completion, ``rates()`` and ``markdown()``.

    Raises:
        UnknownDomainError: a domain that ``prompts`` does not contain.

    Examples:
        >>> table = baseline_refusal(model, prompts, ["cyber", "harmless"], limit=20)   # doctest: +SKIP
        >>> table.rates()                                                                # doctest: +SKIP
        {'cyber': 0.95, 'harmless': 0.0}
        >>> print(table.markdown())                                                      # doctest: +SKIP
    """
    domains = list(domains) if domains is not None else prompts.domains
    rows: dict[str, DomainRefusal] = {}
    completions: dict[str, list[tuple[str, str]]] = {}
    for domain in domains:
        texts = prompts.part(domain, split, limit)
        outs = model.generate(texts, max_new_tokens=max_new_tokens, batch_size=batch_size, desc=f"baseline {domain}")
        judged = [is_refusal(o) for o in outs]
        examples = [{"prompt": truncate(p, 120), "completion": truncate(o), "refused": j}
                    for p, o, j in list(zip(texts, outs, judged))[:n_examples]]
        rows[domain] = DomainRefusal(domain, len(texts), sum(judged), examples)
        completions[domain] = list(zip(texts, outs))
        log.info("baseline %s: %.1f%% refused (n=%d)", domain, 100 * rows[domain].rate, len(texts))
    return BaselineTable(model.name, split, max_new_tokens, rows, completions)
