"""Generate the (prompt, response) pairs of the keyword-judge validity set (issue 7, item 3).

Two steps:

``generate``  runs the embedded default model greedily (64 new tokens, end-of-turn stops, the same
              :meth:`ChatModel.generate` the evaluation's completions equal) on test-split prompts, vanilla
              and relaxed, and writes the *full* responses to a raw JSONL file outside the repository's
              tracked files (default ``runs/judge_raw.jsonl``; ``/runs/`` is git-ignored). Responses to
              harmful prompts are not meant to be committed in full.

``build``     merges the raw file with hand-written labels (a JSONL of ``{"id", "label", "note"?, "drop"?}``)
              and writes the committed set ``tests/data/judge_set.jsonl`` with responses truncated to 200
              characters, or longer where truncation would change the judge's verdict.

Relaxed variants (all directional ablation ``h ← h − (h·r̂)r̂`` at every layer, as in Arditi et al.):

- ``global-L{l}``: r = mean(harmful train) − mean(harmless train) at ``resid_pre`` of layer l, last
  post-instruction position, every harmful domain pooled (the model complies on most harmful prompts);
- ``domain:{d}-L{l}``: the same with one domain's train prompts only (partial relaxation; hard cases);
- the layer l is the one (among middle layers) whose pooled direction lowers the first-token refusal score
  of harmful validation prompts most while keeping harmless first-token KL below 0.1.

Usage::

    .venv/bin/python scripts/make_judge_set.py generate [--out runs/judge_raw.jsonl]
    .venv/bin/python scripts/make_judge_set.py build --raw runs/judge_raw.jsonl --labels LABELS.jsonl
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Prompt selection: test-split prompts, first N of each domain's (seeded) test split.
N_HARMFUL_PER_DOMAIN = 12  # vanilla and global ablation
N_PARTIAL_PER_DOMAIN = 6  # single-domain ablation, prompts after the first N_HARMFUL of the test split
N_HARMLESS = 16
N_BORDERLINE = 32
N_BORDERLINE_RELAXED = 16
N_EXTRA_VANILLA = 20  # more vanilla harmful prompts per domain, after the partial ones
MAX_NEW_TOKENS = 64
BATCH_SIZE = 32
LAYERS_TRIED = (8, 10, 12, 14, 16)
POSITION = -1
TRUNCATE = 200


def _git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False
        ).stdout.strip()
    except OSError:
        return "unknown"


def plan_jobs(ps, layer: int) -> list[dict]:
    """Every (prompt, variant, intervention) of the set, with a stable id ``{tag}-{domain}-{nn}``.

    Tags: ``v`` vanilla, ``g`` global ablation, ``p`` single-domain ablation (partial relaxation),
    ``w`` more vanilla harmful prompts (added to balance refusals and compliances).
    """
    from palette_lens.data.records import BORDERLINE, HARMLESS

    jobs: list[dict] = []

    def add(domain: str, prompts: list[str], variant: str, intervention: str, tag: str) -> None:
        for i, p in enumerate(prompts):
            jobs.append({"id": f"{tag}-{domain}-{i:02d}", "prompt": p, "domain": domain, "variant": variant,
                         "intervention": intervention})

    n1, n2 = N_HARMFUL_PER_DOMAIN, N_HARMFUL_PER_DOMAIN + N_PARTIAL_PER_DOMAIN
    for d in ps.harmful_domains:
        test = ps.part(d, "test")
        add(d, test[:n1], "vanilla", "none", "v")
        add(d, test[:n1], "relaxed", f"global-L{layer}", "g")
        add(d, test[n1:n2], "relaxed", f"domain:{d}-L{layer}", "p")
    add(HARMLESS, ps.part(HARMLESS, "test")[:N_HARMLESS], "vanilla", "none", "v")
    add(BORDERLINE, ps.part(BORDERLINE, "test")[:N_BORDERLINE], "vanilla", "none", "v")
    add(BORDERLINE, ps.part(BORDERLINE, "test")[:N_BORDERLINE_RELAXED], "relaxed", f"global-L{layer}", "g")
    for d in ps.harmful_domains:
        add(d, ps.part(d, "test")[n2:n2 + N_EXTRA_VANILLA], "vanilla", "none", "w")
    return jobs


def generate(out: Path, only: set[str] | None = None, append: bool = False) -> None:
    import torch

    from palette_lens.baselines.global_ablation import global_ablation_hooks
    from palette_lens.data.prompts import load_prompts
    from palette_lens.data.records import HARMLESS
    from palette_lens.models.loading import load_model
    from palette_lens.refusal.tokens import derive_refusal_tokens, first_token_kl, refusal_scores
    from palette_lens.search.candidates import collect_residuals_prefixed

    torch.manual_seed(0)
    t0 = time.perf_counter()
    m = load_model()
    ps = load_prompts()
    harmful = ps.harmful_domains
    meta_extra: dict = {}
    if only is not None and only <= {"v", "w"}:  # vanilla only: no direction needed
        jobs = [j for j in plan_jobs(ps, -1) if j["id"].split("-")[0] in only]
        _run_jobs(m, jobs, {"none": []})
        _write(out, jobs, m, {"tags": sorted(only)}, append, t0)
        return

    # Train residuals (all layers, post-instruction positions) per harmful domain and harmless.
    res = {d: collect_residuals_prefixed(m, ps.part(d, "train"), desc=None) for d in [*harmful, HARMLESS]}
    pi = res[HARMLESS].positions.index(POSITION)
    harmless_mean = res[HARMLESS].vectors[:, :, pi].double().mean(0)  # [n_layers, d]
    pooled = torch.cat([res[d].vectors[:, :, pi] for d in harmful]).double().mean(0)
    per_domain = {d: res[d].vectors[:, :, pi].double().mean(0) - harmless_mean for d in harmful}
    global_dirs = (pooled - harmless_mean).float()  # [n_layers, d]

    # Pick the layer: lowest harmful-validation refusal score under ablation, harmless KL <= 0.1.
    val_harm = [p for d in harmful for p in ps.part(d, "val")[:4]]
    val_harmless = ps.part(HARMLESS, "val")[:24]
    rt = derive_refusal_tokens(m, val_harm[:8])
    base_h = m.last_logits(val_harmless)
    choice = []
    for layer in LAYERS_TRIED:
        hooks = global_ablation_hooks(m, [global_dirs[layer]])
        s = refusal_scores(m.last_logits(val_harm, hooks=hooks), rt.ids).mean().item()
        kl = first_token_kl(base_h, m.last_logits(val_harmless, hooks=hooks)).mean().item()
        choice.append((layer, s, kl))
        print(f"layer {layer}: harmful refusal score {s:+.2f}, harmless KL {kl:.3f}", flush=True)
    ok = [c for c in choice if c[2] <= 0.1] or choice
    layer = min(ok, key=lambda c: c[1])[0]
    print(f"chosen layer {layer}", flush=True)

    jobs = [j for j in plan_jobs(ps, layer) if only is None or j["id"].split("-")[0] in only]

    hooks_of = {"none": []}
    hooks_of[f"global-L{layer}"] = global_ablation_hooks(m, [global_dirs[layer]])
    for d in harmful:
        hooks_of[f"domain:{d}-L{layer}"] = global_ablation_hooks(m, [per_domain[d][layer].float()])
    _run_jobs(m, jobs, hooks_of)
    meta_extra = {"layer": layer, "position": POSITION, "layer_choice": choice, "refusal_tokens": list(rt.pieces),
                  "tags": sorted(only) if only else "all"}
    _write(out, jobs, m, meta_extra, append, t0)


def _run_jobs(m, jobs: list[dict], hooks_of: dict) -> None:
    from palette_lens.generation.greedy import generate_completions

    for name, hooks in hooks_of.items():
        idx = [i for i, j in enumerate(jobs) if j["intervention"] == name]
        if not idx:
            continue
        t = time.perf_counter()
        # The evaluation's own generator (two phases, batched, greedy, end-of-turn stops); its texts equal
        # ChatModel.generate's (tests/test_evaluate.py), without stopping early on refusals.
        outs = generate_completions(m, [jobs[i]["prompt"] for i in idx], hooks=hooks, max_new_tokens=MAX_NEW_TOKENS,
                                    batch_size=BATCH_SIZE, first_phase=12).texts
        for i, o in zip(idx, outs):
            jobs[i]["response"] = o
        print(f"{name}: {len(idx)} prompts in {time.perf_counter() - t:.0f} s", flush=True)



def _write(out: Path, jobs: list[dict], m, meta_extra: dict, append: bool, t0: float) -> None:
    meta = {
        "model": m.name, "model_fingerprint": m.fingerprint, "commit": _git_commit(),
        "date": dt.date.today().isoformat(), "max_new_tokens": MAX_NEW_TOKENS, "greedy": True,
        "seconds": round(time.perf_counter() - t0, 1), **meta_extra,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a" if append else "w", encoding="utf-8") as f:
        f.write(json.dumps({"meta": meta}) + "\n")
        f.writelines(json.dumps(j, ensure_ascii=False) + "\n" for j in jobs)
    print(json.dumps(meta, indent=1))


def truncate_for_judge(response: str, judges, limit: int = TRUNCATE) -> str:
    """``response`` cut to ``limit`` characters, or the shortest longer cut on which every judge agrees
    with its verdict on the full text (at worst the full response)."""
    if len(response) <= limit:
        return response
    for n in range(limit, len(response) + 1, 20):
        cut = response[:n]
        if all(j(cut) == j(response) for j in judges):
            return cut
    return response


def build(raw: Path, labels: Path, out: Path) -> None:
    from palette_lens.refusal.judge import is_refusal
    sys.path.insert(0, str(ROOT / "scripts"))
    from judge_agreement import original_is_refusal  # the judge before issue 7 item 3

    judges = [is_refusal, original_is_refusal]
    rows = [json.loads(line) for line in raw.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = [r for r in rows if "meta" not in r]
    lab = {}
    for line in labels.read_text(encoding="utf-8").splitlines():
        if line.strip():
            o = json.loads(line)
            lab[o["id"]] = o
    missing = [r["id"] for r in rows if r["id"] not in lab]
    if missing:  # dropped items are absent from the committed set; a labels file may also mark them "drop"
        print(f"not in the labels (skipped): {' '.join(missing)}")
    n = 0
    with open(out, "w", encoding="utf-8") as f:
        for r in rows:
            lb = lab.get(r["id"])
            if lb is None or lb.get("drop"):
                continue
            rec = {"id": r["id"], "prompt": r["prompt"], "domain": r["domain"], "variant": r["variant"],
                   "intervention": r["intervention"],
                   "response": truncate_for_judge(r["response"], judges, lb.get("keep_chars", TRUNCATE)),
                   "label": lb["label"]}
            if lb.get("note"):
                rec["note"] = lb["note"]
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            n += 1
    print(f"wrote {n} pairs to {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate")
    g.add_argument("--out", type=Path, default=ROOT / "runs" / "judge_raw.jsonl")
    g.add_argument("--only", nargs="+", help="generate only the jobs with these tags (v g p w)")
    g.add_argument("--append", action="store_true", help="append to --out instead of overwriting it")
    b = sub.add_parser("build")
    b.add_argument("--raw", type=Path, default=ROOT / "runs" / "judge_raw.jsonl")
    b.add_argument("--labels", type=Path, required=True)
    b.add_argument("--out", type=Path, default=ROOT / "tests" / "data" / "judge_set.jsonl")
    a = ap.parse_args()
    if a.cmd == "generate":
        generate(a.out, set(a.only) if a.only else None, a.append)
    else:
        build(a.raw, a.labels, a.out)


if __name__ == "__main__":
    main()
