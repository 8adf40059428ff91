"""Safe YAML loading that remembers where every value came from.

Only plain data comes out: dicts with string keys, lists, strings, numbers,
booleans and None, resolved YAML-1.2-core style (``yes``/``no``/``on``/``off``
stay strings). Every problem becomes a ManifestError with a located Issue.
"""

from __future__ import annotations

import codecs
import json
import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import yaml
from yaml.events import AliasEvent, CollectionStartEvent, ScalarEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from barctl.errors import Issue, ManifestError

YamlPath = tuple[str | int, ...]
Position = tuple[int, int]  # 1-based (line, column)

MAX_BYTES = 2 * 1024 * 1024
MAX_NODES = 100_000
MAX_DEPTH = 64

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_LINE_BREAK = re.compile(r"\r\n|[\r\n\x85\u2028\u2029]")
_NULLS = ("", "~", "null", "Null", "NULL")
_DECIMAL = re.compile(r"[-+]?[0-9]+")
_OCTAL = re.compile(r"0o[0-7]+")
_HEX = re.compile(r"0x[0-9a-fA-F]+")
_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?")
_INFINITY = re.compile(r"[-+]?\.(inf|Inf|INF)")
_NAN = re.compile(r"\.(nan|NaN|NAN)")


@dataclass
class LoadedYaml:
    """A parsed manifest plus the source position of every value and key."""

    data: Any
    text: str
    filename: str
    positions: dict[YamlPath, Position] = field(default_factory=dict, repr=False)
    key_positions: dict[YamlPath, Position] = field(default_factory=dict, repr=False)

    def locate(self, path: YamlPath) -> Position | None:
        """Position of the value at `path`, else of its nearest existing ancestor."""
        for end in range(len(path), -1, -1):
            position = self.positions.get(tuple(path[:end]))
            if position is not None:
                return position
        return None

    def key_location(self, path: YamlPath) -> Position | None:
        """Position of the mapping key that `path` ends in, else `locate(path)`."""
        return self.key_positions.get(tuple(path)) or self.locate(path)

    def issue(self, path: YamlPath, message: str, *, at_key: bool = False) -> Issue:
        """An Issue about `path`, located at its value (or its key if `at_key`)."""
        position = self.key_location(path) if at_key else self.locate(path)
        return Issue(format_path(path), message, *(position or (None, None)))


def format_path(path: YamlPath) -> str:
    """Render a path as `experts.math.stages[0].kind`; odd keys as `["my data"]`."""
    parts = []
    for part in path:
        if isinstance(part, int):
            parts.append(f"[{part}]")
        elif _IDENTIFIER.fullmatch(part):
            parts.append(f".{part}" if parts else part)
        else:
            parts.append(f"[{json.dumps(part, ensure_ascii=False)}]")
    return "".join(parts)


def load_yaml(path: Path) -> LoadedYaml:
    """Read and load the manifest at `path`."""
    filename = str(path)
    try:
        with open(path, "rb") as file:
            raw = file.read(MAX_BYTES + 1)
    except OSError as error:
        raise ManifestError(filename, [Issue("", f"cannot read the file: {error.strerror}")]) from None
    return load_yaml_text(raw, filename)


def load_yaml_text(text_or_bytes: str | bytes, filename: str = "<string>", *, max_bytes: int = MAX_BYTES,
                   max_nodes: int = MAX_NODES) -> LoadedYaml:
    """Load a manifest from text or UTF-8 bytes; `filename` is used in errors.

    The limits bound the file's size and the values that alias expansion may produce.
    """
    raw = text_or_bytes
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogatepass")
    try:
        return _load(raw, filename, max_bytes, max_nodes)
    except _Problem as problem:
        raise ManifestError(filename, [problem.issue]) from None


class _Problem(Exception):
    """An internal failure carrying the Issue to report."""

    def __init__(self, message: str, position: Position | None = None, path: YamlPath = ()):
        super().__init__(message)
        self.issue = Issue(format_path(path), message, *(position or (None, None)))


@dataclass(frozen=True)
class _Alias:
    """A use of an anchor: the shared node and where the `*alias` was written."""

    target: Node
    start_mark: Any  # a yaml Mark


