"""Per-domain direction search and layer-wise domain separation (issue 3): writes the JSON and a Markdown page.

Loads the default model and the built-in prompts, collects the train residuals of every domain once, runs
:func:`palette_lens.search.direction_search.search_direction` with default settings for each harmful domain (reusing the
residuals) and computes per-layer separation numbers (:func:`palette_lens.geometry.separation.separation_table`) at the
last post-instruction position.

Usage::

    nice -n 19 .venv/bin/python scripts/search_report.py                       # full run (all domains)
    nice -n 19 .venv/bin/python scripts/search_report.py --limit 4 --domains cyber hate --json /tmp/q.json --md /tmp/q.md
    .venv/bin/python scripts/search_report.py --from-json benchmarks/results/search_report.json  # re-render

Writes ``benchmarks/results/search_report.json`` (all numbers) and ``benchmarks/results/search_report.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from palette_lens.util.atomic import atomic_write_text

log = logging.getLogger("search_report")
OBJ = ("bypass_T", "retain_N", "retain_min", "sep_N", "kl_H")


def measure(args: argparse.Namespace) -> dict:
    """Residuals once, one search per harmful domain, the per-layer separation table."""
    import torch

    from palette_lens.data.prompts import load_prompts
    from palette_lens.data.records import BORDERLINE, HARMLESS
    from palette_lens.geometry.separation import separation_table
    from palette_lens.models.loading import load_model
    from palette_lens.search.candidates import collect_domain_residuals
    from palette_lens.search.direction_search import search_direction
    from palette_lens.search.result import SearchConfig

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    model = load_model()
    prompts = load_prompts()
    timings["load"] = time.perf_counter() - t0
    harmful = prompts.harmful_domains
    targets = args.domains or harmful
    for d in targets:
        prompts.check_domain(d)
    extra = [BORDERLINE] if args.borderline and BORDERLINE in prompts.domains else []
    all_domains = [*harmful, HARMLESS, *extra]

    t0 = time.perf_counter()
    res = collect_domain_residuals(model, prompts, all_domains, limit=args.limit)
    timings["residuals"] = time.perf_counter() - t0
    log.info("residuals of %d domains in %.0f s", len(all_domains), timings["residuals"])

    cfg = SearchConfig()
    searches = {}
    for d in targets:
        t0 = time.perf_counter()
        r = search_direction(model, prompts, d, residuals=res, config=cfg, progress=False)
        timings[f"search_{d}"] = time.perf_counter() - t0
        row = r.chosen_row
        searches[d] = {
            "layer": r.chosen.layer,
            "position": r.chosen.position,
            "chosen": {k: v for k, v in row.items() if k in OBJ or k.startswith("ablate_") or k in ("retain", "pareto")},
            "vanilla": r.vanilla,
            "fallback": r.fallback,
            "alpha_path": r.alpha_path,
            "timings_s": r.timings_s,
            "n_prompts": r.n_prompts,
            "pareto": [{k: c.get(k) for k in ("layer", "position", *OBJ)} for c in r.pareto],
            "evaluated": [{k: c.get(k) for k in ("layer", "position", "proxy", *OBJ)} for c in r.candidates if c["evaluated"]],
        }
        log.info("search %s: layer %d position %d in %.0f s", d, r.chosen.layer, r.chosen.position, timings[f"search_{d}"])

    t0 = time.perf_counter()
    position = model.positions[-1]
    sep = separation_table(
        res, harmful, domains=all_domains, silhouette_domains=harmful, rest=harmful, position=position, progress=False
    )
    timings["separation"] = time.perf_counter() - t0
    return {
        "model": model.name,
        "n_layers": model.n_layers,
        "positions": list(model.positions),
        "separation_position": position,
        "config": cfg.resolved().to_dict(),
        "limit": args.limit,
        "train_prompts": {d: len(r) for d, r in res.items()},
        "domains": {"harmful": harmful, "probe_all": all_domains, "searched": targets},
        "searches": searches,
        "separation": sep,
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "machine": {"platform": platform.machine(), "torch_threads": torch.get_num_threads(),
                    "load_avg_1min_at_end": round(os.getloadavg()[0], 2)},
    }


def _finite(x):
    """NaN / inf → None, recursively (JSON has neither)."""
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _f(v: float | None, nd: int = 2) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{nd}f}"


EXPLANATION = """\
## What the search does

For a target domain T, `palette_lens.search.direction_search.search_direction` scores every difference-of-means candidate
`r[l, p] = mean_T h − mean_harmless h` (train prompts, `resid_pre` of layer l at post-instruction position p):

