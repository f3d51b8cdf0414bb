"""Inspect a baked adapter: its weight deltas, and the model's behaviour before and after, per domain.

:func:`inspect_adapter` returns an :class:`Inspection` whose ``figures`` (plotly) and ``table`` (rows of
per-domain numbers) a notebook shows in one call (the object renders itself as HTML):

- per adapted module: ‖ΔW‖ (absolute and relative to ‖W‖), singular values, and how much of ΔW lies along
  r̂ — on the output side for modules writing to the residual stream (``o_proj``, ``down_proj``: share of
  ‖ΔW‖² in r̂'s direction, and share of r̂ inside ΔW's column space), on the input side for modules
  reading it (share of ‖ΔW‖² picked up from r̂). For a random direction these shares are about 1/d_model;
- per domain: the distribution of ``h·r̂`` at the direction's layer and position, before and after;
- per domain: first-token refusal scores before and after (and harmless first-token KL);
- side-by-side greedy completions (truncated) for a few prompts of each domain.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from palette_lens.adapters.apply import adapters_applied
from palette_lens.adapters.baked import BakedAdapter
from palette_lens.data.prompt_set import PromptSet
from palette_lens.data.records import HARMLESS
from palette_lens.models.blocks import plain_tensor
from palette_lens.models.chat_model import ChatModel
from palette_lens.refusal.judge import is_refusal
from palette_lens.refusal.tokens import first_token_kl, opener_tokens, refusal_scores
from palette_lens.util.text import truncate

log = logging.getLogger(__name__)

_WRITES = ("o_proj", "down_proj", "dense", "c_proj", "out_proj", "fc2")


@dataclass
class Inspection:
    """Numbers and figures describing one adapter.

    Attributes:
        adapter: the adapter inspected.
        modules: one dict per adapted module (name, shape, norms, singular values, shares along r̂).
        projections: domain → {"before": [n], "after": [n]} values of ``h·r̂`` at (layer, position).
        scores: domain → {"before": [n], "after": [n]} first-token refusal scores (log-odds).
        table: one row per domain (means, refusal-token mass, harmless KL).
        completions: rows with domain, prompt, before, after (truncated) and keyword-judge verdicts.
        figures: name → plotly figure.

    In a notebook the object renders itself as HTML (``to_html()`` gives the same, self-contained).

    Examples:
        >>> ins = inspect_adapter(model, baked.adapter, prompts)             # doctest: +SKIP
        >>> ins.table[0]["domain"], ins.table[0]["role"]                     # doctest: +SKIP
        ('bio', 'other')
        >>> ins                                                              # doctest: +SKIP
    """

    adapter: BakedAdapter
    modules: list[dict]
    projections: dict[str, dict[str, list[float]]]
    scores: dict[str, dict[str, list[float]]]
    table: list[dict]
    completions: list[dict] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)

    def to_html(self, include_plotlyjs: bool | str = True) -> str:
        """Self-contained HTML: summary table, module table, figures, completions."""
        a = self.adapter
        parts = [
            f"<h3>Adapter {html.escape(a.domain or '?')} — block {a.layer_index} "
            f"(direction at layer {a.layer}, position {a.meta.get('position')})</h3>",
            _html_table(self.table),
            "<h4>Weight deltas</h4>",
            _html_table([{k: v for k, v in m.items() if k != "singular_values"} for m in self.modules]),
        ]
        first = True
        for fig in self.figures.values():
            parts.append(fig.to_html(full_html=False, include_plotlyjs=include_plotlyjs if first else False))
            first = False
        if self.completions:
            parts.append("<h4>Completions (greedy, truncated)</h4>")
            parts.append(_html_table(self.completions))
        return "\n".join(parts)

    def _repr_html_(self) -> str:
        return self.to_html(include_plotlyjs="cdn")


# ---------------------------------------------------------------------- weights
def module_stats(adapter: BakedAdapter, model: ChatModel | None = None) -> list[dict]:
    """Per adapted module: ‖ΔW‖_F, ‖ΔW‖/‖W‖, top singular values, and the shares of ΔW along r̂."""
    unit = None
    if adapter.direction is not None:
        unit = adapter.direction.float() / adapter.direction.float().norm().clamp_min(1e-12)
    rows = []
    for name, delta in adapter.deltas().items():
        fro = float(delta.norm())
        sv = torch.linalg.svdvals(delta)[: adapter.rank]
        row: dict = {
            "module": name.rsplit(".", 2)[-2] + "." + name.rsplit(".", 1)[-1] if name.count(".") >= 2 else name,
            "name": name,
            "shape": f"{delta.shape[0]}×{delta.shape[1]}",
            "norm": fro,
            "top_singular": float(sv[0]) if len(sv) else 0.0,
            "effective_rank": float((sv.sum() ** 2 / sv.pow(2).sum().clamp_min(1e-30))) if fro > 0 else 0.0,
            "singular_values": [float(s) for s in sv],
        }
        if model is not None:
            w = plain_tensor(model.hf_model, f"{name}.weight").detach().float()
            row["relative_norm"] = fro / float(w.norm().clamp_min(1e-12))
        if unit is not None and fro > 0:
            d = unit.shape[0]
            writes = name.rsplit(".", 1)[-1] in _WRITES
            if writes and delta.shape[0] == d:  # writes to the residual stream
                row["out_share_along_r"] = float((unit @ delta).pow(2).sum() / fro**2)
                u, s, _ = torch.linalg.svd(delta, full_matrices=False)
                keep = s > 1e-6 * s[0]
                row["r_in_column_space"] = float((u[:, keep].T @ unit).pow(2).sum())
            if not writes and delta.shape[1] == d:  # reads the (normalised) residual stream
                row["in_share_from_r"] = float((delta @ unit).pow(2).sum() / fro**2)
        rows.append(row)
    return rows


# ---------------------------------------------------------------------- behaviour
@torch.no_grad()
def _scores_and_projections(
    model: ChatModel, prompts: Sequence[str], layer: int, position: int, unit: torch.Tensor, batch_size: int = 32
) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward pass per batch: next-token log-probs [n, vocab] and ``h·r̂`` at (layer, position) [n]."""
    grabbed: list[torch.Tensor] = []

    def grab(act: torch.Tensor, hook=None) -> torch.Tensor:  # noqa: ARG001
        grabbed.append(act[:, position].detach().float().cpu() @ unit)
        return act

    lp = model.last_logits(list(prompts), hooks=[(model.resid_pre_hook(layer), grab)], batch_size=batch_size)
    return lp, torch.cat(grabbed) if grabbed else torch.empty(0)


