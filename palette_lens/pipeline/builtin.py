"""The run that ships inside the package: the embedded default model's adapters, ready without baking.

``palette_lens/pipeline/builtin_run/`` is a run folder (:class:`~palette_lens.pipeline.run_folder.RunFolder`
layout) made by :func:`make_builtin_run` on the embedded Qwen2.5-Coder-0.5B-Instruct:

- ``adapters/<domain>/`` for cyber, disinformation and hate (PEFT safetensors + JSON, ~0.75 MB each) and their
  ``bake.json`` (training history);
- ``directions/<domain>.{safetensors,json}`` and ``search/<domain>.json`` (the searches' objective tables);
- ``gates/<profile>/`` — a domain gate for every default profile (the singles, the first pair, the triple);
- ``manifest.json``: the model's weights fingerprint, the settings, and a sha256 of every other file.

The search and bake settings are those of ``palette-lens demo --quick`` (the bake's are the full preset's
too), and the inputs are the same, so the quick demo re-bakes exactly these adapters:
``tests/test_builtin_run.py`` checks that it does. :func:`load_builtin_run` (``pl.load_run()`` with no
folder, or ``"builtin"``) checks every file's hash and the model's fingerprint before reading anything.

Regenerate with ``python scripts/make_builtin_run.py`` (about 12 minutes on two CPU cores).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from palette_lens.errors import AdapterMismatchError, PaletteError
from palette_lens.pipeline.run_folder import RunFolder
from palette_lens.util.atomic import atomic_write_json
from palette_lens.util.hashing import file_sha256

if TYPE_CHECKING:
    from palette_lens.models.chat_model import ChatModel

log = logging.getLogger(__name__)

#: The name that stands for the shipped run wherever a run folder is expected (``load_run("builtin")``,
#: a notebook's ``run_dir = "builtin"``).
BUILTIN = "builtin"
#: The file listing the shipped run's model fingerprint, settings and content hashes.
MANIFEST_FILE = "manifest.json"


class BuiltinRunError(PaletteError):
    """The shipped run is damaged (a file missing or changed) or was asked of a model it was not made for."""


def builtin_run_dir() -> Path:
    """The folder of the shipped run inside the installed package.

    Examples:
        >>> builtin_run_dir().name
        'builtin_run'
    """
    return Path(__file__).resolve().parent / "builtin_run"


def is_builtin(folder: str | Path | None) -> bool:
    """Whether ``folder`` names the shipped run (None, ``"builtin"`` or the shipped folder itself).

    Examples:
        >>> is_builtin(None), is_builtin("builtin"), is_builtin("runs/demo")
        (True, True, False)
    """
    if folder is None or str(folder) == BUILTIN:
        return True
    try:
        return Path(folder).expanduser().resolve() == builtin_run_dir()
    except OSError:
        return False


def read_manifest(folder: str | Path | None = None) -> dict[str, Any]:
    """The shipped run's ``manifest.json`` (``folder``: another copy of it, e.g. a regenerated one).

    Raises:
        BuiltinRunError: no manifest (the package was installed without its data).
    """
    import json

    path = Path(folder or builtin_run_dir()) / MANIFEST_FILE
    if not path.is_file():
        raise BuiltinRunError(f"the shipped run has no {MANIFEST_FILE} at {path.parent}; reinstall palette-lens")
    return json.loads(path.read_text())


def verify_builtin_run(model: ChatModel | None = None, folder: str | Path | None = None) -> dict[str, Any]:
    """Check the shipped run before anything is read: every file's sha256, and ``model``'s fingerprint.

    Args:
        model: the model the run will be used with (None: check the files only).
        folder: the run folder (default: the shipped one).

    Returns:
        The manifest.

    Raises:
        BuiltinRunError: a listed file is missing or its content changed (reinstall palette-lens or
            regenerate the run).
        AdapterMismatchError: ``model`` is not the model the shipped run was made on.

    Examples:
        >>> manifest = verify_builtin_run()
        >>> sorted(manifest["targets"])
        ['cyber', 'disinformation', 'hate']
    """
    root = Path(folder or builtin_run_dir())
    manifest = read_manifest(root)
    if model is not None and model.fingerprint != manifest["fingerprint"]:
        raise AdapterMismatchError(
            f"the shipped adapters were made on {manifest['model']} (fingerprint {manifest['fingerprint']}), "
            f"not on {model.name!r} (fingerprint {model.fingerprint}); use the embedded default model "
            f"(load_model() with no name), or bake for this model (run_dir='' in the notebooks, "
            f"`palette-lens run` on the command line)"
        )
    bad = []
    for rel, digest in manifest["files"].items():
        path = root / rel
        if not path.is_file():
            bad.append(f"{rel} (missing)")
        elif file_sha256(path) != digest:
            bad.append(f"{rel} (changed)")
    if bad:
        raise BuiltinRunError(f"the shipped run in {root} is damaged: {', '.join(bad[:5])}"
                              + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
                              + "; reinstall palette-lens or regenerate it (scripts/make_builtin_run.py)")
    return manifest


def write_manifest(folder: str | Path, model: ChatModel, targets: Sequence[str], settings: dict[str, Any]) -> dict:
    """Hash every file of the run in ``folder`` into its ``manifest.json`` (returns the manifest)."""
    root = Path(folder)
    files = {p.relative_to(root).as_posix(): file_sha256(p) for p in sorted(root.rglob("*"))
             if p.is_file() and p.name != MANIFEST_FILE and "__pycache__" not in p.parts}
    manifest = {"model": model.name, "fingerprint": model.fingerprint, "targets": list(targets),
                "made_by": "palette_lens.pipeline.builtin.make_builtin_run", "settings": settings, "files": files}
    atomic_write_json(root / MANIFEST_FILE, manifest)
    return manifest


def make_builtin_run(
    out: str | Path, model: ChatModel | None = None, *, progress: bool = True
) -> dict[str, Any]:
    """Make the shipped run in ``out``: search, bake and gates exactly as ``palette-lens demo --quick`` does.

    Args:
        out: a new or empty folder (copy it over ``palette_lens/pipeline/builtin_run/`` to ship it).
        model: the embedded default model (loaded when None).
        progress: progress bars.

    Returns:
        The manifest written into ``out``.

    Raises:
        PaletteError: ``out`` exists and is not empty (nothing is overwritten).

    Examples:
        >>> make_builtin_run("/tmp/builtin-run")                                  # doctest: +SKIP
        {'model': 'Qwen2.5-Coder-0.5B-Instruct (embedded)', ...}
    """
    from palette_lens.compose.profiles import default_profiles
    from palette_lens.data.prompts import load_prompts
    from palette_lens.gate.config import GateConfig
    from palette_lens.gate.training import fit_gate
    from palette_lens.models.loading import load_model
    from palette_lens.pipeline.config import PipelineConfig
    from palette_lens.pipeline.run import default_targets, residual_domains
    from palette_lens.pipeline.search_and_bake import search_and_bake
    from palette_lens.search.candidates import collect_domain_residuals

    run = RunFolder(out)
    if run.root.exists() and any(run.root.iterdir()):
        raise PaletteError(f"{run.root} is not empty; give a new folder (nothing was overwritten)")
    model = model if model is not None else load_model()
    prompts = load_prompts()
    config = PipelineConfig.quick_preset()
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    residuals = collect_domain_residuals(model, prompts, residual_domains(prompts), limit=config.n_train)
    timings["residuals"] = time.perf_counter() - t0
    targets = default_targets(prompts, residuals)
    made = search_and_bake(model, prompts, targets, run, search=config.search_config(), bake=config.bake_config(),
                           residuals=residuals, progress=progress)
    timings.update(made.timings_s)
    gate_config = GateConfig(**config.gate)
    for profile in default_profiles(targets, config.pairs):
        t0 = time.perf_counter()
        fit_gate(model, prompts, profile.domains, gate_config).save(run.gate_dir(profile.name))
        timings[f"gate:{profile.name}"] = time.perf_counter() - t0
    settings = {"search": config.search_config().to_dict(), "bake": config.bake_config().to_dict(),
                "gate": dataclasses.asdict(gate_config), "gate_pool_hash": prompts.gate_pool_hash(),
                "same_as": "palette-lens demo --quick"}
    atomic_write_json(run.run_json, {"made_by": "palette_lens.pipeline.builtin.make_builtin_run",
                                     "model": model.name, "targets": targets, "timings_s": timings})
    log.info("made the shipped run in %s (%s) in %.0f s", run.root, ", ".join(targets), sum(timings.values()))
    return write_manifest(run.root, model, targets, settings)