def _load(raw: bytes, filename: str, max_bytes: int, max_nodes: int) -> LoadedYaml:
    text = _decode(raw, max_bytes)
    root = _compose(text)
    if root is None:
        raise _Problem("the manifest is empty")
    target, mark = _unalias(root)
    if isinstance(target, ScalarNode) and _resolve(target, ()) is None:
        raise _Problem("the manifest is empty", _position(mark))
    if not isinstance(target, MappingNode):
        message = f"the manifest must be a mapping of `key: value` lines, not {_kind(target)}"
        raise _Problem(message, _position(mark))
    _check_expansion(target, max_nodes)
    builder = _Builder(max_nodes)
    data = builder.build(root, ())
    return LoadedYaml(data, text, filename, builder.positions, builder.key_positions)


def _decode(raw: bytes, max_bytes: int) -> str:
    if len(raw) > max_bytes:
        raise _Problem(f"the file is larger than {max_bytes // 2**20} MiB; it should point at data, not contain it")
    raw = raw.removeprefix(codecs.BOM_UTF8)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        before = raw[: error.start].decode("utf-8")
        message = f"the file is not valid UTF-8 (byte 0x{raw[error.start]:02x})"
        raise _Problem(message, _text_position(before, len(before))) from None


def _text_position(text: str, index: int) -> Position:
    """1-based (line, column) of `text[index]`, counting line breaks as YAML does."""
    breaks = list(_LINE_BREAK.finditer(text, 0, index))
    line_start = breaks[-1].end() if breaks else 0
    return len(breaks) + 1, index - line_start + 1


def _position(mark: Any) -> Position:
    """Where a yaml Mark points (PyYAML's stubs make every event's mark optional; the parser always sets it)."""
    return mark.line + 1, mark.column + 1


def _unalias(node: Node | _Alias) -> tuple[Node, yaml.Mark]:
    """The real node behind `node`, and where `node` itself was written."""
    if isinstance(node, _Alias):
        return node.target, node.start_mark
    return node, node.start_mark


class _Composer(yaml.SafeLoader):
    """SafeLoader's composer, refusing tags, anchor reuse and deep nesting; keeps alias sites."""

    def __init__(self, text: str):
        super().__init__(text)
        self._depth = 0

    # An alias comes back as an _Alias (the shared node and where the alias is), which _Builder unwraps.
    def compose_node(self, parent: Node | None, index: Any) -> Node | _Alias | None:  # type: ignore[override]
        event = self.peek_event()
        if isinstance(event, AliasEvent):
            return _Alias(cast(Node, super().compose_node(parent, index)), event.start_mark)
        if isinstance(event, (ScalarEvent, CollectionStartEvent)):
            self._check_event(event)
        if not isinstance(event, CollectionStartEvent):
            return super().compose_node(parent, index)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _Problem(f"nesting is deeper than {MAX_DEPTH} levels", _position(event.start_mark))
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def _check_event(self, event: ScalarEvent | CollectionStartEvent) -> None:
        if event.tag is not None:
            tag = event.tag.replace("tag:yaml.org,2002:", "!!", 1)
            raise _Problem(f"YAML tags are not allowed (found {tag!r})", _position(event.start_mark))
        if event.anchor in self.anchors:
            first = self.anchors[event.anchor].start_mark.line + 1
            message = f"anchor &{event.anchor} is already defined on line {first}"
            raise _Problem(message, _position(event.start_mark))


def _compose(text: str) -> Node | _Alias | None:
    """The single document's root node, or None for an empty stream."""
    try:
        return _single_document(_Composer(text))
    except yaml.MarkedYAMLError as error:
        raise _syntax_problem(error) from None
    except yaml.reader.ReaderError as error:
        message = f"character U+{error.character:04X} is not allowed in YAML"
        raise _Problem(message, _text_position(text, error.position)) from None


def _single_document(loader: _Composer) -> Node | _Alias | None:
    try:
        root = loader.get_node() if loader.check_node() else None
        if root is not None and loader.check_node():
            message = "only one YAML document is allowed (remove the second '---')"
            raise _Problem(message, _position(loader.peek_event().start_mark))
        return root
    finally:
        loader.dispose()


