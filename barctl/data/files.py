"""Resolve a local dataset spec's `path` (a file, a directory or a glob) to its files."""

from __future__ import annotations

import glob
from pathlib import Path

from barctl.errors import BarctlError

# File extension -> the `datasets` builder that reads it.
BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}


def shown(path: Path | str) -> str:
    """A path as messages show it: relative to the working directory when inside it."""
    path = Path(path)
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def where(spec: dict, file: Path | None = None) -> str:
    """`dataset 'name' (file)`: how a message names a dataset and the file at fault."""
    if spec.get("hub"):
        place = f"hub {spec['hub']}"
    else:
        place = shown(file if file is not None else spec["path"])
    return f"dataset {spec['name']!r} ({place})"


def resolve_files(spec: dict) -> list[Path]:
    """The files a local spec names, sorted; BarctlError when there are none.

    A directory contributes its data files (by extension, recursively, hidden ones
    skipped); a glob contributes every file it matches, whatever the extension.
    """
    path = Path(spec["path"])
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(
            p
            for p in path.rglob("*")
            if p.is_file()
            and p.suffix.lower() in BUILDERS
            and not any(part.startswith(".") for part in p.relative_to(path).parts)
        )
        if not files:
            raise BarctlError(f"{where(spec)}: the directory holds no {_extensions()} files")
        return files
    if any(ch in spec["path"] for ch in "*?["):
        files = sorted(Path(p) for p in glob.glob(spec["path"], recursive=True) if Path(p).is_file())
        if not files:
            raise BarctlError(f"{where(spec)}: the pattern matches no files")
        return files
    raise BarctlError(f"{where(spec)}: no such file or directory")


def file_type_problem(spec: dict, files: list[Path]) -> str | None:
    """Why these files cannot be read as one dataset (unsupported or mixed types), or None."""
    for file in files:
        if file.suffix.lower() not in BUILDERS:
            return f"{where(spec, file)}: unsupported file type {file.suffix or '(none)'!r}; use {_extensions()}"
    builders = {BUILDERS[f.suffix.lower()] for f in files}
    if len(builders) > 1:
        kinds = ", ".join(sorted({f.suffix.lower() for f in files}))
        return f"{where(spec)}: the files mix types ({kinds}); keep one type per dataset"
    return None


def builder_for(spec: dict, files: list[Path]) -> str:
    """The `datasets` builder name for these files; BarctlError if they have no single one."""
    problem = file_type_problem(spec, files)
    if problem:
        raise BarctlError(problem)
    return BUILDERS[files[0].suffix.lower()]


def _extensions() -> str:
    return ", ".join(BUILDERS)