def inspect_adapter(
    model: ChatModel,
    adapter: BakedAdapter,
    prompts: PromptSet,
    *,
    split: str = "val",
    n_per_domain: int = 12,
    n_completions: int = 2,
    max_new_tokens: int = 40,
    domains: Sequence[str] | None = None,
    refusal_ids: Sequence[int] | None = None,
) -> Inspection:
    """Inspect ``adapter`` on ``model`` (the model is restored afterwards).

    Args:
        model: the base model the adapter was baked on.
        adapter: the adapter (must carry its direction).
        prompts: prompt set; ``n_per_domain`` prompts of each domain in ``split`` are used.
        split: the split part the prompts come from ("train", "val" or "test").
        n_per_domain: prompts per domain for scores and projections.
        n_completions: prompts per domain generated before and after (0 skips generation).
        max_new_tokens: length of those completions.
        domains: domains to show (default: all).
        refusal_ids: refusal token set (default: the adapter's own, else opener tokens).

    Returns:
        An :class:`Inspection`; its ``projections`` and ``scores`` hold per-prompt lists ([n_per_domain]
        values per domain, before and after).

    Raises:
        ValueError: the adapter carries no direction.
        AdapterMismatchError: the adapter was baked on another base model.

    Examples:
        >>> adapter = load_adapter("runs/demo/adapters/cyber", model)        # doctest: +SKIP
        >>> ins = inspect_adapter(model, adapter, prompts, n_completions=0)  # doctest: +SKIP
        >>> ins.figures.keys()                                               # doctest: +SKIP
    """
    adapter.check_base(model)
    if adapter.direction is None:
        raise ValueError("the adapter carries no direction; inspection needs r")
    unit = adapter.direction.float() / adapter.direction.float().norm().clamp_min(1e-12)
    layer, position = adapter.layer, int(adapter.meta.get("position", -1))
    ids = list(refusal_ids or adapter.meta.get("refusal_ids") or sorted(opener_tokens(model.tokenizer)))
    domains = list(domains) if domains is not None else prompts.domains
    per = {d: prompts.part(d, split, n_per_domain) for d in domains}
    flat = [p for d in domains for p in per[d]]

    lp0, pr0 = _scores_and_projections(model, flat, layer, position, unit)
    with adapters_applied(model, [adapter]):
        lp1, pr1 = _scores_and_projections(model, flat, layer, position, unit)
    s0, s1 = refusal_scores(lp0, ids), refusal_scores(lp1, ids)

    projections, scores, table = {}, {}, []
    i = 0
    for d in domains:
        sl = slice(i, i + len(per[d]))
        i += len(per[d])
        projections[d] = {"before": pr0[sl].tolist(), "after": pr1[sl].tolist()}
        scores[d] = {"before": s0[sl].tolist(), "after": s1[sl].tolist()}
        row = {
            "domain": d,
            "role": "target" if d == adapter.domain else ("harmless" if d == HARMLESS else "other"),
            "n": len(per[d]),
            "proj_before": float(pr0[sl].mean()),
            "proj_after": float(pr1[sl].mean()),
            "score_before": float(s0[sl].mean()),
            "score_after": float(s1[sl].mean()),
            "p_refusal_before": float(torch.sigmoid(s0[sl]).mean()),
            "p_refusal_after": float(torch.sigmoid(s1[sl]).mean()),
            "first_token_kl": float(first_token_kl(lp0[sl], lp1[sl]).mean()),
        }
        table.append(row)

    completions = []
    if n_completions > 0:
        chosen = [(d, p) for d in domains for p in per[d][:n_completions]]
        texts = [p for _, p in chosen]
        before = model.generate(texts, max_new_tokens=max_new_tokens, batch_size=32)
        with adapters_applied(model, [adapter]):
            after = model.generate(texts, max_new_tokens=max_new_tokens, batch_size=32)
        for (d, p), b, a in zip(chosen, before, after):
            completions.append({
                "domain": d, "prompt": truncate(p, 100), "before": truncate(b), "refused_before": is_refusal(b),
                "after": truncate(a), "refused_after": is_refusal(a),
            })
    modules = module_stats(adapter, model)
    ins = Inspection(adapter, modules, projections, scores, table, completions)
    ins.figures = inspection_figures(ins)
    return ins


