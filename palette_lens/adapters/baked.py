"""Baked single-block LoRA adapters: a value with its weight deltas, and PEFT-format storage.

A :class:`BakedAdapter` holds LoRA factors for the linear modules of one decoder block, named as in a
*plain* Hugging Face model (``model.layers.11.self_attn.q_proj``), plus metadata. On disk it is a PEFT
adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``, loadable with
``PeftModel.from_pretrained(plain_hf_model, folder)``) with ``palette_meta.json`` (base-model fingerprint,
layer, position, scale, target mode, data hashes, metrics) and ``direction.safetensors`` (the baked r).

Applying adapters (:func:`merged_hf_model`, :func:`apply_adapters`, :func:`adapters_applied`, ...) is
:mod:`palette_lens.adapters.apply`; those names can still be imported from here.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from palette_lens.errors import AdapterMismatchError, PaletteError
from palette_lens.models.blocks import plain_tensor
from palette_lens.models.chat_model import ChatModel
from palette_lens.models.loading import weights_fingerprint
from palette_lens.util.atomic import atomic_folder
from palette_lens.util.hashing import file_sha256

log = logging.getLogger(__name__)

FORMAT = "palette-lens-adapter/1"
META_FILE = "palette_meta.json"  # also named in palette_lens.pipeline.run_folder
WEIGHTS_FILE = "adapter_model.safetensors"
CONFIG_FILE = "adapter_config.json"
DIRECTION_FILE = "direction.safetensors"
_PEFT_PREFIX = "base_model.model."


def _cpu32(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().to(device="cpu", dtype=torch.float32)


@dataclass
class BakedAdapter:
    """LoRA factors for the linear modules of one decoder block, with provenance.

    Attributes:
        layer_index: the decoder block that was trained (``l − 1`` for a direction read at layer ``l``).
        lora_A: plain HF module name → [rank, in_features].
        lora_B: plain HF module name → [out_features, rank].
        rank: LoRA rank r.
        alpha: LoRA alpha; ΔW = (alpha / r) · B · A.
        meta: JSON-serialisable metadata (``base_fingerprint``, ``layer``, ``position``, ``domain``,
            ``scale``, ``target_mode``, ``loss``, ``data_hashes``, ``metrics``, ...).
        direction: [d_model] the direction r that was baked (raw, not normalised), if known.

    The factors and the direction are kept on the CPU in float32, whatever device and dtype they came from.
    ``deltas()`` gives ΔW per module ([out_features, in_features], float32); ``save(folder)`` writes a PEFT
    adapter folder and :meth:`load` reads one back (also :func:`load_adapter`).

    Examples:
        >>> name = "model.layers.3.mlp.down_proj"
        >>> a = BakedAdapter(3, {name: torch.ones(2, 8)}, {name: torch.ones(4, 2)}, rank=2, alpha=4.0)
        >>> a.layer, a.scaling, tuple(a.deltas()[name].shape)
        (4, 2.0, (4, 8))
    """

    layer_index: int
    lora_A: dict[str, torch.Tensor]
    lora_B: dict[str, torch.Tensor]
    rank: int = 8
    alpha: float = 16.0
    meta: dict = field(default_factory=dict)
    direction: torch.Tensor | None = None

    def __post_init__(self) -> None:
        # Factors live on the CPU in float32 wherever the bake ran, so adapters from a GPU bake and loaded
        # ones combine without device or dtype surprises; whoever applies them moves what they combine.
        self.lora_A = {n: _cpu32(t) for n, t in self.lora_A.items()}
        self.lora_B = {n: _cpu32(t) for n, t in self.lora_B.items()}
        if self.direction is not None:
            self.direction = _cpu32(self.direction)

    # ------------------------------------------------------------------ values
    @property
    def scaling(self) -> float:
        return float(self.alpha) / float(self.rank)

    @property
    def module_names(self) -> list[str]:
        """Adapted modules (plain HF names), sorted."""
        return sorted(self.lora_A)

    @property
    def domain(self) -> str:
        return str(self.meta.get("domain", ""))

    @property
    def layer(self) -> int:
        """Layer l whose ``resid_pre`` the adapter edits (``layer_index + 1``)."""
        return self.layer_index + 1

    def deltas(self) -> dict[str, torch.Tensor]:
        """ΔW = (alpha / r) · B · A per module: name → [out_features, in_features] (float32)."""
        return {
            n: self.scaling * (self.lora_B[n].float() @ self.lora_A[n].float()) for n in self.module_names
        }

    def delta_norm(self) -> float:
        """Frobenius norm of all deltas together (0 for an untrained adapter)."""
        return float(torch.sqrt(sum((d.pow(2).sum() for d in self.deltas().values()), torch.tensor(0.0))))

    def peft_state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors under PEFT's saved key names (``base_model.model.<name>.lora_A.weight``)."""
        return peft_tensors(self.lora_A, self.lora_B)

    def lora_config(self, base_model_name: str | None = None) -> Any:
        """The ``peft.LoraConfig`` that ``PeftModel.from_pretrained`` uses to rebuild this adapter."""
        return peft_lora_config(self.module_names, self.rank, self.alpha, base_model_name)

    # ------------------------------------------------------------------ checks
    def check_base(self, model: ChatModel | Any | str) -> None:
        """Raise :class:`AdapterMismatchError` when ``model`` is not the base model this adapter was baked on.

        ``model`` may be a :class:`ChatModel`, a plain HF model, or a fingerprint string.
        """
        expected = self.meta.get("base_fingerprint", "")
        if isinstance(model, str):
            actual, name = model, model
        elif isinstance(model, ChatModel):
            actual, name = model.fingerprint, model.name
        else:
            actual, name = weights_fingerprint(model), type(model).__name__
        if expected and actual != expected:
            raise AdapterMismatchError(
                f"adapter {self.domain or '?'!r} was baked on base model "
                f"{self.meta.get('base_model', '?')!r} (fingerprint {expected}), but the model given is "
                f"{name!r} (fingerprint {actual}); bake the adapter again for this model"
            )
        if not isinstance(model, str):
            self._check_shapes(model.hf_model if isinstance(model, ChatModel) else model)

    def _check_shapes(self, hf_model: Any) -> None:
        for n in self.module_names:
            try:
                w = plain_tensor(hf_model, f"{n}.weight")
            except (AttributeError, KeyError, IndexError):
                raise AdapterMismatchError(f"adapter module {n!r} does not exist in the given model") from None
            want = (self.lora_B[n].shape[0], self.lora_A[n].shape[1])
            if tuple(w.shape) != want:
                raise AdapterMismatchError(
                    f"adapter module {n!r} has shape {want}, the model's weight has {tuple(w.shape)}"
                )

    # ------------------------------------------------------------------ storage
    def save(self, folder: str | Path) -> Path:
        """Write the adapter folder (PEFT files + ``palette_meta.json``) atomically; returns ``folder``."""
        folder = Path(folder)
        meta = {
            **self.meta,
            "format": FORMAT,
            "block": self.layer_index,
            "layer": self.layer,
            "rank": self.rank,
            "alpha": self.alpha,
            "modules": self.module_names,
        }
        config = self.lora_config(self.meta.get("base_model"))

        def write(tmp: Path) -> None:
            write_peft_files(tmp, config, self.peft_state_dict())
            if self.direction is not None:
                save_file({"vector": self.direction.detach().float().contiguous().cpu()}, str(tmp / DIRECTION_FILE))
            files = [WEIGHTS_FILE, CONFIG_FILE] + ([DIRECTION_FILE] if self.direction is not None else [])
            meta["checksums"] = {name: file_sha256(tmp / name) for name in files}
            (tmp / META_FILE).write_text(json.dumps(meta, indent=1, default=_jsonable))

        atomic_folder(folder, write)
        return folder

    @classmethod
    def load(cls, folder: str | Path, model: ChatModel | Any | str | None = None) -> BakedAdapter:
        """Load an adapter folder written by :meth:`save` (safetensors only, no pickle).

        Args:
            folder: the adapter folder.
            model: when given, check that the adapter was baked on this base model (raises
                :class:`AdapterMismatchError` otherwise).
        """
        folder = Path(folder)
        if not folder.is_dir():
            raise PaletteError(f"adapter folder not found: {folder}")
        for name in (META_FILE, WEIGHTS_FILE, CONFIG_FILE):
            if not (folder / name).is_file():
                raise PaletteError(f"{folder} is not a palette-lens adapter (missing {name})")
        try:
            meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
            config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise PaletteError(f"adapter {folder} is corrupt or truncated: {exc}".splitlines()[0]) from None
        if not isinstance(meta, dict) or not isinstance(config, dict):
            raise PaletteError(f"adapter {folder} is corrupt: {META_FILE} and {CONFIG_FILE} must hold JSON objects")
        if meta.get("format") != FORMAT:
            raise PaletteError(f"{folder}: unknown adapter format {meta.get('format')!r} (expected {FORMAT})")
        _verify_checksums(folder, meta.get("checksums"))
        try:
            tensors = load_file(str(folder / WEIGHTS_FILE))
            has_direction = (folder / DIRECTION_FILE).is_file()
            direction = load_file(str(folder / DIRECTION_FILE))["vector"] if has_direction else None
        except Exception as exc:  # noqa: BLE001 - any read failure means a damaged folder
            raise PaletteError(f"adapter {folder} is corrupt or truncated: {exc}".splitlines()[0]) from None
        lora_a, lora_b = {}, {}
        for key, t in tensors.items():
            if not key.startswith(_PEFT_PREFIX):
                raise PaletteError(f"{folder}: unexpected tensor {key!r}")
            name, _, kind = key[len(_PEFT_PREFIX) :].rpartition(".lora_")
            if kind == "A.weight":
                lora_a[name] = t
            elif kind == "B.weight":
                lora_b[name] = t
            else:
                raise PaletteError(f"{folder}: unexpected tensor {key!r}")
        if set(lora_a) != set(lora_b) or not lora_a:
            raise PaletteError(f"{folder}: LoRA factors A and B do not pair up")
        block, rank, alpha = _check_meta(folder, meta, config, lora_a, lora_b, direction)
        adapter = cls(
            layer_index=block,
            lora_A=lora_a,
            lora_B=lora_b,
            rank=rank,
            alpha=alpha,
            meta={k: v for k, v in meta.items() if k not in ("format", "modules", "checksums")},
            direction=direction,
        )
        if model is not None:
            adapter.check_base(model)
        return adapter


