"""``palette-lens search``: multi-objective refusal-direction search for one target domain, with figures."""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from palette_lens.cli.checks import check_output_folder
from palette_lens.cli.common import echo, load_data_from_args, load_model_from_args
from palette_lens.cli.options import add_data_arguments, add_model_arguments, add_output_argument
from palette_lens.cli.value_types import fraction, non_negative_int, positive_float, positive_int
from palette_lens.errors import PaletteError
from palette_lens.pipeline.run_folder import RunFolder
from palette_lens.util.atomic import atomic_write_text

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    add_data_arguments(parser)
    parser.add_argument("--target", required=True, metavar="DOMAIN", help="the target (authorized) harmful domain")
    add_output_argument(parser, "runs/search-<target>")
    parser.add_argument("--alpha", type=fraction, default=None, metavar="A",
                        help="the search's trade-off: 1 = bypass only, 0 = retention only (default: 0.5)")
    parser.add_argument("--retain", choices=["causal", "sep", "both"], default=None,
                        help="retention objective (default: sep)")
    parser.add_argument("--top-k", type=non_negative_int, default=None, metavar="K",
                        help="candidates scored causally (0: all, no pruning) (default: 10)")
    parser.add_argument("--kl-max", type=positive_float, default=None, metavar="X",
                        help="largest harmless first-token KL (default: none under the default one-block edit)")
    parser.add_argument("--n-val", type=positive_int, default=None, metavar="N",
                        help="validation prompts of target and harmless (default: 12)")
    parser.add_argument("--no-figures", action="store_true", help="skip the HTML figures and domain views")
    parser.add_argument("--views-every", type=positive_int, default=3, metavar="N", help="t-SNE every N layers")


def run(args: argparse.Namespace) -> int:
    from palette_lens.data.records import HARMLESS
    from palette_lens.search.candidates import collect_domain_residuals
    from palette_lens.search.direction_search import search_direction
    from palette_lens.search.result import SearchConfig

    out = check_output_folder(args.out or f"runs/search-{args.target}")
    prompts = load_data_from_args(args)
    prompts.check_domain(args.target)
    if args.target not in prompts.harmful_domains:
        raise PaletteError(f"the target must be a harmful domain, not {args.target!r}")
    overrides = {
        "alpha": args.alpha, "retain": args.retain, "kl_max": args.kl_max, "n_val": args.n_val,
        "top_k": (None if args.top_k == 0 else args.top_k) if args.top_k is not None else "keep",
    }
    cfg = SearchConfig(**{k: v for k, v in overrides.items() if v is not None and v != "keep"})
    model = load_model_from_args(args)
    residuals = collect_domain_residuals(model, prompts, [*prompts.harmful_domains, HARMLESS], limit=cfg.n_train)
    result = search_direction(model, prompts, args.target, residuals=residuals, config=cfg)
    path = result.save(out)
    written = [path, RunFolder(out).directions_dir / f"{args.target}.safetensors"]
    if not args.no_figures:
        written += _figures(result, residuals, out, args.views_every)
    ch = result.chosen_row
    echo(f"target {args.target!r}: chose layer {ch['layer']} position {ch['position']}")
    echo(
        f"  bypass_T {ch['bypass_T']:.2f} (vanilla {result.vanilla['bypass_T']:.2f})  "
        f"retain_N {ch['retain_N']:.2f} (vanilla {result.vanilla['retain_N']:.2f})  "
        f"sep_N {ch['sep_N'] if ch['sep_N'] is not None else float('nan'):.2f}  kl_H {ch['kl_H']:.3f}"
    )
    if result.fallback:
        echo(f"  note: {result.fallback}")
    echo(f"  {sum(c['evaluated'] for c in result.candidates)} of {len(result.candidates)} candidates scored "
         f"causally in {result.timings_s.get('total', 0):.0f} s")
    echo("written: " + ", ".join(str(p) for p in written))
    return 0


def _figures(result, residuals, out: Path, every: int) -> list[Path]:
    from palette_lens.data.records import BORDERLINE
    from palette_lens.geometry.separation import layer_separation, tsne_layers
    from palette_lens.viz.common import write_figures
    from palette_lens.viz.geometry import separation_figure, tsne_figure
    from palette_lens.viz.search import objective_heatmaps, pareto_figure

    t0 = time.perf_counter()
    domains = [d for d in residuals if d != BORDERLINE]
    pos = result.chosen.position
    sep = layer_separation(residuals, target=result.target, domains=domains, position=pos)
    layers = sorted(set(range(0, max(residuals[result.target].layers) + 1, max(1, every))) | {result.chosen.layer})
    emb = tsne_layers(residuals, layers=layers, domains=domains, position=pos)
    figs = {
        "heatmaps": objective_heatmaps(result),
        "pareto": pareto_figure(result),
        "separation": separation_figure(sep, result.target),
        "tsne": tsne_figure(emb),
    }
    paths = [write_figures(figs, out / "figures.html", title=f"palette-lens search: {result.target}")]
    paths.append(atomic_write_text(out / "separation.json", json.dumps({"position": pos, "layers": sep}, indent=1)))
    log.info("figures and domain views in %.0f s", time.perf_counter() - t0)
    return paths
