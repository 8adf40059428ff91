"""Tests for barctl.manifest.yamlload: plain values, source positions, and located errors."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from barctl.errors import Issue, ManifestError
from barctl.manifest.yamlload import LoadedYaml, format_path, load_yaml, load_yaml_text

MANIFEST = """\
# A realistic manifest: mappings in lists in mappings, anchors and merges.
name: demo-moe
base_model: meta-llama/Llama-3.1-8B
defaults: &train
  lr: 1e-4
  epochs: 3
experts:
  math:
    datasets: [gsm8k, "my data"]
    stages:
      - kind: sft
        <<: *train
        epochs: 5
      - kind: dpo
        beta: 0.1
        enabled: yes
router:
  top_k: 2
  country: NO
  notes:
"""


def load(text: str | bytes, filename: str = "bar.yaml") -> LoadedYaml:
    return load_yaml_text(text, filename)


def single_issue(text: str | bytes) -> Issue:
    with pytest.raises(ManifestError) as caught:
        load(text)
    message = str(caught.value)
    assert message.startswith("bar.yaml: 1 error\n")
    assert "Traceback" not in message and "yaml." not in message
    [issue] = caught.value.issues
    return issue


def test_manifest_values() -> None:
    assert load(MANIFEST).data == {
        "name": "demo-moe",
        "base_model": "meta-llama/Llama-3.1-8B",
        "defaults": {"lr": 1e-4, "epochs": 3},
        "experts": {
            "math": {
                "datasets": ["gsm8k", "my data"],
                "stages": [
                    {"kind": "sft", "lr": 1e-4, "epochs": 5},
                    {"kind": "dpo", "beta": 0.1, "enabled": "yes"},
                ],
            }
        },
        "router": {"top_k": 2, "country": "NO", "notes": None},
    }


@pytest.mark.parametrize(
    ("path", "position"),
    [
        ((), (2, 1)),
        (("name",), (2, 7)),
        (("experts", "math"), (9, 5)),
        (("experts", "math", "datasets", 1), (9, 23)),
        (("experts", "math", "stages"), (11, 7)),
        (("experts", "math", "stages", 0, "kind"), (11, 15)),
        (("experts", "math", "stages", 0, "epochs"), (13, 17)),
        (("experts", "math", "stages", 0, "lr"), (5, 7)),  # merged: where the anchor defines it
        (("experts", "math", "stages", 1, "enabled"), (16, 18)),
        (("router", "country"), (19, 12)),
    ],
)
def test_value_positions(path: tuple, position: tuple[int, int]) -> None:
    assert load(MANIFEST).locate(path) == position


@pytest.mark.parametrize(
    ("path", "position"),
    [
        (("experts", "math", "stages", 1, "beta"), (15, 9)),
        (("router", "notes"), (20, 3)),
        (("router", "missing"), (18, 3)),  # no such key: falls back to the parent mapping
    ],
)
def test_key_positions(path: tuple, position: tuple[int, int]) -> None:
    assert load(MANIFEST).key_location(path) == position


@pytest.mark.parametrize(
    ("path", "position"),
    [
        (("experts", "math", "stages", 1, "missing"), (14, 9)),
        (("experts", "math", "stages", 7, "kind"), (11, 7)),
        (("nowhere", "at", "all"), (2, 1)),
    ],
)
def test_locate_falls_back_to_nearest_ancestor(path: tuple, position: tuple[int, int]) -> None:
    assert load(MANIFEST).locate(path) == position


def test_alias_value_is_located_where_the_alias_is_written() -> None:
    loaded = load("base: &b {lr: 1}\nother: *b\n")
    assert loaded.data == {"base": {"lr": 1}, "other": {"lr": 1}}
    assert loaded.data["base"] is not loaded.data["other"]
    assert loaded.locate(("other",)) == (2, 8)
    assert loaded.locate(("other", "lr")) == (1, 15)


def test_issue_helper() -> None:
    loaded = load(MANIFEST)
    path = ("experts", "math", "stages", 0, "kind")
    assert loaded.issue(path, "bad") == Issue("experts.math.stages[0].kind", "bad", 11, 15)
    assert loaded.issue(path, "bad", at_key=True) == Issue("experts.math.stages[0].kind", "bad", 11, 9)


@pytest.mark.parametrize(
    ("path", "text"),
    [
        ((), ""),
        (("experts", "math", "stages", 0, "kind"), "experts.math.stages[0].kind"),
        (("datasets", "my data"), 'datasets["my data"]'),
        (("lr-schedule", "warmup"), '["lr-schedule"].warmup'),
        ((0, "a"), "[0].a"),
        (("q", 'say "hi"'), 'q["say \\"hi\\""]'),
    ],
)
def test_format_path(path: tuple, text: str) -> None:
    assert format_path(path) == text


@pytest.mark.parametrize(
    ("scalar", "value"),
    [
        ("true", True),
        ("False", False),
        ("TRUE", True),
        ("yes", "yes"),  # the Norway problem: YAML 1.1 booleans stay strings
        ("No", "No"),
        ("NO", "NO"),
        ("on", "on"),
        ("off", "off"),
        ("y", "y"),
        ("n", "n"),
        ("null", None),
        ("~", None),
        ("", None),
        ("42", 42),
        ("-7", -7),
        ("0x1F", 31),
        ("0o17", 15),
        ("1e-4", 1e-4),
        ("3.5", 3.5),
        (".5", 0.5),
        ("1.10", 1.1),
        (".inf", math.inf),
        ("-.Inf", -math.inf),
        ("1_000", "1_000"),
        ("0b101", "0b101"),
        ("2024-01-01", "2024-01-01"),  # no dates
        ("'true'", "true"),
        ('"42"', "42"),
        ('"null"', "null"),
        ("''", ""),
        ("|\n  3\n", "3\n"),
    ],
)
def test_scalar_resolution(scalar: str, value: object) -> None:
    result = load(f"v: {scalar}\n").data["v"]
    assert result == value and type(result) is type(value)


def test_nan() -> None:
    assert math.isnan(load("v: .NaN\n").data["v"])


def test_merge_keys() -> None:
    text = """\