def _verify_checksums(folder: Path, checksums: Any) -> None:
    """Check the files of an adapter folder against the sha256 recorded in its metadata when it was saved.

    Folders saved before checksums were recorded (no ``checksums`` key) are accepted unchecked.
    """
    if checksums is None:
        return
    if not isinstance(checksums, dict) or not all(isinstance(v, str) for v in checksums.values()):
        raise PaletteError(f"adapter {folder}: 'checksums' in {META_FILE} is malformed")
    expected = {WEIGHTS_FILE, CONFIG_FILE} | ({DIRECTION_FILE} if (folder / DIRECTION_FILE).is_file() else set())
    if set(checksums) != expected:
        raise PaletteError(
            f"adapter {folder}: its files ({', '.join(sorted(expected))}) differ from those recorded in {META_FILE} "
            f"({', '.join(sorted(checksums))}); the folder was modified"
        )
    for name, digest in sorted(checksums.items()):
        if file_sha256(folder / name) != digest:
            raise PaletteError(
                f"adapter {folder}: {name} does not match the sha256 recorded in {META_FILE}; the folder is "
                f"corrupt or was modified (bake the adapter again)"
            )


def _check_meta(
    folder: Path, meta: dict, config: dict, lora_a: dict[str, torch.Tensor], lora_b: dict[str, torch.Tensor],
    direction: torch.Tensor | None,
) -> tuple[int, int, float]:
    """Check that an adapter's metadata agrees with its tensors; returns (block, rank, alpha)."""

    def bad(why: str) -> PaletteError:
        return PaletteError(f"adapter {folder}: {why}; the metadata is damaged or was edited (bake it again)")

    block = meta.get("block")
    if not isinstance(block, int) or isinstance(block, bool) or block < 0:
        raise bad(f"'block' in {META_FILE} must be a non-negative integer, not {block!r}")
    fingerprint = meta.get("base_fingerprint")
    if not isinstance(fingerprint, str) or not fingerprint:
        raise bad(f"{META_FILE} records no base-model fingerprint")
    for name in lora_a:
        indices = [part for part in name.split(".") if part.isdigit()]  # the first one is the block's
        if indices[:1] != [str(block)]:
            raise bad(f"module {name!r} is not in block {block} recorded in {META_FILE}")
    if "modules" in meta and meta["modules"] != sorted(lora_a):
        raise bad(f"the modules listed in {META_FILE} are not the ones in {WEIGHTS_FILE}")
    rank = config.get("r", meta.get("rank", 8))
    alpha = config.get("lora_alpha", meta.get("alpha", 16.0))
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise bad(f"LoRA rank must be a positive integer, not {rank!r}")
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not math.isfinite(alpha):
        raise bad(f"LoRA alpha must be a finite number, not {alpha!r}")
    for name, a in lora_a.items():
        b = lora_b[name]
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != rank or b.shape[1] != rank:
            raise bad(f"module {name!r} has LoRA factors of shapes {tuple(a.shape)} and {tuple(b.shape)}, "
                      f"not of rank {rank}")
    if direction is not None and direction.ndim != 1:
        raise bad(f"{DIRECTION_FILE} must hold a vector, not shape {tuple(direction.shape)}")
    return block, rank, float(alpha)


