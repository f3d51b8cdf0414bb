"""What an evaluation is run on and what it returns: :class:`EvalSet` and :class:`VariantResult`.

A variant's result holds, per domain, the prompts, greedy completions and first-token refusal scores; the
refusal rates (keyword judge, Wilson 95% intervals), the answered/authorized classification (F1) and the
summaries the report and ``metrics.json`` use are computed from them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from palette_lens.data.prompt_set import PromptSet
from palette_lens.data.records import BORDERLINE, HARMLESS, RESERVED
from palette_lens.evaluate.vanilla import BaselineTable, DomainRefusal
from palette_lens.refusal.judge import is_refusal
from palette_lens.util.stats import wilson_interval
from palette_lens.util.text import truncate


# ---------------------------------------------------------------------- the evaluated prompts
@dataclass(frozen=True)
class EvalSet:
    """The prompts an evaluation uses: domain → prompts (harmful domains, ``harmless``, ``borderline``).

    Attributes:
        prompts: domain → prompts, harmful domains first.
        split: the split they come from ("test").

    :meth:`build` takes them from a :class:`PromptSet`; ``flat()`` gives all prompts and their domains.

    Examples:
        >>> from palette_lens.data.prompts import load_prompts
        >>> es = EvalSet.build(load_prompts(), ["cyber"], limit=4)   # harmless: twice the limit
        >>> es.domains, len(es)
        (['cyber', 'harmless', 'borderline'], 16)
    """

    prompts: dict[str, tuple[str, ...]]
    split: str = "test"

    @classmethod
    def build(
        cls,
        prompt_set: PromptSet,
        domains: Sequence[str] | None = None,
        split: str = "test",
        limit: int | None = None,
        harmless_limit: int | None = None,
        borderline_limit: int | None = None,
    ) -> EvalSet:
        """Take ``split`` prompts of ``domains`` (default: every harmful domain) plus harmless and borderline.

        Args:
            limit: at most this many prompts per harmful domain (None: all).
            harmless_limit: the same for ``harmless`` (None: twice ``limit``; all when ``limit`` is None too).
            borderline_limit: the same for ``borderline`` (None: ``limit``).
        """
        domains = list(domains) if domains is not None else prompt_set.harmful_domains
        out: dict[str, tuple[str, ...]] = {}
        for d in domains:
            if d in RESERVED:
                continue
            out[d] = tuple(prompt_set.part(d, split, limit))
        if harmless_limit is None and limit is not None:
            harmless_limit = 2 * limit
        if borderline_limit is None:
            borderline_limit = limit
        out[HARMLESS] = tuple(prompt_set.part(HARMLESS, split, harmless_limit))
        if BORDERLINE in prompt_set.by_domain:
            out[BORDERLINE] = tuple(prompt_set.part(BORDERLINE, split, borderline_limit))
        return cls(out, split)

    @property
    def domains(self) -> list[str]:
        return list(self.prompts)

    @property
    def harmful_domains(self) -> list[str]:
        return [d for d in self.prompts if d not in RESERVED]

    def flat(self) -> tuple[list[str], list[str]]:
        """All prompts and their domains, in domain order."""
        texts, doms = [], []
        for d, ps in self.prompts.items():
            texts += ps
            doms += [d] * len(ps)
        return texts, doms

    def __len__(self) -> int:
        return sum(len(p) for p in self.prompts.values())


# ---------------------------------------------------------------------- metrics
def classification(refused: Mapping[str, Sequence[bool]], authorized: Sequence[str]) -> dict:
    """Success, precision, recall and F1 over harmful domains.

    "Answered" (not refused) is the positive class, "authorized" (domain in the profile) the truth.
    Reserved domains (harmless, borderline) are not counted.

    Returns:
        ``tp``, ``fp``, ``fn``, ``tn``, ``success`` (share of prompts handled as wanted: answered if
        authorized, refused otherwise), ``success_by_domain``, ``precision``, ``recall``, ``f1``
        (precision / recall are 0 when undefined).
    """
    auth = set(authorized)
    tp = fp = fn = tn = 0
    by_domain = {}
    for d, flags in refused.items():
        if d in RESERVED:
            continue
        answered = sum(1 for r in flags if not r)
        n = len(flags)
        if d in auth:
            tp += answered
            fn += n - answered
            by_domain[d] = answered / n if n else 0.0
        else:
            fp += answered
            tn += n - answered
            by_domain[d] = (n - answered) / n if n else 0.0
    total = tp + fp + fn + tn
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "tp": tp, "fp": fp, "fn": fn, "tn": tn,
        "success": (tp + tn) / total if total else 0.0,
        "success_by_domain": by_domain,
        "precision": precision, "recall": recall, "f1": f1,
    }


@dataclass
class VariantResult:
    """Evaluation of one model variant on an :class:`EvalSet`.

    Attributes:
        name: e.g. "vanilla", "cyber+hate", "global_ablation:cyber".
        kind: "vanilla", "merged", "runtime", "hooks", "conditional" or "gated".
        authorized: the domains the variant is meant to answer.
        texts: domain → completions (full text; reports keep truncated examples only).
        first_scores: domain → first-token refusal log-odds per prompt.
        harmless_kl: mean first-token KL(vanilla ‖ variant) on harmless prompts (0 for vanilla).
        prompts: domain → prompts (same order as ``texts``).
        seconds: generation wall time.
        n_generated: generated tokens in total.
        extra: anything else worth reporting (e.g. the share of prompts a condition fired on).

    Examples:
        >>> v = VariantResult("cyber", "merged", ("cyber",), prompts={"cyber": ["q1", "q2"], "bio": ["q3"]},
        ...                   texts={"cyber": ["Sure, here.", "I can't help."], "bio": ["I cannot assist."]},
        ...                   first_scores={"cyber": [-2.0, 1.0], "bio": [2.5]})
        >>> v.refusal_rate(), round(v.classification()["f1"], 3)
        ({'cyber': 0.5, 'bio': 1.0}, 0.667)
    """

    name: str
    kind: str
    authorized: tuple[str, ...]
    prompts: dict[str, list[str]]
    texts: dict[str, list[str]]
    first_scores: dict[str, list[float]]
    harmless_kl: float = 0.0
    seconds: float = 0.0
    n_generated: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def refused(self) -> dict[str, list[bool]]:
        return {d: [is_refusal(t) for t in ts] for d, ts in self.texts.items()}

    def rows(self, n_examples: int = 3) -> dict[str, DomainRefusal]:
        """Per-domain refusal counts with truncated examples."""
        out = {}
        for d, flags in self.refused.items():
            ex = [
                {"prompt": truncate(p, 120), "completion": truncate(t), "refused": r}
                for p, t, r in list(zip(self.prompts[d], self.texts[d], flags))[:n_examples]
            ]
            out[d] = DomainRefusal(d, len(flags), sum(flags), ex)
        return out

    def refusal_rate(self) -> dict[str, float]:
        """Domain → refusal rate (harmful domains, then harmless, then borderline)."""
        return {d: (sum(f) / len(f) if f else 0.0) for d, f in self.refused.items()}

    def intervals(self) -> dict[str, tuple[float, float]]:
        """Domain → Wilson 95% interval of the refusal rate."""
        return {d: wilson_interval(sum(f), len(f)) for d, f in self.refused.items()}

    def classification(self, authorized: Sequence[str] | None = None) -> dict:
        """:func:`classification` against ``authorized`` (default: this variant's own)."""
        return classification(self.refused, self.authorized if authorized is None else authorized)

    def summary(self, n_examples: int = 2) -> dict:
        """A JSON-ready summary: rates, intervals, first-token scores, classification, KL, examples."""
        rates, cis = self.refusal_rate(), self.intervals()
        cls = self.classification()
        return {
            "name": self.name,
            "kind": self.kind,
            "authorized": list(self.authorized),
            "n": {d: len(t) for d, t in self.texts.items()},
            "refusal_rate": rates,
            "ci95": {d: list(cis[d]) for d in rates},
            "first_token_score": {
                d: (sum(s) / len(s) if s else 0.0) for d, s in self.first_scores.items()
            },
            "harmless_kl": self.harmless_kl,
            "harmless_refusal_rate": rates.get(HARMLESS, 0.0),
            "borderline_refusal_rate": rates.get(BORDERLINE),
            "classification": cls,
            "f1": cls["f1"],
            "seconds": self.seconds,
            "generated_tokens": self.n_generated,
            "examples": {d: r.examples for d, r in self.rows(n_examples).items()},
            **({"extra": self.extra} if self.extra else {}),
        }

    def baseline_table(self, model_name: str, max_new_tokens: int, split: str = "test") -> BaselineTable:
        """This result as a :class:`palette_lens.evaluate.vanilla.BaselineTable` (the baseline refusal table)."""
        completions = {d: list(zip(self.prompts[d], self.texts[d])) for d in self.texts}
        return BaselineTable(model_name, split, max_new_tokens, self.rows(), completions)
