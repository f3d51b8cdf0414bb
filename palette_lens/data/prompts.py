"""Prompt records, built-in domains, user JSONL loaders and seeded per-domain splits.

Record format (one JSON object per line): ``{"prompt": str, "domain": str, ...}``; extra keys such as
``source`` or ``id`` are kept. ``harmless`` is the benign domain, ``borderline`` holds risky-sounding but
legitimate prompts (for over-refusal checks); every other domain is a harmful domain.
"""

from __future__ import annotations

import codecs
import dataclasses
import hashlib
import importlib.resources
import io
import json
import logging
import os
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from palette_lens.errors import DataError, UnknownDomainError

log = logging.getLogger(__name__)

HARMLESS = "harmless"
BORDERLINE = "borderline"
RESERVED = (HARMLESS, BORDERLINE)
MIN_PROMPTS_TO_SPLIT = 5
SPLIT_PARTS = ("train", "val", "test", "gate")
GATE_POOL_FOLDER = "gate"  # built-in gate pool: data/gate/<domain>.jsonl
MAX_DOMAIN_LENGTH = 64
_FORBIDDEN = frozenset("/\\+,")


def _packaged_data_dir() -> Path | None:
    """``palette_lens/data/builtin`` of an installed wheel (setup.py copies ``data/`` there), or None."""
    folder = importlib.resources.files("palette_lens.data").joinpath("builtin")
    # Only a real folder will do (the loader reads files by path); a zip import falls back to the checkout.
    return folder if isinstance(folder, Path) and folder.is_dir() else None


def builtin_data_dir() -> Path:
    """The folder of built-in JSONL files.

    ``$PALETTE_LENS_DATA`` overrides it; otherwise the copy packaged in the wheel
    (``palette_lens/data/builtin``), else the repository's top-level ``data/`` folder (a checkout or an
    editable install). Raises :class:`DataError` when none of them exists.
    """
    env = os.environ.get("PALETTE_LENS_DATA")
    if env:
        return Path(env)
    packaged = _packaged_data_dir()
    if packaged is not None:
        return packaged
    checkout = Path(__file__).resolve().parents[2] / "data"
    if checkout.is_dir():
        return checkout
    raise DataError(
        f"the built-in prompt data is missing: neither the packaged folder palette_lens/data/builtin nor the "
        f"repository folder {checkout} exists (reinstall palette-lens from a wheel built with its data, or "
        f"set PALETTE_LENS_DATA to a folder of JSONL files)"
    )


@dataclass(frozen=True)
class Record:
    """One prompt: its text, domain and any extra keys from the file.

    Attributes:
        prompt: the user prompt (stripped of surrounding whitespace).
        domain: its domain (``harmless``, ``borderline`` or a harmful domain such as ``cyber``).
        extra: the other keys of the JSON object (e.g. ``source``, ``id``) as sorted (key, value) pairs.

    Examples:
        >>> r = Record("How do I bake bread?", "harmless", (("id", 7),))
        >>> r.to_dict()
        {'prompt': 'How do I bake bread?', 'domain': 'harmless', 'id': 7}
    """

    prompt: str
    domain: str
    extra: tuple[tuple[str, object], ...] = ()

    def to_dict(self) -> dict:
        return {"prompt": self.prompt, "domain": self.domain, **dict(self.extra)}


def check_domain_name(domain: str) -> str | None:
    """Why ``domain`` cannot be a domain name, or None when it can.

    Domain names become file and folder names (``adapters/<domain>/``) and profile names (``a+b``), so
    they must not start with ``.`` nor contain ``/``, ``\\``, ``+``, ``,`` or control characters.
    """
    if len(domain) > MAX_DOMAIN_LENGTH:
        return f"domain names are at most {MAX_DOMAIN_LENGTH} characters"
    if domain.startswith("."):
        return "domain names cannot start with '.'"
    bad = sorted({c for c in domain if c in _FORBIDDEN or ord(c) < 32 or ord(c) == 127})
    if bad:
        return f"domain names cannot contain {', '.join(repr(c) for c in bad)}"
    return None


def _valid_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates from JSON escapes such as "\ud800"
        return False
    return True


