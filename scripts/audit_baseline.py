"""Audit the built-in prompt data against the default model's baseline refusal (issue 2).

Generates the vanilla greedy completion (64 new tokens) of **every** prompt of every built-in domain (train,
validation and test) with the library's own evaluation path (:func:`palette_lens.evaluate.evaluator.generate_completions`
on the plain HF copy of the model, the same path :class:`palette_lens.evaluate.evaluator.Evaluator` uses for vanilla
generations), judges each with the keyword judge :func:`palette_lens.refusal.judge.is_refusal`, and prints:

- per domain, the refusal rate on all prompts, on train+validation and on the test split;
- every harmful prompt the model answers and every harmless prompt it refuses (file line, split, the
  completion's first characters), i.e. the prompts to revise;
- with ``--markdown``, the test-split table (n, rate, Wilson 95% interval) as on the results page (``docs/results.md``).

Completions are cached by prompt text in a JSON file outside the repository (default
``/tmp/palette_audit/completions.json``), so after editing a few prompts only those are generated again.
Generation settings are the evaluator's defaults (:class:`palette_lens.evaluate.evaluator.EvalConfig`: greedy, 64 new
tokens, two phases with a 12-token first phase, a sequence that already holds a refusal marker after the first
phase is not continued), so the rates equal those of the pipeline's vanilla evaluation. Nothing generated is
written into the repository.

Usage::

    .venv/bin/python scripts/audit_baseline.py [--cache FILE] [--batch-size 48] [--markdown] [--show N]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from palette_lens.data.prompts import builtin_data_dir, load_prompts
from palette_lens.data.records import BORDERLINE, HARMLESS, read_jsonl  # noqa: E402
from palette_lens.evaluate.vanilla import BaselineTable, DomainRefusal
from palette_lens.refusal.judge import is_refusal, refusal_markers_found  # noqa: E402
from palette_lens.util.stats import wilson_interval  # noqa: E402
from palette_lens.util.text import truncate

MAX_NEW_TOKENS = 64


def load_cache(path: Path) -> dict[str, dict]:
    if path.is_file():
        return json.loads(path.read_text())
    return {}


def save_cache(path: Path, cache: dict[str, dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(cache, ensure_ascii=False))
    os.replace(tmp, path)


def _stale(entry: dict) -> bool:
    """A completion cut short on a refusal verdict that the current judge no longer gives (the judge changed)."""
    cut = not entry["ended"] and entry["n_tokens"] < MAX_NEW_TOKENS
    return cut and not is_refusal(entry["completion"])


def generate_missing(
    prompts: list[str], cache: dict[str, dict], cache_path: Path, batch_size: int, chunk: int, threads: int
) -> None:
    """Generate the prompts not in ``cache`` (in chunks, saving after each)."""
    todo = [p for p in dict.fromkeys(prompts) if p not in cache or _stale(cache[p])]
    if not todo:
        return
    import torch

    from palette_lens.generation.greedy import generate_completions
    from palette_lens.models.copies import plain_hf_model
    from palette_lens.models.loading import load_model

    torch.set_num_threads(threads)
    model = load_model()
    lm = plain_hf_model(model)
    print(f"generating {len(todo)} completions ({model.name})", file=sys.stderr)
    t0 = time.perf_counter()
    for start in range(0, len(todo), chunk):
        part = todo[start : start + chunk]
        gen = generate_completions(
            model, part, lm=lm, max_new_tokens=MAX_NEW_TOKENS, batch_size=batch_size, first_phase=12,
            stop_on_refusal=True,
        )
        for p, text, n, ended in zip(part, gen.texts, gen.n_tokens, gen.ended):
            cache[p] = {"completion": text, "n_tokens": n, "ended": ended, "model": model.name}
        save_cache(cache_path, cache)
        print(f"  {min(start + chunk, len(todo))}/{len(todo)} done, {time.perf_counter() - t0:.0f}s", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", default="/tmp/palette_audit/completions.json")
    ap.add_argument("--batch-size", type=int, default=48)
    ap.add_argument("--chunk", type=int, default=96, help="prompts generated between cache saves")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1 is fastest on busy shared cores: no spin-waiting for a busy core)")
    ap.add_argument("--markdown", action="store_true", help="print the test-split table in Markdown")
    ap.add_argument("--show", type=int, default=1000, help="list at most N flagged prompts per domain")
    ap.add_argument("--json", default=None, help="also write the per-domain numbers to this JSON file")
    args = ap.parse_args(argv)

    cache_path = Path(args.cache)
    cache = load_cache(cache_path)
    ps = load_prompts()
    generate_missing([p for d in ps.domains for p in ps.prompts(d)], cache, cache_path, args.batch_size, args.chunk,
                     args.threads)

    # File line numbers, to find a flagged prompt in data/<domain>.jsonl.
    line_of: dict[tuple[str, str], int] = {}
    for f in sorted(builtin_data_dir().glob("*.jsonl")):
        for i, r in enumerate(read_jsonl(f), start=1):
            line_of[(r.domain, r.prompt)] = i

    summary: dict[str, dict] = {}
    rows: dict[str, DomainRefusal] = {}
    header = f"{'domain':<16}{'all':>14}{'train+val':>14}{'test':>14}  test 95% CI"
    print(header)
    print("-" * len(header))
    for d in ps.domains:
        sp = ps.split(d)
        train = set(sp.train) | set(sp.val)
        flags = {p: is_refusal(cache[p]["completion"]) for p in ps.prompts(d)}
        test = [flags[p] for p in sp.test]
        tv = [flags[p] for p in ps.prompts(d) if p in train]
        allf = list(flags.values())
        lo, hi = wilson_interval(sum(test), len(test))
        print(f"{d:<16}{sum(allf):>4}/{len(allf):<4}{sum(allf) / len(allf):>5.0%}"
              f"{sum(tv):>4}/{len(tv):<4}{sum(tv) / len(tv):>5.0%}"
              f"{sum(test):>4}/{len(test):<4}{sum(test) / len(test):>5.0%}  {lo:.0%}–{hi:.0%}")
        summary[d] = {"n_all": len(allf), "refused_all": sum(allf), "n_trainval": len(tv), "refused_trainval": sum(tv),
                      "n_test": len(test), "refused_test": sum(test)}
        ex = [{"prompt": truncate(p, 120), "completion": truncate(cache[p]["completion"]), "refused": flags[p]}
              for p in sp.test[:3]]
        rows[d] = DomainRefusal(d, len(test), sum(test), ex)

    print()
    for d in ps.domains:
        sp = ps.split(d)
        train = set(sp.train) | set(sp.val)
        if d in (HARMLESS, BORDERLINE):
            flagged = [p for p in ps.prompts(d) if is_refusal(cache[p]["completion"])]
            what = "judged refusals"
        else:
            flagged = [p for p in ps.prompts(d) if not is_refusal(cache[p]["completion"])]
            what = "answered (not refused)"
        if not flagged:
            continue
        print(f"## {d}: {len(flagged)} {what}")
        for p in flagged[: args.show]:
            c = cache[p]["completion"]
            markers = refusal_markers_found(c)
            tag = "train" if p in train else "test "
            print(f"  L{line_of.get((d, p), 0):<4}{tag} {p}")
            print(f"        -> {truncate(c, 150)!r}" + (f"  markers={markers}" if markers else ""))
        print()

    if args.markdown:
        table = BaselineTable("Qwen2.5-Coder-0.5B-Instruct (embedded default)", "test", MAX_NEW_TOKENS, rows)
        print(table.markdown())
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
