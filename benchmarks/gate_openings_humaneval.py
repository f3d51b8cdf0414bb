"""How many of the 164 HumanEval problems each gate of a run opens for.

A gated profile answers every problem its gate keeps shut exactly as vanilla (tested bit for bit), so a gate that
opens for none gives vanilla's pass@1 without generating anything. This asks only the gates' decisions (the
layers below the gate layer, a few seconds per gate), e.g. to check that retrained gates still leave HumanEval
to vanilla.

Usage: ``python benchmarks/gate_openings_humaneval.py [RUN] [--json benchmarks/results/x.json]`` (RUN: a run
folder with ``gates/<profile>/``, default the shipped run).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from palette_lens.evaluate.humaneval import chat_prompt, load_problems
from palette_lens.evaluate.utility import UtilityConfig
from palette_lens.gate.gated_profile import GatedProfile
from palette_lens.models.loading import load_model
from palette_lens.pipeline.run_folder import RunFolder
from palette_lens.pipeline.runs import load_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", nargs="?", default="builtin")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    model = load_model()
    run = load_run(args.run, model)
    prompts = [chat_prompt(p, UtilityConfig().template) for p in load_problems()]
    opened = {}
    for folder in sorted(p for p in (RunFolder(run.folder).root / "gates").iterdir() if p.is_dir()):
        gate = run.gate(folder.name, model)
        profile = GatedProfile(model, [run.adapters[d] for d in gate.domains], gate)
        opened[folder.name] = {"opened": int(profile.decide(prompts).opened.sum()), "n": len(prompts),
                               "gate_parts": gate.calibration.get("config", {}).get("parts")}
        print(f"{folder.name}: opened for {opened[folder.name]['opened']} of {len(prompts)}", flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps({"run": str(args.run), "gates": opened}, indent=1) + "\n")


if __name__ == "__main__":
    main()
