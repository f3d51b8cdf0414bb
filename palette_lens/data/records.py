"""One prompt record, domain names and reading JSONL files of records.

Record format (one JSON object per line): ``{"prompt": str, "domain": str, ...}``; extra keys such as
``source`` or ``id`` are kept. ``harmless`` is the benign domain, ``borderline`` holds risky-sounding but
legitimate prompts (for over-refusal checks); every other domain is a harmful domain.
"""

from __future__ import annotations

import codecs
import io
import json
from dataclasses import dataclass
from pathlib import Path

from palette_lens.errors import DataError

HARMLESS = "harmless"
BORDERLINE = "borderline"
RESERVED = (HARMLESS, BORDERLINE)
MAX_DOMAIN_LENGTH = 64
_FORBIDDEN = frozenset("/\\+,")


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


