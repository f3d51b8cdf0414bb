"""Prompts grouped by domain (:class:`PromptSet`) and their seeded train / validation / test splits."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from palette_lens.data.records import RESERVED, Record
from palette_lens.errors import DataError, UnknownDomainError

log = logging.getLogger(__name__)

MIN_PROMPTS_TO_SPLIT = 5
SPLIT_PARTS = ("train", "val", "test", "gate")


@dataclass(frozen=True)
class Split:
    """Prompts of one domain split into train / validation / test, plus the domain's gate pool.

    ``gate`` holds extra requests that only a domain gate trains on (``data/gate/``, :func:`load_prompts`'s
    ``gate_files``); they are not drawn from the domain's prompts, so train / val / test do not depend on them.
    """

    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]
    gate: tuple[str, ...] = ()


@dataclass
class PromptSet:
    """Prompts grouped by domain, with seeded splits.

    Attributes:
        by_domain: domain -> list of records (file order).
        seed: seed of the splits.
        train_frac: fraction for train (the paper's 20%); validation is carved from train.
        val_frac_of_train: share of train kept for validation.
        gate_pool: domain -> extra records that only a domain gate trains on (``part(domain, "gate")``); never
            part of train, validation or test, and not in :meth:`data_hash` (searches and bakes never read them).

    A domain needs at least 5 prompts to be split; each split part holds at least one prompt. ``part(domain,
    "train")`` excludes the validation prompts carved from the train share.

    Examples:
        >>> ps = PromptSet({"harmless": [Record(f"question {i}", "harmless") for i in range(10)]})
        >>> ps.domains, [len(ps.part("harmless", p)) for p in ("train", "val", "test")]
        (['harmless'], [1, 1, 8])
    """

    by_domain: dict[str, list[Record]]
    seed: int = 0
    train_frac: float = 0.2
    val_frac_of_train: float = 0.3
    gate_pool: dict[str, list[Record]] = field(default_factory=dict)
    _splits: dict[str, Split] = field(default_factory=dict, repr=False)

    # ---- domains
    @property
    def domains(self) -> list[str]:
        """All domains, harmful first (sorted), then harmless and borderline when present."""
        harmful = sorted(d for d in self.by_domain if d not in RESERVED)
        return harmful + [d for d in RESERVED if d in self.by_domain]

    @property
    def harmful_domains(self) -> list[str]:
        return [d for d in self.domains if d not in RESERVED]

    def check_domain(self, domain: str) -> str:
        """Return ``domain`` or raise :class:`UnknownDomainError` listing the known ones."""
        if domain not in self.by_domain:
            raise UnknownDomainError(f"unknown domain {domain!r}; known domains: {', '.join(self.domains)}")
        return domain

    def prompts(self, domain: str) -> list[str]:
        return [r.prompt for r in self.by_domain[self.check_domain(domain)]]

    # ---- splits
    def split(self, domain: str) -> Split:
        """The seeded split of ``domain`` (at least one prompt in each part)."""
        self.check_domain(domain)
        if domain not in self._splits:
            split = split_prompts(self.prompts(domain), self.seed, self.train_frac, self.val_frac_of_train, domain)
            own = set(self.prompts(domain))  # a pool prompt that is the domain's own may sit in its test split
            pool = tuple(r.prompt for r in self.gate_pool.get(domain, ()) if r.prompt not in own)
            if len(pool) < len(self.gate_pool.get(domain, ())):
                log.warning("gate pool of %s: %d prompts left out, they are among the domain's own prompts",
                            domain, len(self.gate_pool[domain]) - len(pool))
            self._splits[domain] = dataclasses.replace(split, gate=pool)
        return self._splits[domain]

    def part(self, domain: str, part: str, limit: int | None = None) -> list[str]:
        """Prompts of ``domain`` in ``part`` ("train", "val", "test" or "gate"), optionally the first ``limit``."""
        if part not in SPLIT_PARTS:
            raise DataError(f"unknown split part {part!r}; the parts are {', '.join(SPLIT_PARTS)}")
        prompts = list(getattr(self.split(domain), part))
        return prompts[:limit] if limit is not None else prompts

    def data_hash(self, domains: Iterable[str] | None = None) -> str:
        """A short hash of the records of ``domains`` (default all) and the split settings."""
        digest = hashlib.sha256(json.dumps([self.seed, self.train_frac, self.val_frac_of_train]).encode())
        for d in sorted(domains if domains is not None else self.by_domain):
            for r in self.by_domain[self.check_domain(d)]:
                digest.update(f"{d}\x00{r.prompt}\x00".encode())
        return digest.hexdigest()[:16]

    def counts(self) -> dict[str, int]:
        return {d: len(self.by_domain[d]) for d in self.domains}

    def gate_pool_hash(self) -> str:
        """A short hash of the gate pool of every domain of the set (what a gate trains on besides the splits)."""
        digest = hashlib.sha256()
        for d in self.domains:
            for prompt in self.split(d).gate:
                digest.update(f"{d}\x00{prompt}\x00".encode())
        return digest.hexdigest()[:16]


def split_prompts(
    prompts: Sequence[str], seed: int = 0, train_frac: float = 0.2, val_frac_of_train: float = 0.3, domain: str = "?"
) -> Split:
    """Deterministic split: shuffle with ``seed`` (and the domain name), take train, carve validation."""
    if len(prompts) < MIN_PROMPTS_TO_SPLIT:
        raise DataError(
            f"domain {domain!r} has {len(prompts)} prompts; at least {MIN_PROMPTS_TO_SPLIT} are needed to split "
            f"it into train, validation and test"
        )
    order = list(prompts)
    random.Random(f"{seed}:{domain}").shuffle(order)
    n_train = max(2, round(len(order) * train_frac))
    n_train = min(n_train, len(order) - 1)
    n_val = min(max(1, round(n_train * val_frac_of_train)), n_train - 1)
    train = order[: n_train - n_val]
    val = order[n_train - n_val : n_train]
    test = order[n_train:]
    return Split(tuple(train), tuple(val), tuple(test))


