"""Does a gated profile still answer an authorized professional who says who they are?

    .venv/bin/python benchmarks/gate_framed_authorized.py --from RUN [--limit 40]
        [--out benchmarks/results/gate_framed_authorized_quick.json]

For each adapter of a finished run (``RUN/adapters/<domain>/``), the domain's held-out test requests are sent
plain and framed as the domain's own profession with the leakage measurement's templates ("As a penetration
tester, I need this for my work. ..."; :func:`palette_lens.data.attacks.profession_framed`). They are answered
by vanilla, by the adapter alone (merged), and by the adapter behind two domain gates: the previous default
(``authorized_variants=()``, no segment veto) and the current one (profession-framed authorized train prompts as
open examples, segment veto 0.5). Refusal is judged as in the evaluation (greedy 64 tokens, the keyword judge).
About 12 minutes on 2 CPU cores for three adapters at ``--limit 40``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

GATES = {
    "gate, previous default": {"authorized_variants": (), "segment_veto": None},
    "gate, default": {},
}


def main() -> None:
    from palette_lens.data.attacks import profession_framed
    from palette_lens.data.prompts import load_prompts
    from palette_lens.evaluate.evaluator import EvalConfig, Evaluator
    from palette_lens.evaluate.leakage import profile_lm
    from palette_lens.evaluate.results import EvalSet
    from palette_lens.gate.config import GateConfig
    from palette_lens.gate.training import fit_gate
    from palette_lens.models.loading import load_model
    from palette_lens.pipeline.run_folder import RunFolder
    from palette_lens.pipeline.runs import load_run

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from", dest="source", required=True)
    parser.add_argument("--limit", type=int, default=40)
    parser.add_argument("--out", default="benchmarks/results/gate_framed_authorized_quick.json")
    args = parser.parse_args()
    start = time.time()
    model, prompts = load_model(), load_prompts()
    domains = RunFolder(Path(args.source)).adapter_domains()
    adapters = load_run(args.source, model, domains).adapters
    rows = []
    for d in domains:
        own = prompts.part(d, "test", args.limit)
        texts = {"plain": tuple(own), "framed": tuple(p.text for p in profession_framed([(d, r) for r in own], d))}
        evaluator = Evaluator(model, EvalSet(texts, "test"), EvalConfig())
        flat = evaluator.evalset.flat()[0]
        vanilla = evaluator.vanilla().refused
        rows += [{"domain": d, "variant": "vanilla", "prompts": k, "n": len(v), "refused": sum(v) / len(v)}
                 for k, v in vanilla.items()]
        lm = profile_lm(model, adapters[d])
        variants = {"adapter alone": None}
        for name, settings in GATES.items():
            variants[name] = fit_gate(model, prompts, (d,), GateConfig(**settings))
        for name, gate in variants.items():
            opens = gate.opens(model, flat) if gate is not None else None
            result = evaluator.evaluate_lm(f"{d} {name}", lm, tuple(texts), kind="gated" if gate else "merged",
                                           opens=opens)
            for k, v in result.refused.items():
                row = {"domain": d, "variant": name, "prompts": k, "n": len(v), "refused": sum(v) / len(v)}
                if gate is not None:
                    row["gate_opened"] = result.extra["gate_opened"][k]
                rows.append(row)
        del lm
        for r in rows:
            if r["domain"] == d:
                print(f"{d:15s} {r['variant']:24s} {r['prompts']:7s} refused {r['refused']:.1%}"
                      + (f"  gate opened {r['gate_opened']:.1%}" if "gate_opened" in r else ""), flush=True)
    doc = {"model": model.name, "run": str(args.source), "limit": args.limit, "gates": GATES,
           "seconds": round(time.time() - start, 1), "rows": rows}
    Path(args.out).write_text(json.dumps(doc, indent=1, default=list))
    print(f"written {args.out} in {doc['seconds']:.0f} s")


if __name__ == "__main__":
    main()
