"""The `accelerate launch` command a stage with `launcher: {kind: accelerate}` runs."""

from __future__ import annotations

import sys

from barctl.launch import accelerate_command, stage_launcher
from barctl.recipe import load_recipe
from tests.projects import make_project, tiny_manifest


def test_accelerate_command_names_the_config_processes_and_the_node(tmp_path, tokenizer_dir):
    (tmp_path / "chat.jsonl").write_text(
        '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n')
    (tmp_path / "zero3.yaml").write_text("distributed_type: DEEPSPEED\n")
    launcher = {"kind": "accelerate", "config_file": "zero3.yaml", "num_processes": 8, "num_machines": 2}
    manifest = tiny_manifest(
        {"code": {"stages": [{"kind": "sft", "mix": {"sources": [{"dataset": "chat", "count": 2}]},
                              "launcher": launcher}]}, "math": {}},
        datasets={"chat": {"path": "chat.jsonl", "format": "messages"}},
    )
    recipe = load_recipe(make_project(tmp_path, tokenizer_dir, manifest))
    assert stage_launcher(recipe, "experts.code.sft") == launcher
    command = accelerate_command(launcher, recipe, "experts.code.sft", tmp_path / "out", tmp_path / "work")
    assert command == [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(tmp_path / "zero3.yaml"),
        "--num_processes", "8", "--num_machines", "2",
        "-m", "barctl.stage_worker",
        "--manifest", str(tmp_path / "bar.yaml"), "--node", "experts.code.sft",
        "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work"),
    ]


def test_the_launcher_is_not_part_of_the_key(tmp_path, tokenizer_dir):
    """Moving a stage from a laptop to a cluster must not rebuild it."""
    from barctl.project import Project

    (tmp_path / "chat.jsonl").write_text(
        '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n')
    stage = {"kind": "sft", "mix": {"sources": [{"dataset": "chat", "count": 2}]}}
    datasets = {"chat": {"path": "chat.jsonl", "format": "messages"}}
    path = make_project(tmp_path, tokenizer_dir, tiny_manifest({"code": {"stages": [stage]}}, datasets=datasets))
    local = Project.load(path).graph["experts.code.sft"].key
    stage["launcher"] = {"kind": "accelerate", "num_processes": 4}
    make_project(tmp_path, tokenizer_dir, tiny_manifest({"code": {"stages": [stage]}}, datasets=datasets))
    assert Project.load(path).graph["experts.code.sft"].key == local
