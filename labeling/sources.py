"""Turn user-supplied prompts into PromptRecords: uploaded files, typed text, or a Hub dataset.

Uploads may be CSV/TSV, JSONL (or a JSON array), TXT (one prompt a line) or Parquet, given as a path or as
bytes. The prompt column is the first of ``prompt``, ``instruction``, ``question``, ``text``, ``messages`` (a
chat message list) found; ``category``, ``intended_label`` (or ``label``) and ``reference`` are optional.

All or nothing per file: a file that cannot be read at all (empty, not UTF-8/UTF-16, binary, too large, no
prompt column) raises :class:`SourceError` and imports nothing. Problems with single rows (empty or too long
prompt, a duplicate, a label that is not benign/harmful) skip that row and are reported with its row number, as
a spreadsheet or text editor would show it.

A Hub dataset is only fetched when :func:`load_hub_dataset` is called explicitly; nothing else here touches the
network.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labeling.records import Message, PromptRecord, as_messages, prompt_key

DEFAULT_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_MAX_ROWS = 5000
DEFAULT_MAX_PROMPT_CHARS = 4000
PROMPT_COLUMNS: tuple[str, ...] = ("prompt", "instruction", "question", "text", "messages")
LABEL_COLUMNS: tuple[str, ...] = ("intended_label", "label")
# Common spellings in public datasets, mapped to the project's two labels.
LABEL_ALIASES: dict[str, str] = {
    "benign": "benign", "harmless": "benign", "safe": "benign",
    "harmful": "harmful", "unsafe": "harmful",
}
ROLES = ("system", "user", "assistant")
TEXT_FORMATS = ("csv", "tsv", "jsonl", "json", "txt")
FORMATS = (*TEXT_FORMATS, "parquet")
_EXTENSIONS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".txt": "txt",
               ".text": "txt", ".parquet": "parquet", ".pq": "parquet"}


class SourceError(ValueError):
    """A source cannot be imported at all; the message says what is wrong and what to do. Nothing was imported."""


@dataclass
class ImportResult:
    prompts: list[PromptRecord]
    skipped: list[tuple[int, str]]  # (row number as shown in a spreadsheet/editor, reason)
    message: str
    format: str = ""
    truncated_rows: int = 0  # rows past max_rows that were not read
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- reading bytes


def _size_text(n: int) -> str:
    return f"{n / 1024 / 1024:.1f} MB" if n >= 1024 * 1024 else f"{n / 1024:.0f} KB"


def _read_source(path_or_bytes: str | Path | bytes | bytearray, filename: str | None,
                 max_bytes: int) -> tuple[bytes, str]:
    if isinstance(path_or_bytes, (bytes, bytearray)):
        data, name = bytes(path_or_bytes), filename or "upload"
        if len(data) > max_bytes:
            raise SourceError(f"{name} is {_size_text(len(data))}; the limit is {_size_text(max_bytes)}. "
                              "Split it into smaller files or keep only the prompts you need.")
        return data, name
    path = Path(path_or_bytes)
    name = filename or path.name
    if not path.is_file():
        raise SourceError(f"{name}: no such file. Check the path.")
    size = path.stat().st_size
    if size > max_bytes:  # checked before reading, so a huge file never lands in memory
        raise SourceError(f"{name} is {_size_text(size)}; the limit is {_size_text(max_bytes)}. "
                          "Split it into smaller files or keep only the prompts you need.")
    return path.read_bytes(), name


def decode_text(data: bytes, name: str = "the file") -> str:
    """UTF-8 (with or without BOM) or UTF-16 with a BOM; anything else is a SourceError."""
    if data.startswith(b"\xef\xbb\xbf"):
        encoding, body = "utf-8", data[3:]
    elif data.startswith((b"\xff\xfe", b"\xfe\xff")) and not data.startswith(b"\xff\xfe\x00\x00"):
        encoding, body = "utf-16", data
    else:
        if b"\x00" in data[:8192]:
            raise SourceError(f"{name} looks like a binary file (or text in an encoding without a byte-order mark, "
                              "such as UTF-16/32 without BOM). Upload CSV, JSONL, TXT or Parquet saved as UTF-8.")
        encoding, body = "utf-8", data
    try:
        text = body.decode(encoding)
    except UnicodeDecodeError as exc:
        raise SourceError(f"{name} is not valid {encoding.upper()} text (bad byte at position {exc.start}). "
                          "Save it as UTF-8 (in Excel: 'CSV UTF-8'; in an editor: 'Save with encoding UTF-8') and "
                          "upload again.") from exc
    if "\x00" in text:
        raise SourceError(f"{name} contains NUL characters, so it is not a text file. "
                          "Upload CSV, JSONL, TXT or Parquet.")
    return text


def detect_format(data: bytes, name: str) -> str:
    suffix = Path(name).suffix.lower()
    if suffix in _EXTENSIONS:
        return _EXTENSIONS[suffix]
    if suffix in (".xlsx", ".xls", ".ods"):
        raise SourceError(f"{name} is a spreadsheet file; save it as CSV (UTF-8) and upload that.")
    if data.startswith(b"PAR1"):
        return "parquet"
    if suffix and suffix not in ("", ".upload"):
        raise SourceError(f"{name}: files ending in {suffix} are not supported. Use .csv, .tsv, .jsonl, .json, "
                          ".txt or .parquet.")
    stripped = data.lstrip(b"\xef\xbb\xbf \t\r\n")
    if stripped.startswith(b"{"):
        return "jsonl"
    if stripped.startswith(b"["):
        return "json"
    first_line = stripped.split(b"\n", 1)[0].decode("utf-8", "replace").lower()
    header = {cell.strip().strip('"') for cell in first_line.replace("\t", ",").replace(";", ",").split(",")}
    return "csv" if header & set(PROMPT_COLUMNS) else "txt"


# ---------------------------------------------------------------- rows per format

Row = tuple[int, dict[str, Any]]
_BARE = "\x00string"  # key for a JSON row that is a bare string: it is the prompt whatever the prompt column


def _csv_rows(text: str, name: str, delimiter: str | None) -> list[Row]:
    if delimiter is None:
        try:
            delimiter = csv.Sniffer().sniff(text[:4096], delimiters=",;\t|").delimiter
        except csv.Error:
            delimiter = ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration as exc:
        raise SourceError(f"{name} is empty.") from exc
    except csv.Error as exc:
        raise SourceError(f"{name} is not valid CSV: {exc}.") from exc
    columns = [h.strip() for h in header]
    rows: list[Row] = []
    try:
        for index, cells in enumerate(reader):
            if not any(c.strip() for c in cells):
                continue  # a blank line between rows is layout, not a row
            rows.append((index + 2, dict(zip(columns, cells, strict=False))))  # header is spreadsheet row 1
    except csv.Error as exc:
        raise SourceError(f"{name} is not valid CSV near row {reader.line_num}: {exc}. Check the quoting.") from exc
    if not rows and not _find_column(columns, PROMPT_COLUMNS):
        raise _no_prompt_column(name, columns)
    return rows


def _jsonl_rows(text: str, name: str) -> tuple[list[Row], list[tuple[int, str]]]:
    rows: list[Row] = []
    bad: list[tuple[int, str]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            bad.append((number, f"not valid JSON ({exc.msg})"))
            continue
        if isinstance(value, str):
            value = {_BARE: value}
        if not isinstance(value, dict):
            bad.append((number, "not a JSON object or string"))
            continue
        rows.append((number, value))
    if not rows:
        raise SourceError(f"{name} has no readable JSON lines"
                          + (f" (line {bad[0][0]}: {bad[0][1]})" if bad else "")
                          + ". Each line must be one JSON object such as {\"prompt\": \"...\"}.")
    return rows, bad


def _json_rows(text: str, name: str) -> tuple[list[Row], list[tuple[int, str]]]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return _jsonl_rows(text, name)  # .json files are often JSON Lines in disguise
    if isinstance(value, dict):
        value = next((v for k, v in value.items() if k in ("data", "rows", "prompts") and isinstance(v, list)),
                     [value])
    if not isinstance(value, list):
        raise SourceError(f"{name} must hold a list of objects such as [{{\"prompt\": \"...\"}}].")
    rows: list[Row] = []
    bad: list[tuple[int, str]] = []
    for number, item in enumerate(value, start=1):
        if isinstance(item, str):
            item = {_BARE: item}
        if isinstance(item, dict):
            rows.append((number, item))
        else:
            bad.append((number, "not a JSON object or string"))
    return rows, bad


def _txt_rows(text: str) -> list[Row]:
    return [(number, {"prompt": line}) for number, line in enumerate(text.splitlines(), start=1) if line.strip()]


def _plain(value: Any) -> Any:
    """numpy/pyarrow values from Parquet -> plain Python lists/dicts."""
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        value = value.tolist()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _parquet_rows(data: bytes, name: str) -> list[Row]:
    import pandas as pd

    try:
        frame = pd.read_parquet(io.BytesIO(data))
    except Exception as exc:  # pyarrow raises several unrelated types for a damaged file
        raise SourceError(f"{name} could not be read as Parquet ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else 'unreadable'}). Re-export it, or upload "
                          "CSV or JSONL instead.") from exc
    return [(index + 1, {str(k): _plain(v) for k, v in record.items()})
            for index, record in enumerate(frame.to_dict(orient="records"))]


# ---------------------------------------------------------------- rows -> records


def _find_column(columns: Iterable[str], wanted: Iterable[str]) -> str | None:
    by_lower = {}
    for column in columns:
        by_lower.setdefault(str(column).strip().lower(), column)
    for name in wanted:
        if name in by_lower:
            return by_lower[name]
    return None


def _no_prompt_column(name: str, columns: Iterable[str]) -> SourceError:
    shown = ", ".join(repr(str(c)) for c in list(columns)[:12]) or "none"
    return SourceError(f"{name} has no prompt column. Found columns: {shown}. Name the column with the prompts one "
                       f"of: {', '.join(PROMPT_COLUMNS)}.")


def _is_empty(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and value != value:  # NaN from pandas
        return True
    return isinstance(value, str) and not value.strip()


def _messages_from(value: Any) -> tuple[list[Message], str | None]:
    """A message list (or its JSON text) -> (messages ending in a user turn, trailing assistant text if any)."""
    if isinstance(value, str):
        value = json.loads(value)
    if not isinstance(value, list) or not value:
        raise ValueError("messages must be a non-empty list of {role, content} objects")
    messages: list[Message] = []
    for item in value:
        if not isinstance(item, dict) or item.get("role") not in ROLES or not isinstance(item.get("content"), str):
            raise ValueError("messages must be a list of {role: system|user|assistant, content: text} objects")
        messages.append({"role": item["role"], "content": item["content"]})
    reference = None
    # A conversation that ends with the answer: keep the answer as the written reference, prompt up to the user.
    while messages and messages[-1]["role"] == "assistant":
        reference = reference or messages[-1]["content"]
        messages.pop()
    if not messages or messages[-1]["role"] != "user" or not messages[-1]["content"].strip():
        raise ValueError("messages must end with a non-empty user turn")
    return messages, reference


def _rows_to_records(rows: list[Row], name: str, source: str, max_rows: int, max_prompt_chars: int,
                     skipped: list[tuple[int, str]]) -> tuple[list[PromptRecord], int, list[str]]:
    columns: list[str] = []
    for _, row in rows:
        columns.extend(c for c in row if c not in columns and c != _BARE)
    prompt_col = _find_column(columns, PROMPT_COLUMNS)
    if prompt_col is None:
        if not any(_BARE in row for _, row in rows):
            raise _no_prompt_column(name, columns)
        prompt_col = "prompt"
    input_col = _find_column(columns, ("input",)) if prompt_col.lower() == "instruction" else None
    category_col = _find_column(columns, ("category",))
    reference_col = _find_column(columns, ("reference",))
    label_col = _find_column(columns, LABEL_COLUMNS)
    notes: list[str] = []
    if label_col is not None and label_col.lower() == "label":
        values = {str(row.get(label_col)).strip().lower() for _, row in rows if not _is_empty(row.get(label_col))}
        if values and not values & set(LABEL_ALIASES):
            # A generic "label" column that means something else (a class id, a score): ignore it, do not skip rows.
            notes.append(f"Column {label_col!r} does not hold benign/harmful values, so it was ignored.")
            label_col = None

    truncated = max(0, len(rows) - max_rows)
    if truncated:
        notes.append(f"Only the first {max_rows} rows were read; {truncated} more were left out (the limit is "
                     f"{max_rows} rows per import).")
        rows = rows[:max_rows]
    records: list[PromptRecord] = []
    first_seen: dict[str, int] = {}
    for number, row in rows:
        bare = _BARE in row
        value = row[_BARE] if bare else row.get(prompt_col)
        reference = None
        if _is_empty(value):
            skipped.append((number, f"empty {prompt_col}"))
            continue
        if prompt_col.lower() == "messages" and not bare:
            try:
                messages, reference = _messages_from(value)
            except json.JSONDecodeError:
                skipped.append((number, f"{prompt_col} is not valid JSON"))
                continue
            except ValueError as exc:
                skipped.append((number, str(exc)))
                continue
        else:
            if not isinstance(value, str):
                if isinstance(value, (int, float)):
                    value = str(value)
                else:
                    skipped.append((number, f"{prompt_col} is not text"))
                    continue
            text = value.strip()
            if input_col and not _is_empty(row.get(input_col)):
                text = f"{text}\n\n{str(row[input_col]).strip()}"
            messages = as_messages(text)
        length = sum(len(m["content"]) for m in messages)
        if length > max_prompt_chars:
            skipped.append((number, f"prompt is {length} characters; the limit is {max_prompt_chars}"))
            continue
        intended = None
        if label_col is not None and not _is_empty(row.get(label_col)):
            raw = str(row[label_col]).strip()
            intended = LABEL_ALIASES.get(raw.lower())
            if intended is None:
                skipped.append((number, f"{label_col} is {raw!r}; use benign or harmful (or leave it empty)"))
                continue
        key = prompt_key(messages)
        if key in first_seen:
            skipped.append((number, f"duplicate of row {first_seen[key]}"))
            continue
        first_seen[key] = number
        category = "uncategorised"
        if category_col is not None and not _is_empty(row.get(category_col)):
            category = str(row[category_col]).strip()
        if reference_col is not None and not _is_empty(row.get(reference_col)):
            reference = str(row[reference_col]).strip()
        records.append(PromptRecord(messages=messages, category=category, intended_label=intended, source=source,
                                    reference=reference))
    return records, truncated, notes


def _summary(records: list[PromptRecord], skipped: list[tuple[int, str]], name: str, notes: list[str]) -> str:
    parts = [f"Imported {len(records)} prompt{'s' if len(records) != 1 else ''} from {name}."]
    if skipped:
        shown = "; ".join(f"row {n}: {why}" for n, why in skipped[:5])
        more = f"; and {len(skipped) - 5} more" if len(skipped) > 5 else ""
        parts.append(f"Skipped {len(skipped)} row{'s' if len(skipped) != 1 else ''} ({shown}{more}).")
    if not records:
        parts.append("Nothing was imported: fix the rows above and upload again.")
    parts.extend(notes)
    return " ".join(parts)


def _finish(rows: list[Row], bad: list[tuple[int, str]], name: str, source: str, fmt: str, max_rows: int,
            max_prompt_chars: int) -> ImportResult:
    skipped = list(bad)
    records, truncated, notes = _rows_to_records(rows, name, source, max_rows, max_prompt_chars, skipped)
    skipped.sort(key=lambda item: item[0])
    return ImportResult(prompts=records, skipped=skipped, message=_summary(records, skipped, name, notes),
                        format=fmt, truncated_rows=truncated, notes=notes)


# ---------------------------------------------------------------- public API


def import_prompts(path_or_bytes: str | Path | bytes | bytearray, filename: str | None = None,
                   max_bytes: int = DEFAULT_MAX_BYTES, max_rows: int = DEFAULT_MAX_ROWS,
                   max_prompt_chars: int = DEFAULT_MAX_PROMPT_CHARS, fmt: str | None = None) -> ImportResult:
    """Read prompts from an uploaded file (path or bytes). ``filename`` names bytes and picks the format by its
    extension; ``fmt`` forces one of csv, tsv, jsonl, json, txt, parquet. Raises SourceError when the file as a
    whole cannot be read; row problems are in ``result.skipped``."""
    data, name = _read_source(path_or_bytes, filename, max_bytes)
    if not data.strip(b" \t\r\n\xef\xbb\xbf\xff\xfe\x00"):
        raise SourceError(f"{name} is empty. Upload a file with one prompt per row.")
    if fmt is not None and fmt not in FORMATS:
        raise SourceError(f"format {fmt!r} is not supported; use one of {', '.join(FORMATS)}.")
    fmt = fmt or detect_format(data, name)
    source = f"upload:{name}"
    bad: list[tuple[int, str]] = []
    if fmt == "parquet":
        rows = _parquet_rows(data, name)
    else:
        text = decode_text(data, name)
        if not text.strip():
            raise SourceError(f"{name} is empty. Upload a file with one prompt per row.")
        if fmt in ("csv", "tsv"):
            rows = _csv_rows(text, name, "\t" if fmt == "tsv" else None)
        elif fmt == "jsonl":
            rows, bad = _jsonl_rows(text, name)
        elif fmt == "json":
            rows, bad = _json_rows(text, name)
        else:
            rows = _txt_rows(text)
    if not rows and not bad:
        raise SourceError(f"{name} has no rows with prompts.")
    return _finish(rows, bad, name, source, fmt, max_rows, max_prompt_chars)


def parse_typed(text: str, category: str = "typed", intended_label: str | None = None,
                max_rows: int = DEFAULT_MAX_ROWS, max_prompt_chars: int = DEFAULT_MAX_PROMPT_CHARS) -> ImportResult:
    """Prompts typed in the UI, one per line (blank lines ignored)."""
    if intended_label is not None and intended_label not in ("benign", "harmful"):
        raise SourceError(f"intended label {intended_label!r}: use benign, harmful, or leave it empty.")
    rows = [(n, {**row, "category": category, "intended_label": intended_label or ""})
            for n, row in _txt_rows(text or "")]
    if not rows:
        raise SourceError("No prompts typed: write one prompt per line.")
    return _finish(rows, [], "the typed text", "typed", "typed", max_rows, max_prompt_chars)


def load_hub_dataset(dataset_id: str, split: str = "train", config: str | None = None,
                     max_rows: int = DEFAULT_MAX_ROWS, max_prompt_chars: int = DEFAULT_MAX_PROMPT_CHARS,
                     token: str | None = None) -> ImportResult:
    """Prompts from a Hugging Face Hub dataset. Only call this when the user asked for a Hub dataset."""
    dataset_id = (dataset_id or "").strip()
    if not dataset_id or dataset_id.count("/") > 1 or dataset_id.startswith(("/", ".")):
        raise SourceError(f"{dataset_id!r} is not a Hub dataset id; use the form owner/name.")
    try:
        import datasets
        from datasets.exceptions import DatasetNotFoundError
    except ImportError as exc:  # pragma: no cover - datasets is a pinned dependency
        raise SourceError("Loading from the Hub needs the datasets package: pip install datasets") from exc
    try:
        dataset = datasets.load_dataset(dataset_id, config, split=split, token=token)
    except DatasetNotFoundError as exc:
        raise SourceError(f"The Hugging Face Hub has no dataset {dataset_id!r} that this token can see. Check the "
                          "spelling; for a private or gated dataset set HF_TOKEN.") from exc
    except ValueError as exc:
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "split" in text.lower() or "config" in text.lower():
            raise SourceError(f"{dataset_id}: {text}") from exc
        raise SourceError(f"Could not load {dataset_id} from the Hub: {text}") from exc
    except Exception as exc:
        # Offline mode, refused connections and timeouts surface as ConnectionError/OSError or as
        # huggingface_hub/requests/httpx errors depending on where they happen.
        module = type(exc).__module__
        if isinstance(exc, (ConnectionError, TimeoutError, OSError)) or module.startswith(
                ("huggingface_hub", "requests", "httpx", "urllib3")):
            raise SourceError(f"Could not reach the Hugging Face Hub to load {dataset_id!r} "
                              f"({type(exc).__name__}). Check the network (or HF_ENDPOINT, and that HF_HUB_OFFLINE "
                              "is not set), or upload the prompts as a file instead.") from exc
        raise
    if hasattr(dataset, "keys") and not hasattr(dataset, "column_names"):
        raise SourceError(f"{dataset_id}: choose a split ({', '.join(dataset.keys())}).")
    available = len(dataset)
    dataset = dataset.select(range(min(available, max_rows + 1)))
    rows = [(index + 1, dict(row)) for index, row in enumerate(dataset)]
    if not rows:
        raise SourceError(f"{dataset_id} split {split!r} has no rows.")
    result = _finish(rows, [], dataset_id, f"hub:{dataset_id}", "hub", max_rows, max_prompt_chars)
    if available > max_rows + 1:
        result.truncated_rows = available - max_rows
        result.notes[:] = [n for n in result.notes if not n.startswith("Only the first")]
        note = (f"Only the first {max_rows} rows were read; {available - max_rows} more were left out (the limit "
                f"is {max_rows} rows per import).")
        result.notes.append(note)
        result.message = _summary(result.prompts, result.skipped, dataset_id, result.notes)
    return result
