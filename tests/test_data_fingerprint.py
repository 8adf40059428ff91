"""Fingerprints of local and hub datasets, and the digest cache that keeps planning fast."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from barctl.data import fingerprint as fp
from barctl.data.fingerprint import FingerprintCache, file_digest, fingerprint
from barctl.errors import BarctlError

HOUR_NS = 3600 * 10**9


def write(path: Path, text: str, age_ns: int = HOUR_NS) -> Path:
    """Write a file whose mtime lies `age_ns` in the past (old enough to be cached)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    mtime = time.time_ns() - age_ns
    os.utime(path, ns=(mtime, mtime))
    return path


def spec(path: Path | str, name: str = "math_sft") -> dict:
    return {"name": name, "path": str(path), "format": "text"}


@pytest.fixture
def cache(tmp_path: Path) -> FingerprintCache:
    return FingerprintCache(tmp_path / ".barctl" / "cache" / "digests.json")


@pytest.fixture
def hashes(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The files actually read and hashed."""
    calls: list[Path] = []
    real = fp.content_digest

    def counting(path: Path) -> str:
        calls.append(path)
        return real(path)

    monkeypatch.setattr(fp, "content_digest", counting)
    return calls


def test_local_file_digest_is_sha256_of_content(tmp_path, cache):
    data = write(tmp_path / "a.jsonl", '{"text": "x"}\n')
    result = fingerprint(spec(data), cache)
    expected = "sha256:" + hashlib.sha256(data.read_bytes()).hexdigest()
    assert result["kind"] == "files"
    assert result["files"] == {str(data): expected}
    assert result["digest"].startswith("sha256:")


def test_content_change_changes_digest(tmp_path, cache):
    data = write(tmp_path / "a.jsonl", '{"text": "x"}\n')
    before = fingerprint(spec(data), cache)
    write(data, '{"text": "y"}\n', age_ns=HOUR_NS // 2)  # same size, new mtime
    after = fingerprint(spec(data), cache)
    assert after["digest"] != before["digest"]
    assert after["files"][str(data)] != before["files"][str(data)]


def test_mtime_change_alone_rehashes_to_the_same_digest(tmp_path, cache, hashes):
    data = write(tmp_path / "a.jsonl", '{"text": "x"}\n')
    before = fingerprint(spec(data), cache)
    mtime = data.stat().st_mtime_ns + 10**9
    os.utime(data, ns=(mtime, mtime))
    after = fingerprint(spec(data), cache)
    assert len(hashes) == 2
    assert after == before


def test_cache_hit_does_not_reread(tmp_path, cache, hashes):
    data = write(tmp_path / "a.jsonl", '{"text": "x"}\n')
    first = fingerprint(spec(data), cache)
    again = fingerprint(spec(data), FingerprintCache(cache.path))  # a new plan reads the saved cache
    assert hashes == [data]
    assert again == first
    assert json.loads(cache.path.read_text())["files"][str(data)][2] == first["files"][str(data)]


def test_just_written_files_are_not_cached(tmp_path, cache, hashes):
    data = write(tmp_path / "a.jsonl", '{"text": "x"}\n', age_ns=0)
    fingerprint(spec(data), cache)
    fingerprint(spec(data), cache)
    assert len(hashes) == 2


CORRUPT = ["not json{", "[]", '{"version": 1, "files": {"/x": [1]}}', '{"files": 3}', "\xff"]


@pytest.mark.parametrize("content", CORRUPT)
def test_corrupt_cache_is_ignored_and_rebuilt(tmp_path, cache, content):
    cache.path.parent.mkdir(parents=True)
    cache.path.write_text(content, encoding="latin-1")
    data = write(tmp_path / "a.jsonl", '{"text": "x"}\n')
    result = fingerprint(spec(data), FingerprintCache(cache.path))
    saved = json.loads(cache.path.read_text())
    assert saved["files"][str(data)][2] == result["files"][str(data)]
    assert not [p for p in cache.path.parent.iterdir() if p != cache.path]  # no temp file left


def test_file_digest_is_reusable_for_any_file(tmp_path, cache):
    weights = write(tmp_path / "store" / "model.safetensors", "weights")
    digest = file_digest(weights, cache)
    cache.save()
    assert digest == "sha256:" + hashlib.sha256(b"weights").hexdigest()
    assert FingerprintCache(cache.path).get(str(weights), 7, weights.stat().st_mtime_ns) == digest


def test_directory_takes_its_data_files_sorted(tmp_path, cache):
    root = tmp_path / "data"
    for name in ["b.jsonl", "a.jsonl", "sub/c.jsonl", "README.md", ".cache/x.jsonl"]:
        write(root / name, name)
    result = fingerprint(spec(root), cache)
    assert list(result["files"]) == [str(root / n) for n in ["a.jsonl", "b.jsonl", "sub/c.jsonl"]]


def test_glob_takes_matching_files_sorted(tmp_path, cache):
    for name in ["b.jsonl", "a.jsonl", "c.csv"]:
        write(tmp_path / name, name)
    result = fingerprint(spec(tmp_path / "*.jsonl"), cache)
    assert list(result["files"]) == [str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")]


def test_digest_depends_on_content_and_order_not_location(tmp_path, cache):
    for name in ["a.jsonl", "b.jsonl"]:
        write(tmp_path / "one" / name, name)
    moved = shutil.copytree(tmp_path / "one", tmp_path / "two")
    assert fingerprint(spec(moved), cache)["digest"] == fingerprint(spec(tmp_path / "one"), cache)["digest"]
    (moved / "a.jsonl").rename(moved / "c.jsonl")  # b now comes first
    assert fingerprint(spec(moved), cache)["digest"] != fingerprint(spec(tmp_path / "one"), cache)["digest"]


@pytest.mark.parametrize("path", ["missing.jsonl", "*.parquet", "empty_dir"])
def test_missing_data_names_dataset_and_path(tmp_path, cache, path):
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(BarctlError) as error:
        fingerprint(spec(tmp_path / path), cache)
    assert "'math_sft'" in str(error.value)
    assert path in str(error.value)


def test_hub_pinned_and_unpinned(cache):
    sha = "0123456789abcdef0123456789abcdef01234567"
    pinned = fingerprint({"name": "h", "hub": "org/name", "revision": sha, "format": "text"}, cache)
    assert pinned == {"kind": "hub", "id": "org/name", "revision": sha, "pinned": True}
    for revision in ["main", "v1.0", sha[:12], None]:
        result = fingerprint({"name": "h", "hub": "org/name", "revision": revision, "format": "text"}, cache)
        assert result["pinned"] is False
    assert not cache.path.exists()


def test_import_is_light():
    code = (
        "import barctl.data.fingerprint, sys; "
        "heavy = {'torch', 'datasets', 'pyarrow'} & set(sys.modules); assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parent.parent)