def _read_text(path: Path) -> str:
    """The file's text (UTF-8, an optional byte-order mark dropped); errors name the file and line."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read the data file ({exc.strerror or exc})") from None
    data = data.removeprefix(codecs.BOM_UTF8)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        lineno = data.count(b"\n", 0, exc.start) + 1
        raise DataError(f"{path}:{lineno}: not valid UTF-8 (byte {data[exc.start]:#04x})") from None


def read_jsonl(path: str | Path) -> list[Record]:
    """Read records from a JSONL file; errors name the file and line (blank lines count, and are skipped).

    Each line is a JSON object with a non-empty ``prompt`` and ``domain``; other keys go to
    :attr:`Record.extra`. A UTF-8 byte-order mark is accepted.

    Args:
        path: the JSONL file.

    Returns:
        The records in file order.

    Raises:
        DataError: a missing or unreadable file, invalid UTF-8 or JSON, a line that is not an object, an
            empty or missing ``prompt`` / ``domain``, a domain name that is not allowed (e.g. with ``/`` or
            ``+``), or a file without records.

    Examples:
        >>> import json, pathlib, tempfile
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "mine.jsonl"
        >>> _ = path.write_text(json.dumps({"prompt": " Hi ", "domain": "chem", "id": 7}) + "\\n")
        >>> read_jsonl(path)
        [Record(prompt='Hi', domain='chem', extra=(('id', 7),))]
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such data file")
    records: list[Record] = []
    for lineno, line in enumerate(io.StringIO(_read_text(path), newline=None), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
        except RecursionError:
            raise DataError(f"{path}:{lineno}: not valid JSON (nested too deeply)") from None
        if not isinstance(obj, dict):
            raise DataError(f"{path}:{lineno}: expected a JSON object with 'prompt' and 'domain'")
        prompt, domain = obj.get("prompt"), obj.get("domain")
        if not isinstance(prompt, str) or not prompt.strip():
            raise DataError(f"{path}:{lineno}: 'prompt' must be a non-empty string")
        if not isinstance(domain, str) or not domain.strip():
            raise DataError(f"{path}:{lineno}: 'domain' must be a non-empty string")
        if not _valid_unicode(prompt) or not _valid_unicode(domain):
            raise DataError(f"{path}:{lineno}: 'prompt' and 'domain' must be valid Unicode (no lone surrogates)")
        why = check_domain_name(domain.strip())
        if why:
            raise DataError(f"{path}:{lineno}: domain {domain.strip()!r} is not allowed: {why}")
        extra = tuple(sorted((k, v) for k, v in obj.items() if k not in ("prompt", "domain")))
        records.append(Record(prompt.strip(), domain.strip(), extra))
    if not records:
        raise DataError(f"{path}: the file holds no records")
    return records


@dataclass(frozen=True)
class Split:
    """Prompts of one domain split into train / validation / test, plus the domain's gate pool.

    ``gate`` holds extra requests that only a domain gate trains on (``data/gate/``, :func:`load_prompts`'s
    ``gate_files``); they are not drawn from the domain's prompts, so train / val / test do not depend on them.
    """

    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]
    gate: tuple[str, ...] = ()


