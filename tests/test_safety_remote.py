"""A store shared between machines: CI pushes what it builds, a fresh clone pulls it (content
checked) instead of building, a damaged remote artifact is rebuilt locally, and gc prunes
what no lockfile entry references. Against a shared path and an S3-compatible server (moto)."""

from __future__ import annotations

import json

import pytest

from tests.projects import apply, barctl, changed, make_project, plan_json, tiny_manifest, write_manifest

SHARED = {"store": {"remote": "../shared"}}
PULLED = ["base", "experts.math.branch", "experts.code.branch", "merge", "router"]


def _built_by_ci(tmp_path, tokenizer_dir):
    ci = make_project(tmp_path / "ci", tokenizer_dir, tiny_manifest(**SHARED))
    result = apply(ci, "--push")
    assert result.output.count("pushed to ../shared") == len(PULLED)  # gates and export are never shared
    return ci


def test_a_fresh_clone_pulls_what_ci_pushed_and_builds_the_same_output(tmp_path, tokenizer_dir):
    ci = _built_by_ci(tmp_path, tokenizer_dir)
    laptop = make_project(tmp_path / "laptop", tokenizer_dir, tiny_manifest(**SHARED))
    result = apply(laptop)
    assert result.output.count("pulled from ../shared") == len(PULLED)
    assert "pushed" not in result.output  # reading needs no --push
    assert (laptop.parent / "out/moe/model.safetensors").read_bytes() == \
        (ci.parent / "out/moe/model.safetensors").read_bytes()
    lock = json.loads(barctl("show", laptop, "--json").output)
    assert all(lock[node]["pulled_from"] == "../shared" for node in PULLED)
    assert changed(plan_json(laptop)) == {}


def test_a_damaged_remote_artifact_is_built_here_instead(tmp_path, tokenizer_dir):
    _built_by_ci(tmp_path, tokenizer_dir)
    weights = next((tmp_path / "shared").glob("*/*/artifact/model.safetensors"))  # a branch's or the merge's
    data = bytearray(weights.read_bytes())
    data[-8:] = bytes(8)
    weights.write_bytes(bytes(data))
    laptop = make_project(tmp_path / "laptop", tokenizer_dir, tiny_manifest(**SHARED))
    result = apply(laptop)
    assert "fails its digest; building it here instead" in result.output
    assert changed(plan_json(laptop)) == {}


def test_gc_removes_only_unreferenced_artifacts(tmp_path, tokenizer_dir):
    path = make_project(tmp_path, tokenizer_dir)
    apply(path)
    write_manifest(path, tiny_manifest({"math": {"seed": 7}, "code": {}}))
    apply(path)
    result = json.loads(barctl("gc", path, "--json").output)
    assert len(result["removed"]) == 3 and result["bytes"] > 0  # the old math branch, merge and router
    assert changed(plan_json(path)) == {}  # everything referenced is still there


def test_push_and_pull_through_an_s3_compatible_server(tmp_path, tokenizer_dir, monkeypatch):
    import socket

    pytest.importorskip("s3fs")
    boto3 = pytest.importorskip("boto3")
    server_module = pytest.importorskip("moto.server")

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        for name, value in (("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test"),
                            ("AWS_DEFAULT_REGION", "us-east-1"), ("AWS_ENDPOINT_URL", endpoint)):
            monkeypatch.setenv(name, value)
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="artifacts")
        remote = {"store": {"remote": "s3://artifacts/barctl"}}
        ci = make_project(tmp_path / "ci", tokenizer_dir, tiny_manifest(**remote))
        assert apply(ci, "--push").output.count("pushed to s3://artifacts/barctl") == len(PULLED)
        laptop = make_project(tmp_path / "laptop", tokenizer_dir, tiny_manifest(**remote))
        assert apply(laptop).output.count("pulled from s3://artifacts/barctl") == len(PULLED)
        assert (laptop.parent / "out/moe/model.safetensors").read_bytes() == \
            (ci.parent / "out/moe/model.safetensors").read_bytes()
    finally:
        server.stop()