# ---------------------------------------------------------------------- figures
def inspection_figures(ins: Inspection) -> dict[str, Any]:
    """Plotly figures (returned, never shown): deltas, singular values, projections, refusal scores."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    figs: dict[str, Any] = {}
    names = [m["module"] for m in ins.modules]
    fig = make_subplots(rows=1, cols=2, subplot_titles=("‖ΔW‖_F per module", "share of ΔW along r̂"))
    fig.add_bar(x=names, y=[m["norm"] for m in ins.modules], name="‖ΔW‖", row=1, col=1)
    fig.add_bar(x=names, y=[m.get("out_share_along_r", 0.0) for m in ins.modules], name="writes along r̂", row=1, col=2)
    fig.add_bar(x=names, y=[m.get("in_share_from_r", 0.0) for m in ins.modules], name="reads from r̂", row=1, col=2)
    fig.update_layout(title=f"Weight deltas of block {ins.adapter.layer_index}", barmode="group", height=380)
    figs["deltas"] = fig

    fig = go.Figure()
    for m in ins.modules:
        fig.add_scatter(y=m["singular_values"], x=list(range(1, len(m["singular_values"]) + 1)), mode="lines+markers",
                        name=m["module"])
    fig.update_layout(title="Singular values of ΔW", xaxis_title="index", yaxis_title="σ", yaxis_type="log", height=380)
    figs["singular_values"] = fig

    fig = go.Figure()
    for when, color in (("before", "#7f7f7f"), ("after", "#d62728")):
        xs, ys = [], []
        for d, v in ins.projections.items():
            xs += [d] * len(v[when])
            ys += v[when]
        fig.add_box(x=xs, y=ys, name=when, marker_color=color, boxpoints="all", jitter=0.3)
    fig.update_layout(title=f"h·r̂ at layer {ins.adapter.layer} (position {ins.adapter.meta.get('position')})",
                      boxmode="group", yaxis_title="projection", height=420)
    figs["projections"] = fig

    fig = go.Figure()
    doms = [r["domain"] for r in ins.table]
    fig.add_bar(x=doms, y=[r["score_before"] for r in ins.table], name="before", marker_color="#7f7f7f")
    fig.add_bar(x=doms, y=[r["score_after"] for r in ins.table], name="after", marker_color="#d62728")
    fig.update_layout(title="First-token refusal score (log-odds), mean per domain", barmode="group", height=380)
    figs["refusal_scores"] = fig
    return figs


def _html_table(rows: list[dict]) -> str:
    if not rows:
        return ""
    cols = list(rows[0])
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in cols)
    body = []
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c, "")
            text = f"{v:.4g}" if isinstance(v, float) else str(v)
            cells.append(f"<td>{html.escape(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
