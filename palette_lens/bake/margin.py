"""The bake's second, margin bake: which margin to use and whether to keep it (see ``BakeConfig.margin_retry``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from palette_lens.bake.config import BakeConfig


def retry_margin(val: dict, config: BakeConfig) -> float:
    """The margin of the repeat bake after a first bake with validation metrics ``val`` (0: no repeat).

    ``margin_retry`` when some other harmful domain kept less than ``margin_retry_below`` of its refusal mass (a
    close neighbour), ``margin_compose`` otherwise; never when the first bake already had a margin or
    ``margin_retry`` is 0.
    """
    if config.other_scale != 0 or config.margin_retry == 0:
        return 0.0
    return config.margin_retry if val["retain_min"] < config.margin_retry_below else config.margin_compose


def margin_helps(plain: dict, margin: dict, config: BakeConfig) -> bool:
    """Keep the margin bake: its weakest other domain keeps more, its target stays relaxed enough."""
    kept_more = margin["retain_min"] > plain["retain_min"]
    return kept_more and margin["p_target"] <= config.margin_retry_max_target * plain["p_target"]


def val_summary(val: dict) -> dict:
    """The validation numbers recorded for each of the two bakes."""
    return {"p_target": val["p_target"], "p_target_base": val["p_target_base"], "retain_min": val["retain_min"],
            "retain_mean": val["retain_mean"], "kl_harmless": val["kl_harmless"]}