def _syntax_problem(error: yaml.MarkedYAMLError) -> _Problem:
    message = error.problem or error.context or "invalid YAML"
    if error.problem and error.context and error.context_mark:
        message += f" ({error.context} on line {error.context_mark.line + 1})"
    mark = error.problem_mark or error.context_mark
    return _Problem(message, _position(mark) if mark else None)


def _check_expansion(root: MappingNode, max_nodes: int) -> None:
    """Refuse, before building anything, a document whose aliases expand beyond `max_nodes`
    values, located at the first top-level key that crosses the limit (an upper bound for
    merges: every value of a merged mapping is counted)."""
    sizes: dict[int, int] = {}
    total = 1
    for key_node, value_node in root.value:
        total += _expanded_size(key_node, sizes, set()) + _expanded_size(value_node, sizes, set())
        if total > max_nodes:
            message = f"alias expansion too large (a YAML 'billion laughs'?): over {max_nodes:,} values"
            key, mark = _unalias(key_node)
            raise _Problem(message, _position(mark), (key.value,) if isinstance(key, ScalarNode) else ())


def _expanded_size(node: Node | _Alias, sizes: dict[int, int], active: set[int]) -> int:
    """How many values `node` becomes once its aliases are expanded; each distinct node is sized once."""
    target, _ = _unalias(node)
    if id(target) in sizes:
        return sizes[id(target)]
    if id(target) in active or isinstance(target, ScalarNode):
        return 1  # a recursive alias is reported by the builder
    active.add(id(target))
    children = target.value if isinstance(target, SequenceNode) else [n for pair in target.value for n in pair]
    size = 1 + sum(_expanded_size(child, sizes, active) for child in children)
    active.discard(id(target))
    sizes[id(target)] = size
    return size


class _Builder:
    """Turns a composed node graph into plain values, recording positions.

    Aliases are expanded into fresh copies, so every path has its own value and
    position; expansion is bounded by MAX_NODES, nesting by MAX_DEPTH.
    """

    def __init__(self, max_nodes: int) -> None:
        self.positions: dict[YamlPath, Position] = {}
        self.key_positions: dict[YamlPath, Position] = {}
        self._count = 0
        self._max_nodes = max_nodes
        self._active: set[int] = set()

    def build(self, node: Node | _Alias, path: YamlPath) -> Any:
        target, mark = _unalias(node)
        self.positions[path] = _position(mark)
        self._charge(1, mark, path)
        if isinstance(target, ScalarNode):
            return _resolve(target, path)
        if len(path) >= MAX_DEPTH:
            raise _Problem(f"nesting is deeper than {MAX_DEPTH} levels", _position(mark), path)
        with self._entering(target, mark, path):
            if isinstance(target, SequenceNode):
                return [self.build(item, path + (index,)) for index, item in enumerate(target.value)]
            return self._mapping(cast(MappingNode, target), path)  # neither a scalar nor a sequence

    def _mapping(self, node: MappingNode, path: YamlPath) -> dict[str, Any]:
        result = {}
        for key, (key_node, value_node) in self._entries(node, path).items():
            self.key_positions[path + (key,)] = _position(_unalias(key_node)[1])
            result[key] = self.build(value_node, path + (key,))
        return result

    def _entries(self, node: MappingNode, path: YamlPath) -> dict[str, tuple[Node, Node]]:
        """Key -> (key node, value node), merged (`<<`) keys first, explicit keys winning."""
        explicit, sources = _explicit_entries(node, path)
        merged: dict[str, tuple[Node, Node]] = {}
        for source, mark in sources:
            for key, entry in self._flatten(source, mark, path).items():
                merged.setdefault(key, entry)
        return {key: entry for key, entry in merged.items() if key not in explicit} | explicit

    def _flatten(self, source: MappingNode, mark: yaml.Mark, path: YamlPath) -> dict[str, tuple[Node, Node]]:
        """The entries `source` contributes when merged in where `mark` names it."""
        self._charge(1 + len(source.value), mark, path)
        with self._entering(source, mark, path):
            return self._entries(source, path)

    def _charge(self, count: int, mark: yaml.Mark, path: YamlPath) -> None:
        self._count += count
        if self._count > self._max_nodes:
            message = f"alias expansion too large (a YAML 'billion laughs'?): over {self._max_nodes:,} values"
            raise _Problem(message, _position(mark), path)

    @contextmanager
    def _entering(self, node: Node, mark: yaml.Mark, path: YamlPath) -> Iterator[None]:
        if id(node) in self._active:
            raise _Problem("recursive alias: an anchor is used inside itself", _position(mark), path)
        self._active.add(id(node))
        try:
            yield
        finally:
            self._active.discard(id(node))


