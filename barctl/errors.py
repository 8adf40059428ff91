"""Errors that reach the user as a clean message, never as a traceback."""

from __future__ import annotations

from dataclasses import dataclass


class BarctlError(Exception):
    """An error whose message is meant for the user as is."""


@dataclass(frozen=True)
class Issue:
    """One problem in a manifest, located by its YAML path and line."""

    path: str  # dotted YAML path, e.g. "experts.math.stages[0].kind"; "" for the document
    message: str
    line: int | None = None  # 1-based
    column: int | None = None  # 1-based

    def format(self, filename: str) -> str:
        where = filename
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        subject = f"{self.path}: " if self.path else ""
        return f"{where}: {subject}{self.message}"


class ManifestError(BarctlError):
    """A manifest with one or more problems; all of them are reported at once."""

    def __init__(self, filename: str, issues: list[Issue]):
        self.filename = filename
        self.issues = sorted(issues, key=lambda i: (i.line or 0, i.column or 0, i.path))
        count = len(self.issues)
        lines = [f"{filename}: {count} error{'s' if count != 1 else ''}"]
        lines += ["  " + issue.format(filename) for issue in self.issues]
        super().__init__("\n".join(lines))


class UnsupportedModel(BarctlError):
    """A model family barctl cannot turn into a Mixture-of-Experts, with the reason."""


class NodeFailed(BarctlError):
    """A node ran and failed; its artifact was not stored."""

    def __init__(self, node_id: str, reason: str):
        self.node_id = node_id
        self.reason = reason
        super().__init__(f"{node_id} failed: {reason}")