def load_adapter(folder: str | Path, model: ChatModel | Any | str | None = None) -> BakedAdapter:
    """Shorthand for :meth:`BakedAdapter.load` (checks the base model when ``model`` is given).

    Args:
        folder: an adapter folder written by :meth:`BakedAdapter.save` (PEFT files + ``palette_meta.json``).
        model: a :class:`ChatModel`, a plain HF model or a fingerprint string; when given, the adapter must
            have been baked on it (fingerprint, and module shapes for a model).

    Returns:
        The :class:`BakedAdapter`.

    Raises:
        PaletteError: a missing, incomplete, corrupt or modified folder (checksums, metadata, tensors).
        AdapterMismatchError: the adapter was baked on another base model than ``model``.

    Examples:
        >>> adapter = load_adapter("runs/demo/adapters/cyber", model)      # doctest: +SKIP
        >>> adapter.domain, adapter.layer                                  # doctest: +SKIP
        ('cyber', 14)
    """
    return BakedAdapter.load(folder, model)


# ---------------------------------------------------------------------- PEFT files
def peft_tensors(lora_a: dict[str, torch.Tensor], lora_b: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """LoRA factors under the key names ``PeftModel.save_pretrained`` writes (float32, CPU, contiguous).

    Args:
        lora_a: plain HF module name → A [rank, in_features].
        lora_b: plain HF module name → B [out_features, rank] (the same names).

    Returns:
        ``base_model.model.<name>.lora_A.weight`` / ``...lora_B.weight`` → tensor, modules sorted by name.

    Examples:
        >>> name = "model.layers.3.mlp.down_proj"
        >>> keys = sorted(peft_tensors({name: torch.ones(2, 8)}, {name: torch.ones(4, 2)}))
        >>> keys[0]
        'base_model.model.model.layers.3.mlp.down_proj.lora_A.weight'
    """
    out = {}
    for n in sorted(lora_a):
        out[f"{_PEFT_PREFIX}{n}.lora_A.weight"] = lora_a[n].detach().float().contiguous().cpu()
        out[f"{_PEFT_PREFIX}{n}.lora_B.weight"] = lora_b[n].detach().float().contiguous().cpu()
    return out


def peft_lora_config(
    target_modules: list[str], rank: int, alpha: float, base_model_name: str | None = None
) -> Any:
    """The ``peft.LoraConfig`` of LoRA factors on exactly ``target_modules`` (no dropout, no bias).

    Args:
        target_modules: full plain HF module names (``model.layers.11.mlp.down_proj``); peft matches each
            one exactly, so no other module is adapted.
        rank: the LoRA rank r of every module.
        alpha: LoRA alpha (the scaling is ``alpha / rank``).
        base_model_name: recorded as ``base_model_name_or_path``.

    Returns:
        A ``peft.LoraConfig`` (task type ``CAUSAL_LM``).

    Examples:
        >>> config = peft_lora_config(["model.layers.3.mlp.down_proj"], 8, 8.0)  # doctest: +SKIP
        >>> config.r, config.lora_alpha                                          # doctest: +SKIP
        (8, 8.0)
    """
    from peft import LoraConfig

    return LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=0.0,
        bias="none",
        target_modules=list(target_modules),
        task_type="CAUSAL_LM",
        base_model_name_or_path=base_model_name,
    )