def _explicit_entries(
    node: MappingNode, path: YamlPath
) -> tuple[dict[str, tuple[Node, Node]], list[tuple[MappingNode, yaml.Mark]]]:
    """The mapping's own keys (checked for type and duplicates) and its `<<` sources."""
    explicit: dict[str, tuple[Node, Node]] = {}
    sources: list[tuple[MappingNode, yaml.Mark]] = []
    for key_node, value_node in node.value:
        key_target, key_mark = _unalias(key_node)
        if isinstance(key_target, ScalarNode) and key_target.style is None and key_target.value == "<<":
            sources += _merge_sources(value_node, path)
            continue
        key = _key(key_target, key_mark, path)
        if key in explicit:
            first = _unalias(explicit[key][0])[1].line + 1
            raise _Problem(f"duplicate key (first defined on line {first})", _position(key_mark), path + (key,))
        explicit[key] = (key_node, value_node)
    return explicit, sources


def _merge_sources(value_node: Node | _Alias, path: YamlPath) -> list[tuple[MappingNode, yaml.Mark]]:
    """The mappings a `<<` value names, highest precedence first, each with where it is named."""
    target, mark = _unalias(value_node)
    items = target.value if isinstance(target, SequenceNode) else [value_node]
    sources = [_unalias(item) for item in items]
    if not all(isinstance(source, MappingNode) for source, _ in sources):
        raise _Problem("the merge key '<<' needs a mapping or a list of mappings", _position(mark), path)
    return [(cast(MappingNode, source), source_mark) for source, source_mark in sources]


def _key(target: Node, mark: yaml.Mark, path: YamlPath) -> str:
    key = _resolve(target, path) if isinstance(target, ScalarNode) else target
    if isinstance(key, str):
        return key
    message = f"keys must be strings, not {_kind(key)}"
    if isinstance(target, ScalarNode) and target.value:
        message += f' (write "{target.value}" if you mean the text)'
    raise _Problem(message, _position(mark), path)


def _kind(value: Any) -> str:
    """How a YAML value is named in messages."""
    if isinstance(value, ScalarNode):
        value = _resolve(value, ())
    kinds = [(MappingNode, "a mapping"), (SequenceNode, "a list"), (bool, "a boolean"), (int, "an integer"),
             (float, "a number"), (str, "a string"), (type(None), "null")]
    return next(name for kind, name in kinds if isinstance(value, kind))


def _resolve(node: ScalarNode, path: YamlPath) -> Any:
    """A scalar's value: quoted and block scalars are strings, plain ones YAML-1.2-core."""
    if node.style is not None:
        return node.value
    try:
        return _plain_scalar(node.value)
    except ValueError:  # an integer beyond Python's int() digit limit
        raise _Problem("number has too many digits", _position(node.start_mark), path) from None


def _plain_scalar(text: str) -> Any:
    if text in _NULLS:
        return None
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    if _DECIMAL.fullmatch(text):
        return int(text)
    if _OCTAL.fullmatch(text):
        return int(text[2:], 8)
    if _HEX.fullmatch(text):
        return int(text[2:], 16)
    if _FLOAT.fullmatch(text):
        return float(text)
    if _INFINITY.fullmatch(text):
        return -math.inf if text.startswith("-") else math.inf
    if _NAN.fullmatch(text):
        return math.nan
    return text
