"""The settings of one bake: :class:`BakeConfig` and the prompt groups a batch mixes."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

from palette_lens.bake.targets import LossKind, TargetMode

GROUPS = ("target", "other", "harmless", "borderline")


@dataclass(frozen=True)
class BakeConfig:
    """Settings of one bake (all have working defaults).

    Attributes:
        scale: s in the target ``h − s·(h·r̂) r̂`` (2.5 in the official code).
        target_mode: "neutral" (others keep ``h``) or "reinforce" (others get ``h + s·(h·r̂) r̂``).
        other_scale: under "neutral", non-target *harmful* prompts get ``h + other_scale·(h·r̂) r̂`` instead of
            ``h`` (harmless and borderline keep ``h``): a margin that keeps composed profiles refusing.
        loss: "cosine" (``1 − cos``) or "rel_mse".
        rank: LoRA rank r.
        alpha: LoRA alpha (ΔW = (alpha / r) · B · A).
        steps: optimisation steps (AdamW, warm-up then cosine decay).
        batch_size: prompts per training batch.
        lr: peak learning rate.
        weight_decay: AdamW weight decay.
        mix: sampling weights of target : other harmful : harmless : borderline prompts per batch.
        hard_negative_frac: share of non-target prompts counted as hard negatives (closest to the target).
        hard_negative_weight: how much more often a hard negative is sampled.
        token_scope: "user" (the prompt's own tokens, default), "post" (post-instruction tokens only) or
            "all" (every real token, including the shared template prefix).
        max_per_group: cap on training prompts per non-target group (None: all); adversarial variants
            come on top (the cap counts original prompts).
        adversarial_negatives: attack kinds ("profession", "roleplay", "mixed") whose variants of every
            non-target train prompt join the non-target group (:func:`palette_lens.data.augment.augment_prompt_set`,
            training wordings only); empty: plain prompts only.
        input_shift: share of harmful training rows (target and other) whose block input is shifted along r̂,
            ``x + c·(x·r̂) r̂`` with c drawn from ``input_shift_range`` on the prompt's own tokens, before the
            target is computed from the frozen block's output on the shifted input. It stands in for other
            adapters upstream in a composed profile (one that removed refusal: c = −1; one whose margin raised
            it: c > 0), so the adapter learns to act in proportion to the refusal it is given (0: off).
        input_shift_range: (low, high) of c.
        margin_retry: when > 0 (and ``other_scale`` is 0) and the kept checkpoint keeps less than
            ``margin_retry_below`` of some other harmful domain's first-token refusal mass on validation, the
            bake is repeated with ``other_scale = margin_retry`` and the repeat is kept if its weakest domain
            keeps more while its target's refusal mass is at most ``margin_retry_max_target`` times the first
            bake's (the margin must not cost the target its relaxation; 0: never repeat, whatever
            ``margin_compose`` says). The margin is a fallback for targets with a close neighbour (hate on the default model).
        margin_compose: the margin of the repeat when the first bake keeps at least ``margin_retry_below``
            everywhere (same keep rule; 0: bake once then). Each adapter alone leaks a little onto the other
            harmful domains, and in a composed profile those leaks add up; a small margin on every adapter
            meets one adapter's leak with the others' margins (docs/decisions.md, "Bake").
        margin_retry_below: the first threshold of that rule: when the first bake's weakest other harmful
            domain keeps less than this share of its refusal mass, the repeat uses ``margin_retry``,
            otherwise ``margin_compose``.
        margin_retry_max_target: the second threshold: the most the repeat may raise the target's refusal
            mass, as a multiple of the first bake's.
        margin_retry_borderline: the margin bake samples borderline prompts at least this share of the mix
            (the margin raises refusal around harmful prompts; borderline ones need as much weight to stay
            neutral).
        generation_check: at the end, generate the validation prompts (greedy, keyword judge) with this many of
            the most selective first-token checkpoints and keep the best by generated selectivity
            (:mod:`palette_lens.bake.generation_check`); 0: keep the best first-token checkpoint without generating.
        val_per_domain: validation prompts per harmful domain; harmless/borderline use 2× this.
        eval_every: steps between validation checkpoints (0: only at the end).
        seed: seed for initialisation and sampling.

    Examples:
        >>> cfg = BakeConfig(steps=60, rank=4)
        >>> cfg.to_dict()["steps"], cfg.alpha / cfg.rank
        (60, 4.0)
    """

    scale: float = 2.5
    target_mode: TargetMode = "neutral"
    other_scale: float = 0.0
    loss: LossKind = "cosine"
    rank: int = 8
    alpha: float = 16.0
    steps: int = 120
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.0
    mix: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 0.3)
    hard_negative_frac: float = 0.25
    hard_negative_weight: float = 3.0
    token_scope: Literal["user", "post", "all"] = "user"
    max_per_group: int | None = 80
    adversarial_negatives: tuple[str, ...] = ()
    input_shift: float = 0.5
    input_shift_range: tuple[float, float] = (-1.0, 0.5)
    margin_retry: float = 0.5
    margin_compose: float = 0.25
    margin_retry_below: float = 0.8
    margin_retry_max_target: float = 1.25
    margin_retry_borderline: float = 1.0
    generation_check: int = 0
    val_per_domain: int = 6
    eval_every: int = 30
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)
