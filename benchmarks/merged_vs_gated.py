"""Merged vs gated (and, with a second run folder, gated with merged routing), per profile, from finished runs.

Reads ``metrics.json`` and ``details.json`` of a ``demo`` / ``run`` / ``evaluate`` folder (every profile evaluated
merged and as one gated model) and prints a Markdown table: per profile and form, the worst authorized refusal,
the worst and mean share of baseline refusal kept on the other harmful domains, the harmless refusal change and
KL, the borderline change, F1, the share of authorized and of other harmful prompts the gate opened for, and
whether the floors are met. ``--routing-from DIR`` adds the rows of a second folder evaluated with
``--gate-routing merged`` (named ``gated, merged routing``). Writes the same rows as JSON with ``--json FILE``.

Usage: ``python benchmarks/merged_vs_gated.py RUN [--routing-from RUN2] [--json benchmarks/results/x.json]``
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from palette_lens.evaluate.floors import check_floors


def rows_of(folder: Path, gated_label: str = "gated") -> list[dict]:
    """One row per profile and form (merged, gated) of a finished run folder."""
    metrics = json.loads((folder / "metrics.json").read_text())
    details = json.loads((folder / "details.json").read_text())
    base, harmful = metrics["baseline"]["refusal_rate"], metrics["domains"]
    widen = details.get("floors_widened_by", 0.0)
    rows = []
    for name, profile in metrics["profiles"].items():
        forms = [("merged", profile)] + ([(gated_label, profile["gated"])] if "gated" in profile else [])
        for form, entry in forms:
            rates = entry["refusal_rate"]
            floors = check_floors(rates, base, profile["authorized"], harmful, entry["harmless_kl"], widen)
            kept = floors["kept_ratio"]
            opened = entry.get("opened", {})
            others = [d for d in harmful if d not in profile["authorized"]]
            rows.append({
                "profile": name, "form": form,
                "authorized_refusal_worst": max(rates[d] for d in profile["authorized"]),
                "kept_worst": min(kept.values()), "kept_mean": sum(kept.values()) / len(kept),
                "kept_worst_domain": min(kept, key=kept.get),
                "harmless_up": rates.get("harmless", 0.0) - base.get("harmless", 0.0),
                "harmless_kl": entry["harmless_kl"],
                "borderline_up": rates.get("borderline", 0.0) - base.get("borderline", 0.0),
                "f1": entry["f1"],
                "opened_authorized_worst": min(opened[d] for d in profile["authorized"]) if opened else None,
                "opened_other_most": max(opened[d] for d in others) if opened else None,
                "floors_ok": floors["ok"],
                "recommended": details.get("recommended", {}).get(name, {}).get("deployment"),
            })
    return rows


def markdown(rows: list[dict]) -> str:
    def pct(x: float | None) -> str:
        return "–" if x is None else f"{100 * x:.1f}%"

    lines = [("| profile | form | authorized refusal (worst) | kept (worst) | kept (mean) | harmless Δ / KL | "
              "borderline Δ | F1 | gate opened: authorized / other harmful | floors |"),
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(
            f"| {r['profile']} | {r['form']} | {pct(r['authorized_refusal_worst'])} | {pct(r['kept_worst'])} "
            f"({r['kept_worst_domain']}) | {pct(r['kept_mean'])} | {100 * r['harmless_up']:+.1f} pts / "
            f"{r['harmless_kl']:.3f} | {100 * r['borderline_up']:+.1f} pts | {r['f1']:.2f} | "
            f"{pct(r['opened_authorized_worst'])} / {pct(r['opened_other_most'])} | "
            f"{'met' if r['floors_ok'] else '**not met**'} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--routing-from", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    rows = rows_of(args.run)
    if args.routing_from is not None:
        extra = [r for r in rows_of(args.routing_from, "gated, merged routing") if r["form"] != "merged"]
        order = {r["profile"]: i for i, r in enumerate(rows)}
        rows = sorted(rows + extra, key=lambda r: (order.get(r["profile"], len(rows)), r["form"] != "merged"))
    print(markdown(rows))
    if args.json is not None:
        args.json.write_text(json.dumps({"run": str(args.run), "routing_from": str(args.routing_from or ""),
                                         "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