def write_peft_files(folder: Path, config: Any, tensors: dict[str, torch.Tensor]) -> None:
    """Write ``adapter_config.json`` and ``adapter_model.safetensors`` into the existing ``folder``.

    The two files ``PeftModel.save_pretrained`` writes (sets in the config as sorted lists, keys sorted), so
    ``PeftModel.from_pretrained(base, folder)`` loads them. Not atomic by itself: callers write into a
    temporary folder (:func:`palette_lens.util.atomic.atomic_folder`).

    Args:
        folder: an existing folder.
        config: a ``peft.LoraConfig`` (e.g. from :func:`peft_lora_config`).
        tensors: the state dict under PEFT's key names (e.g. from :func:`peft_tensors`).

    Examples:
        >>> write_peft_files(tmp, adapter.lora_config(), adapter.peft_state_dict())   # doctest: +SKIP
    """
    config_dict = {k: (sorted(v) if isinstance(v, set) else v) for k, v in config.to_dict().items()}
    save_file(tensors, str(Path(folder) / WEIGHTS_FILE), metadata={"format": "pt"})
    (Path(folder) / CONFIG_FILE).write_text(json.dumps(config_dict, indent=2, sort_keys=True, default=str))


# ---------------------------------------------------------------------- helpers
def _jsonable(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)
