"""Rows of a dataset by name, through Hugging Face `datasets`: the one place any dataset is read.

Every kind of source (lrm_fast/config/datasets.py: hub id, URL, local file, local folder, catalogue
entry) goes through `load_rows`, which calls `datasets.load_dataset`, so the user's HF cache
(HF_DATASETS_CACHE, HF_HOME) and the offline switches (HF_HUB_OFFLINE, HF_DATASETS_OFFLINE) behave as
they do everywhere else in the ecosystem. One addition: a URL is fetched with datasets' own download
manager without an ETag check and then loaded as a local file, because `load_dataset(data_files=URL)`
asks the server again on every call and so fails offline even when the file is cached. A URL is
therefore read once and kept: it should name fixed content (a commit in the URL, as the catalogue's do).

Errors name the dataset and split: an unknown dataset or file, a wrong split or subset (with the ones
that exist). `datasets` is imported inside the functions, so that importing lrm_fast.data (as the levers
and the trainer do) does not import it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lrm_fast.config.datasets import FILE_BUILDERS, DatasetSource, SourceKind

if TYPE_CHECKING:
    from datasets import Dataset


def load_arguments(source: DatasetSource) -> dict[str, Any]:
    """The keyword arguments of `datasets.load_dataset` for a source (a URL as given; `load_rows` loads
    its cached copy instead)."""
    if source.kind in (SourceKind.file, SourceKind.url):
        suffix = Path(source.path).suffix.lower()
        if suffix not in FILE_BUILDERS:
            supported = ", ".join(sorted(FILE_BUILDERS))
            raise ValueError(f"{source.path}: unsupported file type {suffix!r} (expected {supported})")
        builder = FILE_BUILDERS[suffix]
        return {"path": builder, "data_files": source.path, "split": source.split}
    arguments = {"path": source.path, "name": source.subset, "split": source.split}
    if source.kind == SourceKind.hub:
        arguments["revision"] = source.revision
    return arguments


def load_rows(source: DatasetSource) -> Dataset:
    """Every row of one split of one dataset, as a `datasets.Dataset` (rows are dicts)."""
    import datasets

    if source.kind == SourceKind.file and not Path(source.path).is_file():
        raise FileNotFoundError(f"dataset file not found: {source.path}")
    arguments = load_arguments(source)
    # Arrow's JSON reader takes bytes that are not UTF-8 into its strings and fails only when a row is
    # read, far from the file; JSON is UTF-8 text (RFC 8259), so a local file is checked first.
    json_file = source.kind == SourceKind.file and Path(source.path).suffix.lower() in (".json", ".jsonl")
    if json_file and (problem := _first_undecodable_line(Path(source.path))):
        raise ValueError(problem)
    try:
        with _no_progress_bars(datasets):
            if source.kind == SourceKind.url:
                arguments["data_files"] = download(source.path)
            return datasets.load_dataset(**arguments)
    except datasets.exceptions.DatasetGenerationError as error:
        raise ValueError(_bad_file(source, error)) from None
    except (FileNotFoundError, ConnectionError) as error:
        raise FileNotFoundError(
            f"{source.describe()}: not found as a local file or folder, a reachable URL, a Hugging Face Hub "
            f"dataset, or (offline) in the HF cache ({type(error).__name__}: {error})"
        ) from None
    except ValueError as error:  # a wrong split or subset, an empty file: datasets lists what exists
        if source.kind == SourceKind.file and not Path(source.path).read_bytes().strip():
            raise ValueError(f"{source.path}: no rows") from None
        raise ValueError(f"{source.describe()}: {error}") from None


def download(url: str) -> str:
    """The path of the cached copy of a URL in the HF datasets cache, downloaded on first use; offline,
    the cached copy (no request at all: the URL is trusted to name fixed content)."""
    from datasets import DownloadConfig, DownloadManager

    manager = DownloadManager(download_config=DownloadConfig(use_etag=False, disable_tqdm=True))
    return manager.download(url)


@contextmanager
def _no_progress_bars(datasets_module) -> Iterator[None]:
    """datasets' progress bars off for the block (a training log is not the place for them)."""
    enabled = datasets_module.is_progress_bar_enabled()
    datasets_module.disable_progress_bars()
    try:
        yield
    finally:
        if enabled:
            datasets_module.enable_progress_bars()


def _bad_file(source: DatasetSource, error: Exception) -> str:
    """Why a file did not parse, naming the line of a local JSON file (datasets' parser names a row of a
    block, not a line); the file is scanned only for this message, after loading failed."""
    path = Path(source.path)
    text_file = source.kind == SourceKind.file and path.suffix.lower() in (".json", ".jsonl")
    if text_file and path.suffix.lower() == ".jsonl":
        with path.open(encoding="utf-8") as lines:
            for number, line in enumerate(lines, start=1):
                problem = _json_object_problem(line)
                if problem:
                    return f"{path}, line {number}: {problem}"
    if text_file and path.suffix.lower() == ".json":
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as decode_error:
            return f"{path}, line {decode_error.lineno}: invalid JSON ({decode_error.msg})"
    return f"{source.describe()}: {error.__cause__ or error}"


def _first_undecodable_line(path: Path) -> str | None:
    """JSON is UTF-8 text (RFC 8259): the first line that is not, with the offending byte."""
    with path.open("rb") as lines:
        for number, line in enumerate(lines, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as error:
                byte = line[error.start]
                return (
                    f"{path}, line {number}: not UTF-8 text (byte 0x{byte:02x} at column {error.start + 1})"
                )
    return None


def _json_object_problem(line: str) -> str | None:
    if not line.strip():
        return None
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        return f"invalid JSON ({error.msg})"
    return None if isinstance(record, dict) else f"expected a JSON object, got {type(record).__name__}"


def content_hash(rows: Dataset) -> str:
    """A hash of the rows' content in order (sha256 of canonical JSON lines), independent of the file
    format, Arrow version and cache: two copies of a dataset with the same hash hold the same rows."""
    digest = hashlib.sha256()
    for batch in rows.iter(batch_size=1000):
        names = list(batch)
        for values in zip(*(batch[name] for name in names), strict=True):
            row = dict(zip(names, values, strict=True))
            digest.update(json.dumps(row, sort_keys=True, ensure_ascii=False, default=str).encode())
            digest.update(b"\n")
    return digest.hexdigest()
