"""Datasets by name: where a dataset comes from, how its columns map onto problems, and the catalogue.

A source is one string, read in this order:

- ``catalogue:NAME``: an entry of conf/catalogue.yaml (the study's data, pinned), which carries its own
  split, revision, column mapping and prompt template;
- an http(s) URL of a .json, .jsonl or .parquet file (pin it by putting a commit in the URL);
- a local file (.json, .jsonl, .parquet) or a local folder in a dataset repository's layout (data files,
  optionally a README.md whose YAML header declares configurations and splits);
- otherwise a Hugging Face Hub dataset id (``owner/name``), with an optional subset (configuration),
  split and revision.

lrm_fast/data/loading.py turns a DatasetSource into rows (through `datasets.load_dataset`); this module
only names and checks sources, so that a config is checked without downloading anything and without
the `datasets` package. The catalogue is data, not a run's configuration, so it is read here with
PyYAML and not composed by Hydra.
"""

import re
from dataclasses import dataclass, field, fields, replace
from enum import Enum
from functools import cache
from importlib import resources
from pathlib import Path

CATALOGUE_PREFIX = "catalogue:"
FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}  # suffix -> datasets builder
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_HUB_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")
# Suffixes that mark a name as a file, supported or not (a hub id may contain dots: "owner/name.v2").
_FILE_SUFFIXES = (*FILE_BUILDERS, ".csv", ".tsv", ".txt", ".arrow")


class SourceKind(str, Enum):
    hub = "hub"
    url = "url"
    file = "file"
    folder = "folder"


@dataclass(frozen=True)
class Columns:
    """Where each field of a problem is in a dataset's rows. A dotted name reaches into a struct column
    (``reward_model.ground_truth``); ``id``, ``solutions`` and ``options`` may be absent."""

    problem: str = "problem"  # text, or a chat (a list of {role, content}): its last user message
    answer: str = "answer"  # text or a number; a list of accepted answers: any of them counts
    id: str = "id"  # the row index where absent
    solutions: str = "solutions"  # offline correct solutions (a list of strings) for sample injection
    options: str = "options"  # multiple choice: a list of option texts or a {letter: text} dict


@dataclass(frozen=True)
class DatasetSource:
    """One split of one dataset and how to read it: what lrm_fast.data.loading.load_rows loads."""

    path: str  # hub id, http(s) URL of a file, local file or local folder
    subset: str | None = None  # the dataset's configuration (load_dataset's `name`); None: its default
    split: str = "train"  # a single file is one split, "train"
    revision: str | None = None  # hub datasets: commit, tag or branch; None: the newest (unpinned)
    columns: Columns = field(default_factory=Columns)
    template: str | None = None  # prompt around {problem}; None: the reader's default
    # Text the stored problems end with that is not part of the problem (the study's training files carry
    # the instruction in their prompts): removed where present, so that the run's template adds its own.
    strip_suffix: str = ""
    note: str = ""  # catalogue entries: what the data is and how it relates to its public upstream
    name: str = ""  # catalogue entries: their name (set from the catalogue's key)

    @property
    def kind(self) -> SourceKind:
        return source_kind(self.path)

    def describe(self) -> str:
        """The dataset and split, as errors name them: ``owner/name (subset main, split test)``, or
        ``catalogue:NAME (its path, split train)``."""
        parts = [self.path] if self.name else []
        parts += [f"subset {self.subset}"] if self.subset else []
        parts.append(f"split {self.split}")
        if self.revision:
            parts.append(f"revision {self.revision}")
        elif self.kind == SourceKind.hub:
            parts.append("unpinned")
        return f"{CATALOGUE_PREFIX + self.name if self.name else self.path} ({', '.join(parts)})"


def source_kind(path: str) -> SourceKind:
    """What a source string names (catalogue names are resolved before this)."""
    if _URL.match(path):
        return SourceKind.url
    local = Path(path).expanduser()
    if local.is_dir():
        return SourceKind.folder
    if local.exists() or _looks_local(path):
        return SourceKind.file
    return SourceKind.hub