@dataclass
class PromptSet:
    """Prompts grouped by domain, with seeded splits.

    Attributes:
        by_domain: domain -> list of records (file order).
        seed: seed of the splits.
        train_frac: fraction for train (the paper's 20%); validation is carved from train.
        val_frac_of_train: share of train kept for validation.
        gate_pool: domain -> extra records that only a domain gate trains on (``part(domain, "gate")``); never
            part of train, validation or test, and not in :meth:`data_hash` (searches and bakes never read them).

    A domain needs at least 5 prompts to be split; each split part holds at least one prompt. ``part(domain,
    "train")`` excludes the validation prompts carved from the train share.

    Examples:
        >>> ps = PromptSet({"harmless": [Record(f"question {i}", "harmless") for i in range(10)]})
        >>> ps.domains, [len(ps.part("harmless", p)) for p in ("train", "val", "test")]
        (['harmless'], [1, 1, 8])
    """

    by_domain: dict[str, list[Record]]
    seed: int = 0
    train_frac: float = 0.2
    val_frac_of_train: float = 0.3
    gate_pool: dict[str, list[Record]] = field(default_factory=dict)
    _splits: dict[str, Split] = field(default_factory=dict, repr=False)

    # ---- domains
    @property
    def domains(self) -> list[str]:
        """All domains, harmful first (sorted), then harmless and borderline when present."""
        harmful = sorted(d for d in self.by_domain if d not in RESERVED)
        return harmful + [d for d in RESERVED if d in self.by_domain]

    @property
    def harmful_domains(self) -> list[str]:
        return [d for d in self.domains if d not in RESERVED]

    def check_domain(self, domain: str) -> str:
        """Return ``domain`` or raise :class:`UnknownDomainError` listing the known ones."""
        if domain not in self.by_domain:
            raise UnknownDomainError(f"unknown domain {domain!r}; known domains: {', '.join(self.domains)}")
        return domain

    def prompts(self, domain: str) -> list[str]:
        return [r.prompt for r in self.by_domain[self.check_domain(domain)]]

    # ---- splits
    def split(self, domain: str) -> Split:
        """The seeded split of ``domain`` (at least one prompt in each part)."""
        self.check_domain(domain)
        if domain not in self._splits:
            split = split_prompts(self.prompts(domain), self.seed, self.train_frac, self.val_frac_of_train, domain)
            own = set(self.prompts(domain))  # a pool prompt that is the domain's own may sit in its test split
            pool = tuple(r.prompt for r in self.gate_pool.get(domain, ()) if r.prompt not in own)
            if len(pool) < len(self.gate_pool.get(domain, ())):
                log.warning("gate pool of %s: %d prompts left out, they are among the domain's own prompts",
                            domain, len(self.gate_pool[domain]) - len(pool))
            self._splits[domain] = dataclasses.replace(split, gate=pool)
        return self._splits[domain]

    def part(self, domain: str, part: str, limit: int | None = None) -> list[str]:
        """Prompts of ``domain`` in ``part`` ("train", "val", "test" or "gate"), optionally the first ``limit``."""
        if part not in SPLIT_PARTS:
            raise DataError(f"unknown split part {part!r}; the parts are {', '.join(SPLIT_PARTS)}")
        prompts = list(getattr(self.split(domain), part))
        return prompts[:limit] if limit is not None else prompts

    def data_hash(self, domains: Iterable[str] | None = None) -> str:
        """A short hash of the records of ``domains`` (default all) and the split settings."""
        digest = hashlib.sha256(json.dumps([self.seed, self.train_frac, self.val_frac_of_train]).encode())
        for d in sorted(domains if domains is not None else self.by_domain):
            for r in self.by_domain[self.check_domain(d)]:
                digest.update(f"{d}\x00{r.prompt}\x00".encode())
        return digest.hexdigest()[:16]

    def counts(self) -> dict[str, int]:
        return {d: len(self.by_domain[d]) for d in self.domains}

    def gate_pool_hash(self) -> str:
        """A short hash of the gate pool of every domain of the set (what a gate trains on besides the splits)."""
        digest = hashlib.sha256()
        for d in self.domains:
            for prompt in self.split(d).gate:
                digest.update(f"{d}\x00{prompt}\x00".encode())
        return digest.hexdigest()[:16]


def split_prompts(
    prompts: Sequence[str], seed: int = 0, train_frac: float = 0.2, val_frac_of_train: float = 0.3, domain: str = "?"
) -> Split:
    """Deterministic split: shuffle with ``seed`` (and the domain name), take train, carve validation."""
    if len(prompts) < MIN_PROMPTS_TO_SPLIT:
        raise DataError(
            f"domain {domain!r} has {len(prompts)} prompts; at least {MIN_PROMPTS_TO_SPLIT} are needed to split "
            f"it into train, validation and test"
        )
    order = list(prompts)
    random.Random(f"{seed}:{domain}").shuffle(order)
    n_train = max(2, round(len(order) * train_frac))
    n_train = min(n_train, len(order) - 1)
    n_val = min(max(1, round(n_train * val_frac_of_train)), n_train - 1)
    train = order[: n_train - n_val]
    val = order[n_train - n_val : n_train]
    test = order[n_train:]
    return Split(tuple(train), tuple(val), tuple(test))