1. **filters**: layers `1 ≤ l < {keep:.1f}·L` (a direction at layer l is baked into block l−1; the last
   {drop:.0%} of layers are dropped, as in Arditi et al.);
2. **pruning**: a first-order (attribution) estimate of `bypass_T` for every candidate, and its separability
   `sep_N`; the best `top_k = {top_k}` go on;
3. **causal scoring** under the default intervention, the bake's ideal one-block edit `h ← h − s·(h·r̂) r̂` at
   layer l only (s = {edit_scale}), on {n_val} target and {n_val} harmless validation prompts and {n_val_other}
   per other harmful domain;
4. **choice**: minimise `α·bypass' − (1−α)·retain'` (both min-max scaled, α = {alpha}) over the scored
   candidates with `bypass_T ≤ {bypass_max}`; the bound is dropped (and recorded as a fallback) when none passes.

Objectives (first-token refusal score `s = log P_R − log(1 − P_R)`, P_R the refusal-token mass):

- `bypass_T`: mean refusal score on target validation prompts under the edit (lower is better; −2.0 is a
  refusal-token mass of about 12%);
- `retain_N` / `retain_min`: mean / smallest per-domain refusal score on the other harmful domains under the
  same edit (higher is better; reported, not used by the default choice);
- `sep_N`: cross-validated AUC of target vs other harmful train prompts at the input of block l−1: the default
  retention objective (`retain = "{retain}"`). The bake changes one block, which must act on the target and not
  on the others; the edit, applied to every prompt, cannot show that;
- `kl_H`: first-token KL(vanilla ‖ edited) on harmless prompts. Under the edit there is **no KL filter**
  (`kl_max` = none): the edit is applied to every prompt, whereas the bake keeps harmless prompts neutral, so
  `kl_H` is reported only.