def _looks_local(path: str) -> bool:
    """A path the user meant as a local file even though it does not exist (so the error says so)."""
    return path.startswith(("/", "./", "../", "~")) or Path(path).suffix.lower() in _FILE_SUFFIXES


@cache
def catalogue() -> dict[str, DatasetSource]:
    """Every entry of conf/catalogue.yaml by name (read once)."""
    text = resources.files("lrm_fast.conf").joinpath("catalogue.yaml").read_text(encoding="utf-8")
    return parse_catalogue(text)


def parse_catalogue(text: str) -> dict[str, DatasetSource]:
    """Entries of a catalogue's YAML; an unknown key or a missing path raises ValueError naming the entry."""
    import yaml  # here, not at import: the loss path imports lrm_fast.config on hosts that may lack it

    entries = (yaml.safe_load(text) or {}).get("entries") or {}
    return {name: _entry(name, entry) for name, entry in entries.items()}


def _entry(name: str, entry: dict) -> DatasetSource:
    unknown = set(entry) - ({f.name for f in fields(DatasetSource)} - {"name"})
    unknown |= set(entry.get("columns") or {}) - {f.name for f in fields(Columns)}
    if unknown or "path" not in entry:
        problem = f"unknown keys {sorted(unknown)}" if unknown else "no path"
        raise ValueError(f"catalogue entry {name!r}: {problem}")
    columns = Columns(**(entry.get("columns") or {}))
    note = " ".join(entry.get("note", "").split())  # YAML folded text, one line
    return DatasetSource(**{**entry, "columns": columns, "note": note, "name": name})


def resolve_source(
    path: str,
    *,
    subset: str | None = None,
    split: str | None = None,
    revision: str | None = None,
    columns: dict[str, str | None] | None = None,
) -> DatasetSource:
    """The source a config names: a catalogue entry, or the path itself; the settings given (not None)
    replace the entry's (or the defaults)."""
    if path.startswith(CATALOGUE_PREFIX):
        source = catalogue_entry(path)
    else:
        source = DatasetSource(path=str(Path(path).expanduser()) if _is_local(path) else path)
    mapping = {key: value for key, value in (columns or {}).items() if value is not None}
    settings = {"subset": subset, "split": split, "revision": revision}
    return replace(
        source,
        columns=replace(source.columns, **mapping),
        **{key: value for key, value in settings.items() if value is not None},
    )


def _is_local(path: str) -> bool:
    return source_kind(path) in (SourceKind.file, SourceKind.folder)


def catalogue_entry(path: str) -> DatasetSource:
    """The entry ``catalogue:NAME`` names; an unknown name raises ValueError listing the entries."""
    name = path.removeprefix(CATALOGUE_PREFIX)
    entries = catalogue()
    if name not in entries:
        raise ValueError(f"unknown dataset {path!r}: the catalogue has {', '.join(sorted(entries))}")
    return entries[name]


def check_source(key: str, path: str | None) -> None:
    """What a config key names can be a dataset, checked without reading it: a catalogue entry that
    exists, a local file that exists with a supported suffix, a URL of such a file, or a hub id."""
    if not path:
        return
    if path.startswith(CATALOGUE_PREFIX):
        try:
            catalogue_entry(path)
        except ValueError as error:
            raise ValueError(f"{key}: {error}") from None
        return
    kind = source_kind(path)
    supported = f"a {', '.join(sorted(FILE_BUILDERS))} file, a folder, a URL, a hub id or catalogue:NAME"
    if kind in (SourceKind.file, SourceKind.url) and Path(path).suffix.lower() not in FILE_BUILDERS:
        raise ValueError(f"{key} must be {supported}, got {path!r}")
    if kind == SourceKind.file and not Path(path).expanduser().is_file():
        raise FileNotFoundError(f"{key}: no such file: {path}")
    if kind == SourceKind.hub and not _HUB_ID.match(path):
        raise ValueError(f"{key} must be {supported}, got {path!r}")