a: &a {x: 1, y: 1}
b: &b {y: 2, z: 2}
c: &c
  <<: [*a, *b]
  z: 3
d:
  <<: *c
"""
    data = load(text).data
    assert data["c"] == {"x": 1, "y": 1, "z": 3}  # explicit keys win, then earlier sources
    assert data["d"] == {"x": 1, "y": 1, "z": 3}
    assert load('m: {"<<": 1}\n').data == {"m": {"<<": 1}}  # a quoted << is an ordinary key


BILLION_LAUGHS = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{name}: &{name} [{', '.join(['*' + prev] * 9)}]\n" for prev, name in zip("abcdefgh", "bcdefghi")
)
MERGE_LAUGHS = "a: &a {}\n" + "".join(
    f"{name}: &{name} {{<<: [{', '.join(['*' + prev] * 10)}]}}\n"
    for prev, name in zip("abcdefghijklmnop", "bcdefghijklmnopq")
)


@pytest.mark.parametrize("text", [BILLION_LAUGHS, MERGE_LAUGHS], ids=["aliases", "merges"])
def test_alias_expansion_is_bounded(text: str) -> None:
    issue = single_issue(text)
    assert "alias expansion too large" in issue.message


ALIAS_CHAIN = "a0: &a0 [x]\n" + "".join(f"a{i}: &a{i} [*a{i - 1}]\n" for i in range(1, 70))

FAILURES = [
    # (id, text, line, column or None, message fragment)
    ("tab", "a:\n\tb: 1\n", 2, 1, "found character '\\t'"),
    ("indent", "a: 1\n  b: 2\n", 2, 4, "mapping values are not allowed"),
    ("unclosed-flow", "a: [1, 2\nb: 3\n", 2, None, "expected ',' or ']'"),
    ("unclosed-quote", "a: 'x\n", 2, 1, "unexpected end of stream"),
    ("duplicate", "a: 1\nb: 2\na: 3\n", 3, 1, "duplicate key (first defined on line 1)"),
    ("nested-duplicate", "x:\n  - k: 1\n    k: 2\n", 3, 5, "duplicate key (first defined on line 2)"),
    ("quoted-duplicate", 'a: 1\n"a": 2\n', 2, 1, "duplicate key"),
    ("list-key", "[a]: 1\n", 1, 1, "keys must be strings, not a list"),
    ("mapping-key", "? {a: 1}\n: x\n", 1, 3, "keys must be strings, not a mapping"),
    ("int-key", "ok: 1\n1: x\n", 2, 1, 'keys must be strings, not an integer (write "1"'),
    ("bool-key", "x:\n  true: 1\n", 2, 3, "keys must be strings, not a boolean"),
    ("null-key", "~: 1\n", 1, 1, "keys must be strings, not null"),
    ("python-tag", "a: !!python/object/apply:os.system [ls]\n", 1, 4, "YAML tags are not allowed"),
    ("local-tag", "a:\n  b: !foo x\n", 2, 6, "YAML tags are not allowed (found '!foo')"),
    ("str-tag", "a: !!str 1\n", 1, 4, "YAML tags are not allowed (found '!!str')"),
    ("bang-tag", "a: ! 1\n", 1, 4, "YAML tags are not allowed"),
    ("root-tag", "--- !!map\na: 1\n", 1, 5, "YAML tags are not allowed"),
    ("recursive-alias", "a: &a\n  b: *a\n", 2, 6, "recursive alias"),
    ("recursive-merge", "a: &a\n  <<: *a\n", 2, 7, "recursive alias"),
    ("undefined-alias", "a: 1\nb: *nope\n", 2, 4, "undefined alias"),
    ("duplicate-anchor", "a: &x 1\nb: &x 2\n", 2, 4, "anchor &x is already defined on line 1"),
    ("bad-merge", "a:\n  <<: 3\n", 2, 7, "merge key '<<' needs a mapping"),
    ("bad-merge-item", "a: &a {x: 1}\nb:\n  <<: [*a, 2]\n", 3, 7, "merge key '<<' needs a mapping"),
    ("empty", "", None, None, "the manifest is empty"),
    ("comments-only", "# nothing\n\n", None, None, "the manifest is empty"),
    ("bare-document", "---\n", 2, 1, "the manifest is empty"),
    ("null-document", "null\n", 1, 1, "the manifest is empty"),
    ("two-documents", "a: 1\n---\nb: 2\n", 2, 1, "only one YAML document"),
    ("top-level-list", "- a\n- b\n", 1, 1, "must be a mapping of `key: value` lines, not a list"),
    ("top-level-string", "hello\n", 1, 1, "not a string"),
    ("deep-flow", "a: " + "[" * 100 + "]" * 100 + "\n", 1, 67, "nesting is deeper than 64 levels"),
    ("deep-aliases", ALIAS_CHAIN, 2, 10, "nesting is deeper than 64 levels"),
    ("control-char", "a: 1\nb: x\x07y\n", 2, 5, "character U+0007 is not allowed"),
    ("huge-int", "a: 1" + "0" * 5000 + "\n", 1, 4, "too many digits"),
    ("bad-utf8", "a: 1\nb: é".encode() + b"\xff\n", 2, 5, "not valid UTF-8 (byte 0xff)"),
    ("too-big", "a: " + "x" * (2 * 1024 * 1024) + "\n", None, None, "larger than 2 MiB"),
]


@pytest.mark.parametrize(
    ("text", "line", "column", "fragment"), [f[1:] for f in FAILURES], ids=[f[0] for f in FAILURES]
)
def test_failures_are_located(text: str | bytes, line: int | None, column: int | None, fragment: str) -> None:
    issue = single_issue(text)
    assert fragment in issue.message
    assert issue.line == line
    if column is not None:
        assert issue.column == column


def test_issue_path_names_the_key() -> None:
    assert single_issue("x:\n  - k: 1\n    k: 2\n").path == "x[0].k"
    assert single_issue("a: !!str 1\n").path == ""


def test_bom_is_accepted() -> None:
    loaded = load(b"\xef\xbb\xbfa: 1\nb: [2]\n")
    assert loaded.data == {"a": 1, "b": [2]}
    assert loaded.locate(("b", 0)) == (2, 5)
    assert not loaded.text.startswith("\ufeff")


def test_crlf_line_endings() -> None:
    loaded = load(MANIFEST.replace("\n", "\r\n").encode())
    assert loaded.data == load(MANIFEST).data
    assert loaded.locate(("experts", "math", "stages", 1, "enabled")) == (16, 18)
    assert single_issue(b"a: 1\r\nb: 2\r\na: 3\r\n").line == 3
    assert single_issue(b"a: 1\r\nb: \xff\r\n").line == 2


def test_load_yaml_from_file(tmp_path: Path) -> None:
    path = tmp_path / "bar.yaml"
    path.write_bytes(MANIFEST.encode())
    loaded = load_yaml(path)
    assert loaded.filename == str(path) and loaded.text == MANIFEST
    assert loaded.data["router"]["top_k"] == 2


def test_load_yaml_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bar.yaml"
    path.write_text("a: 1\na: 2\n")
    with pytest.raises(ManifestError) as caught:
        load_yaml(path)
    assert f"{path}:2:1: a: duplicate key" in str(caught.value)
    with pytest.raises(ManifestError, match="cannot read the file"):
        load_yaml(tmp_path / "missing.yaml")