For the chosen candidate the search also reports `ablate_*`: the same objectives with r̂ ablated at every layer
(Arditi et al.), for reference.
"""


def _first(rows: list[dict], key: str, at_least: float) -> str:
    layer = next((x["layer"] for x in rows if x[key] is not None and x[key] >= at_least), None)
    return f"from layer {layer} on" if layer is not None else "at no layer"


def _spearman(a: list[float], b: list[float]) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1]) if len(a) > 2 else float("nan")


def _best(rows: list[dict], key: str) -> dict:
    return max((x for x in rows if x[key] is not None), key=lambda x: x[key])


def what_we_see(r: dict) -> str:
    """A few sentences derived from the numbers (where domains separate, which layers are chosen)."""
    sep, s, cfg = r["separation"], r["searches"], r["config"]
    best_all, best_min, best_sil = _best(sep, "probe_all"), _best(sep, "probe_vs_rest_min"), _best(sep, "silhouette")
    peak = {d: max(x["probe_vs_rest"][d] or 0.0 for x in sep) for d in r["domains"]["harmful"]}
    hardest = min(peak, key=peak.get)
    layers = sorted(v["layer"] for v in s.values())
    positions = sorted({v["position"] for v in s.values()})
    max_layer = math.ceil(r["n_layers"] * (1 - cfg["drop_last_frac"])) - 1
    failed = [d for d, v in s.items() if v["fallback"]]
    drop = [v["vanilla"]["retain_N"] - v["chosen"]["retain_N"] for v in s.values()]
    gaps = [
        max(c["sep_N"] for c in v["evaluated"] if c["sep_N"] is not None) - v["chosen"]["sep_N"]
        for v in s.values()
        if v["chosen"]["sep_N"] is not None
    ]
    rho = [_spearman([c["layer"] for c in v["evaluated"]], [c["bypass_T"] for c in v["evaluated"]]) for v in s.values()]
    rho_sep = [
        _spearman(*zip(*[(c["layer"], c["sep_N"]) for c in v["evaluated"] if c["sep_N"] is not None]))
        for v in s.values()
    ]
    row = {x["layer"]: x for x in sep}
    pairs = [  # sep_N (mean-difference AUC at row l−1) vs the logistic probe's balanced accuracy at that row
        (v["chosen"]["sep_N"], row[v["layer"] - 1]["probe_vs_rest"][d])
        for d, v in s.items()
        if v["position"] == r["separation_position"] and v["chosen"]["sep_N"] is not None
    ]
    tight = best_sil["silhouette"] < 0.2 and best_min["probe_vs_rest_min"] >= 0.9
    at_last = sum(layer == max_layer for layer in layers)
    separation = (
        f"**Separation.** The multiclass probe over all {len(r['domains']['probe_all'])} domains reaches 90% "
        f"{_first(sep, 'probe_all', 0.9)} (best {_f(best_all['probe_all'])} at layer {best_all['layer']}; chance "
        f"{_f(sep[0]['chance_all'])}). Every harmful domain is told apart from the other harmful domains with ≥ 90% "
        f"balanced accuracy {_first(sep, 'probe_vs_rest_min', 0.9)} (best worst-domain accuracy "
        f"{_f(best_min['probe_vs_rest_min'])} at layer {best_min['layer']}); the hardest domain to separate is "
        f"{hardest} (best {_f(peak[hardest])}). The silhouette of the harmful domains peaks at "
        f"{_f(best_sil['silhouette'], 3)} (layer {best_sil['layer']})"
        + (": the domains are linearly separable but do not form tight clusters in cosine distance. " if tight else ". ")
        + "At layer 0 the last position is the same template token for every prompt, so nothing separates there."
        + (
            f" Separation is best after the last eligible layer ({max_layer}), which the search cannot use."
            if best_all["layer"] > max_layer and best_min["layer"] > max_layer
            else ""
        )
    )
    choices = (
        f"**Choices.** The search chose layers {', '.join(map(str, layers))} (eligible: 1–{max_layer}) at "
        f"position(s) {', '.join(map(str, positions))}"
        + (f"; {at_last} of {len(layers)} at the last eligible layer. " if at_last else ". ")
        + (
            f"For {', '.join(failed)} no scored candidate reached bypass_T ≤ {cfg['bypass_max']} and the bound "
            "was dropped. "
            if failed
            else f"Every domain met the bypass bound (bypass_T ≤ {cfg['bypass_max']}). "
        )
        + "The chosen edit, applied to every prompt, also lowers the refusal score of the other harmful domains by "
        f"{_f(min(drop), 1)}–{_f(max(drop), 1)} (vanilla retain_N minus edited retain_N): under the default rule, "
        "retention rests on separability (`sep_N`), i.e. on the bake acting on the target alone. The chosen "
        f"candidate's sep_N is at most {_f(max(gaps), 3)} below the best sep_N among the scored candidates. "
        f"Among the scored candidates, bypass_T falls with the layer (Spearman ρ(layer, bypass_T) "
        f"{_f(min(rho))} to {_f(max(rho))} per domain), while sep_N follows the layer less consistently "
        f"(ρ(layer, sep_N) {_f(min(rho_sep))} to {_f(max(rho_sep))}); with α = {cfg['alpha']} the stronger bypass "
        "of later layers mostly decides, and the choice lands at or near the layer cap."
        + (
            f" sep_N (a mean-difference AUC, threshold-free) reads higher than the logistic probe's balanced "
            f"accuracy at the same row: {_f(min(a for a, _ in pairs))}–{_f(max(a for a, _ in pairs))} vs "
            f"{_f(min(b for _, b in pairs))}–{_f(max(b for _, b in pairs))} for the choices at position "
            f"{r['separation_position']}."
            if pairs
            else ""
        )
    )
    return f"{separation}\n\n{choices}"


def render(r: dict) -> str:
    """The Markdown page from the measured numbers."""
    cfg, s, sep, t = r["config"], r["searches"], r["separation"], r["timings_s"]
    harmful = r["domains"]["harmful"]
    sub = f" **Sub-sampled run: {r['limit']} train prompts per domain.**" if r["limit"] else ""
    out = [
        "# Direction search and layer-wise domain separation\n",
        (f"Model: `{r['model']}` ({r['n_layers']} layers, post-instruction positions {r['positions']}). Numbers "
         f"from `scripts/search_report.py`; all of them are in `benchmarks/results/search_report.json`.{sub}\n"),
        EXPLANATION.format(keep=1 - cfg["drop_last_frac"], drop=cfg["drop_last_frac"], **cfg),
        "## Chosen direction per domain\n",
        ("| domain | layer | position | bypass_T | retain_N | retain_min | sep_N | kl_H | ablate bypass_T "
         "| vanilla bypass_T | vanilla retain_N | fallback |"),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for d, v in s.items():
        c, van = v["chosen"], v["vanilla"]
        out.append(
            f"| {d} | {v['layer']} | {v['position']} | {_f(c['bypass_T'])} | {_f(c['retain_N'])} | "
            f"{_f(c.get('retain_min'))} | {_f(c['sep_N'], 3)} | {_f(c['kl_H'], 3)} | {_f(c.get('ablate_bypass_T'))} | "
            f"{_f(van['bypass_T'])} | {_f(van['retain_N'])} | {'bypass bound dropped' if v['fallback'] else '–'} |"
        )
    path = "; ".join(
        f"{d}: " + ", ".join(f"({a['layer']}, {a['position']})" for a in v["alpha_path"] if a["alpha"] in (0, 0.5, 1))
        for d, v in s.items()
    )
    train = ", ".join(f"{d} {n}" for d, n in r["train_prompts"].items())
    out += [
        f"\n(layer, position) chosen for α = 0, 0.5, 1: {path}.\n",
        "## Domain separation per layer\n",
        (f"At the last post-instruction position ({r['separation_position']}), train prompts ({train}), features "
         "standardised per layer. `silhouette`: cosine silhouette of the harmful domains; `probe all`: 5-fold CV "
         f"accuracy of a multiclass logistic probe over {', '.join(r['domains']['probe_all'])} (chance = majority "
         f"share {_f(sep[0]['chance_all'])}); per domain: balanced CV accuracy of that domain vs the other harmful "
         "domains (chance 0.5). Row l is `resid_pre` of layer l (the input of block l); a direction chosen at layer "
         "l is baked into block l−1, whose input (row l−1) is where its `sep_N` is measured. ← marks the layers the "
         "search chose.\n"),
        "| layer | silhouette | probe all | " + " | ".join(harmful) + " |",
        "|---:|---:|---:|" + "---:|" * len(harmful),
    ]
    chosen_at: dict[int, list[str]] = {}
    for d, v in s.items():
        chosen_at.setdefault(v["layer"], []).append(d)
    for x in sep:
        mark = f" ← {', '.join(chosen_at[x['layer']])}" if x["layer"] in chosen_at else ""
        cells = " | ".join(_f(x["probe_vs_rest"][d]) for d in harmful)
        out.append(f"| {x['layer']}{mark} | {_f(x['silhouette'], 3)} | {_f(x['probe_all'])} | {cells} |")
    per_domain = ", ".join(f"{d} {t[f'search_{d}']:.0f} s" for d in s)
    stages = ", ".join(
        f"{k} {sorted(v['timings_s'][k] for v in s.values())[len(s) // 2]:.0f} s" for k in ("vanilla", "proxy", "causal")
    )
    m = r["machine"]
    out += [
        "\n## What we see\n",
        what_we_see(r) + "\n",
        "## Does the search score predict the bake?\n",
        "See the study in benchmarks/results/search_bake_study.json (to be filled in)\n",
        "## Timings\n",
        (f"On {m['platform']} with {m['torch_threads']} torch threads, under `nice -n 19` on a shared 2-core machine "
         f"with other jobs running (1-minute load average {m['load_avg_1min_at_end']} at the end): upper bounds.\n"),
        (f"- model and data: {t['load']:.0f} s; train residuals of all {len(r['train_prompts'])} domains, once: "
         f"{t['residuals']:.0f} s;"),
        f"- search per domain: {per_domain};",
        f"- stages of one search (median over domains): {stages};",
        f"- separation table ({len(sep)} layers, {1 + len(harmful)} probes each): {t['separation']:.0f} s.\n",
        "## Reproduce\n",
        "```",
        "nice -n 19 .venv/bin/python scripts/search_report.py            # all domains, all train prompts (~20 min)",
        "nice -n 19 .venv/bin/python scripts/search_report.py --limit 4 --domains cyber hate --json /tmp/q.json --md /tmp/q.md  # quick",
        ".venv/bin/python scripts/search_report.py --from-json benchmarks/results/search_report.json   # re-render",
        "```",
        "",
    ]
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=None, help="train prompts per domain (default: all)")
    ap.add_argument("--domains", nargs="+", default=None, help="harmful domains to search (default: all)")
    ap.add_argument("--no-borderline", dest="borderline", action="store_false", help="leave borderline out of the probes")
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "search_report.json"))
    ap.add_argument("--md", default=str(ROOT / "benchmarks" / "results" / "search_report.md"))
    ap.add_argument("--from-json", default=None, help="re-render the markdown from a saved JSON (no model)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    if args.from_json:
        report = json.loads(Path(args.from_json).read_text())
    else:
        report = measure(args)
        atomic_write_text(Path(args.json), json.dumps(_finite(report), indent=1, default=float) + "\n")
        print(f"wrote {args.json}")
    atomic_write_text(Path(args.md), render(report))
    print(f"wrote {args.md}")
    for d, v in report["searches"].items():
        c = v["chosen"]
        print(f"{d:16s} layer {v['layer']:2d} pos {v['position']:2d}  bypass_T {_f(c['bypass_T'])}  "
              f"sep_N {_f(c['sep_N'], 3)}  kl_H {_f(c['kl_H'], 3)}  fallback: {v['fallback'] or '-'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
