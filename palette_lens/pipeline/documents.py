"""The two JSON documents of a pipeline run: ``metrics.json`` (DESIGN §3's keys) and ``details.json``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from palette_lens.data.records import BORDERLINE, HARMLESS
from palette_lens.evaluate.floors import check_floors, recommend_deployment
from palette_lens.evaluate.results import VariantResult

if TYPE_CHECKING:
    from palette_lens.adapters.baked import BakedAdapter
    from palette_lens.compose.profiles import Profile
    from palette_lens.data.prompt_set import PromptSet
    from palette_lens.models.chat_model import ChatModel
    from palette_lens.pipeline.config import PipelineConfig


#: The top-level keys of ``metrics.json``, in order (DESIGN §3).
METRICS_KEYS = (
    "model", "n_layers", "domains", "baseline", "adapters", "profiles", "baselines", "latency_ms_per_token",
    "timings_s",
)

def build_documents(
    model: ChatModel,
    prompts: PromptSet,
    config: PipelineConfig,
    targets: Sequence[str],
    adapters: Mapping[str, BakedAdapter],
    profiles: Sequence[Profile],
    variants: Mapping[str, VariantResult],
    baseline_results: Mapping[str, Mapping[str, VariantResult]],
    reference: Profile,
    base_rates: Mapping[str, float],
    latency: Any,
    inter: Any,
    steering: Mapping[str, Any],
    searches: Any,
    bakes: Any,
    timings: Mapping[str, float],
) -> tuple[dict, dict]:
    """``metrics.json`` (exactly DESIGN §3's keys) and ``details.json`` of a finished pipeline run."""
    harmful = [d for d in variants["vanilla"].texts if d not in (HARMLESS, BORDERLINE)]

    def rates(v: VariantResult) -> dict[str, float]:
        return v.refusal_rate()

    def entry(v: VariantResult) -> dict[str, Any]:
        return {"refusal_rate": rates(v), "harmless_kl": v.harmless_kl, "f1": v.classification()["f1"]}

    def gated_entry(p: Profile) -> dict[str, Any]:
        v = variants.get(f"{p.name} gated")
        if v is None:
            return {}
        return {"gated": {**entry(v), "opened": {d: float(s) for d, s in v.extra.get("gate_opened", {}).items()}}}

    metrics = {
        "model": model.name,
        "n_layers": model.n_layers,
        "domains": harmful,
        "baseline": {"refusal_rate": rates(variants["vanilla"])},
        "adapters": {
            t: {
                "layer": adapters[t].layer,
                "position": int(adapters[t].meta.get("position", -1)),
                "train_seconds": float(adapters[t].meta.get("train_seconds", 0.0)),
            }
            for t in targets
        },
        "profiles": {
            p.name: {"authorized": list(p.domains), **entry(variants[p.name]), **gated_entry(p)}
            for p in profiles
        },
        "baselines": {
            kind: ({"refusal_rate": rates(res[reference.name])} if reference.name in res else {})
            for kind, res in baseline_results.items()
        },
        "latency_ms_per_token": {k: latency.ms_per_token[k] for k in ("vanilla", "merged", "hooked", "gated")
                                 if k in latency.ms_per_token},
        "timings_s": dict(timings),
    }
    floors = {
        name: check_floors(rates(variants[name]), base_rates, p.domains, harmful, variants[name].harmless_kl,
                           config.widen)
        for p in profiles for name in (p.name, f"{p.name} gated") if name in variants
    }
    recommended = {p.name: recommend_deployment(floors[p.name], floors.get(f"{p.name} gated")) for p in profiles}
    details = {
        "reference_profile": reference.name,
        "targets": list(targets),
        "evaluated_n": {d: len(t) for d, t in variants["vanilla"].texts.items()},
        "variants": {name: v.summary() for name, v in variants.items()},
        "baselines": {kind: {name: v.summary() for name, v in res.items()} for kind, res in baseline_results.items()},
        "floors": floors,
        "recommended": recommended,
        "floors_widened_by": config.widen,
        "interference": inter,
        "conditions": {name: st.to_dict() for name, st in steering.items()},
        "latency": latency.to_dict(),
        "adapters": {
            t: {"block": a.layer_index, "layer": a.layer, "position": a.meta.get("position"),
                "train_seconds": a.meta.get("train_seconds"), "val": a.meta.get("metrics", {}).get("val_first_token"),
                "delta_norm": a.delta_norm(), "margin": (a.meta.get("config") or {}).get("other_scale"),
                "margin_retry": a.meta.get("margin_retry")}
            for t, a in adapters.items() if t in targets
        },
        "search": searches,
        "bake": bakes,
        "data": {"counts": prompts.counts(), "hash": prompts.data_hash(),
                 "gate_pool": {"counts": {d: len(prompts.part(d, "gate")) for d in prompts.domains},
                               "hash": prompts.gate_pool_hash()}},
        "config": config.to_dict(),
        "model": {"name": model.name, "fingerprint": model.fingerprint, "source": model.source},
    }
    return metrics, details