def builtin_files() -> list[Path]:
    folder = builtin_data_dir()
    files = sorted(folder.glob("*.jsonl"))
    if not files:
        raise DataError(f"no built-in data files in {folder}")
    return files


def load_prompts(
    files: Sequence[str | Path] = (),
    replace: bool = False,
    domains: Sequence[str] | None = None,
    seed: int = 0,
    train_frac: float = 0.2,
    gate_files: Sequence[str | Path] = (),
) -> PromptSet:
    """Load built-in prompts and user files.

    Args:
        files: user JSONL files. A domain present in a user file replaces the built-in domain of that
            name (user data is never mixed with built-in prompts of the same domain).
        replace: use only the user files for harmful domains; built-in ``harmless`` / ``borderline`` are
            still used unless the files bring their own.
        domains: keep only these domains (plus harmless / borderline); unknown names raise.
        seed: split setting: the seed of the per-domain shuffle.
        train_frac: split setting: the share of each domain that goes to train.
        gate_files: JSONL files (same format) of extra requests that only a domain gate trains on (its
            ``"gate"`` part). A domain in them replaces the built-in gate pool of that domain (``data/gate/``,
            which serves only the built-in domains whose prompts are not replaced). Pool prompts that are also
            among the domain's own prompts are left out of its ``"gate"`` part, so no test prompt is trained on.

    Returns:
        The merged :class:`PromptSet` (duplicate prompts within a domain dropped).

    Raises:
        UnknownDomainError: a name in ``domains`` that the data does not contain.
        DataError: a malformed data file, missing built-in data, no ``harmless`` prompts at all, or a gate file
            whose domain has no prompts.

    Examples:
        >>> load_prompts(domains=["cyber"]).domains
        ['cyber', 'harmless', 'borderline']
        >>> mine = load_prompts(["my_domains.jsonl"], replace=True)      # doctest: +SKIP
    """
    builtin: dict[str, list[Record]] = {}
    for path in builtin_files():
        for r in read_jsonl(path):
            builtin.setdefault(r.domain, []).append(r)
    user: dict[str, list[Record]] = {}
    for path in files:
        for r in read_jsonl(path):
            user.setdefault(r.domain, []).append(r)
    if replace:
        merged = {d: v for d, v in builtin.items() if d in RESERVED}
    else:
        merged = dict(builtin)
    merged.update(user)
    merged = {d: _dedupe(v) for d, v in merged.items()}
    pool = {d: v for d, v in _builtin_gate_pool().items() if d in merged and d not in user}
    user_pool: dict[str, list[Record]] = {}
    for path in gate_files:
        for r in read_jsonl(path):
            if r.domain not in merged:
                raise DataError(f"{path}: gate pool domain {r.domain!r} has no prompts; known domains: "
                                f"{', '.join(sorted(merged))}")
            user_pool.setdefault(r.domain, []).append(r)
    pool.update(user_pool)
    pool = {d: _dedupe(v) for d, v in pool.items()}
    ps = PromptSet(merged, seed=seed, train_frac=train_frac, gate_pool=pool)
    if domains is not None:
        for d in domains:
            ps.check_domain(d)
        keep = set(domains) | set(RESERVED)
        ps = PromptSet({d: v for d, v in merged.items() if d in keep}, seed=seed, train_frac=train_frac,
                       gate_pool={d: v for d, v in pool.items() if d in keep})
    if HARMLESS not in ps.by_domain:
        raise DataError("no 'harmless' prompts found: built-in data missing and none in the given files")
    return ps


def _dedupe(records: list[Record]) -> list[Record]:
    seen: set[str] = set()
    out = []
    for r in records:
        if r.prompt not in seen:
            seen.add(r.prompt)
            out.append(r)
    return out


def _builtin_gate_pool() -> dict[str, list[Record]]:
    """The built-in gate pool (``<built-in data>/gate/*.jsonl``) by domain; empty when the folder is absent."""
    folder = builtin_data_dir() / GATE_POOL_FOLDER
    pool: dict[str, list[Record]] = {}
    for path in sorted(folder.glob("*.jsonl")) if folder.is_dir() else ():
        for r in read_jsonl(path):
            pool.setdefault(r.domain, []).append(r)
    return pool

