"""The `accelerate launch` command a stage with `launcher: {kind: accelerate}` runs."""

from __future__ import annotations

import sys

import pytest

from barctl.errors import BarctlError
from barctl.manifest.recipe import load_recipe
from barctl.training.launch import accelerate_command, main, stage_launcher, worker_paths
from tests.projects import make_project, tiny_manifest

CHAT = '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'


def launch_recipe(tmp_path, tokenizer_dir, launcher: dict):
    (tmp_path / "chat.jsonl").write_text(CHAT)
    manifest = tiny_manifest(
        {"code": {"stages": [{"kind": "sft", "mix": {"sources": [{"dataset": "chat", "count": 2}]},
                              "launcher": launcher}]}, "math": {}},
        datasets={"chat": {"path": "chat.jsonl", "format": "messages"}},
    )
    return load_recipe(make_project(tmp_path, tokenizer_dir, manifest))


def worker(tmp_path) -> list[str]:
    return ["-m", "barctl.training.worker", "--manifest", str(tmp_path / "bar.yaml"), "--node", "experts.code.sft"]


def test_a_deepspeed_launch_on_two_slurm_nodes_passes_the_total_and_the_nodes_rendezvous(tmp_path, tokenizer_dir):
    (tmp_path / "zero3.yaml").write_text("distributed_type: DEEPSPEED\n")
    launcher = {"kind": "accelerate", "config_file": "zero3.yaml", "num_processes": 8, "num_machines": 2}
    recipe = launch_recipe(tmp_path, tokenizer_dir, launcher)
    assert stage_launcher(recipe, "experts.code.sft") == launcher
    env = {"SLURM_NODEID": "1", "SLURM_JOB_NODELIST": "gpu[07-08,11]", "MASTER_PORT": "29501"}
    assert accelerate_command(launcher, recipe, "experts.code.sft", env) == [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(tmp_path / "zero3.yaml"),
        "--num_processes", "16", "--num_machines", "2",  # accelerate takes the total; the manifest says per node
        "--machine_rank", "1", "--main_process_ip", "gpu07", "--main_process_port", "29501",
        *worker(tmp_path),
    ]


def test_processes_without_a_distributing_config_use_the_multi_process_launcher(tmp_path, tokenizer_dir):
    """accelerate's simple launcher would start one process whatever num_processes says."""
    launcher = {"kind": "accelerate", "num_processes": 2}
    recipe = launch_recipe(tmp_path, tokenizer_dir, launcher)
    assert accelerate_command(launcher, recipe, "experts.code.sft", {}) == [
        sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--multi_gpu", *worker(tmp_path)]
    (tmp_path / "cpu.yaml").write_text("distributed_type: MULTI_CPU\nnum_machines: 1\n")
    launcher = {"kind": "accelerate", "num_processes": 2, "config_file": "cpu.yaml"}
    assert "--multi_gpu" in accelerate_command(launcher, recipe, "experts.code.sft", {})
    launcher["num_processes"] = 1
    assert "--multi_gpu" not in accelerate_command(launcher, recipe, "experts.code.sft", {})


def test_the_launcher_block_overrides_the_environment_and_torchrun_variables_are_read(tmp_path, tokenizer_dir):
    launcher = {"kind": "accelerate", "num_processes": 4, "num_machines": 3, "main_process_ip": "10.0.0.1",
                "main_process_port": 6000}
    recipe = launch_recipe(tmp_path, tokenizer_dir, launcher)
    env = {"NODE_RANK": "2", "SLURM_NODEID": "0", "MASTER_ADDR": "10.9.9.9", "MASTER_PORT": "1234"}
    command = accelerate_command(launcher, recipe, "experts.code.sft", env)
    assert command[3:15] == ["--num_processes", "12", "--multi_gpu", "--num_machines", "3", "--machine_rank", "2",
                             "--main_process_ip", "10.0.0.1", "--main_process_port", "6000", "-m"]
    command = accelerate_command({**launcher, "main_process_ip": None, "main_process_port": None}, recipe,
                                 "experts.code.sft", env, machine_rank=1)
    assert command[8:14] == ["--machine_rank", "1", "--main_process_ip", "10.9.9.9", "--main_process_port", "1234"]


def test_a_multi_node_launch_without_a_rendezvous_says_what_is_missing(tmp_path, tokenizer_dir):
    launcher = {"kind": "accelerate", "num_processes": 8, "num_machines": 2}
    recipe = launch_recipe(tmp_path, tokenizer_dir, launcher)
    with pytest.raises(BarctlError, match=r"launcher.num_machines is 2: a multi-node launch needs this machine's rank "
                                          r"\(NODE_RANK or SLURM_NODEID\) and the main process's address"):
        accelerate_command(launcher, recipe, "experts.code.sft", {})
    with pytest.raises(BarctlError, match="'merge' is not a training stage of bar.yaml"):
        stage_launcher(recipe, "merge")


def test_every_node_derives_the_same_worker_paths(tmp_path, tokenizer_dir):
    recipe = launch_recipe(tmp_path, tokenizer_dir, {"kind": "accelerate", "num_processes": 2})
    out, work = worker_paths(recipe, "experts.code.sft")
    assert (out, work) == worker_paths(load_recipe(tmp_path / "bar.yaml"), "experts.code.sft")
    assert out == tmp_path / ".barctl" / "launched" / "experts.code.sft"
    assert work == tmp_path / ".barctl" / "work" / "experts.code.sft"


def test_launch_prints_this_nodes_command(tmp_path, tokenizer_dir, monkeypatch, capsys):
    launcher = {"kind": "accelerate", "num_processes": 8, "num_machines": 2, "main_process_ip": "head"}
    launch_recipe(tmp_path, tokenizer_dir, launcher)
    for name in ("NODE_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SLURM_NODEID", "1")
    main([str(tmp_path / "bar.yaml"), "experts.code.sft", "--print"])
    assert "--machine_rank 1 --main_process_ip head -m barctl.training.worker" in capsys.readouterr().out
    main([str(tmp_path / "bar.yaml"), "experts.code.sft", "--print", "--machine-rank", "0"])
    assert "--machine_rank 0 " in capsys.readouterr().out
    with pytest.raises(SystemExit, match="error: 'experts.code.dpo' is not a training stage"):
        main([str(tmp_path / "bar.yaml"), "experts.code.dpo", "--print"])


def test_launch_refuses_a_stage_that_runs_in_process(tmp_path, tokenizer_dir):
    launch_recipe(tmp_path, tokenizer_dir, {"kind": "local"})
    with pytest.raises(SystemExit, match="error: experts.code.sft declares no accelerate launcher"):
        main([str(tmp_path / "bar.yaml"), "experts.code.sft", "--print"])


def test_the_launcher_is_not_part_of_the_key(tmp_path, tokenizer_dir):
    """Moving a stage from a laptop to a cluster must not rebuild it."""
    from barctl.engine.project import Project

    (tmp_path / "chat.jsonl").write_text(
        '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n')
    stage = {"kind": "sft", "mix": {"sources": [{"dataset": "chat", "count": 2}]}}
    datasets = {"chat": {"path": "chat.jsonl", "format": "messages"}}
    path = make_project(tmp_path, tokenizer_dir, tiny_manifest({"code": {"stages": [stage]}}, datasets=datasets))
    local = Project.load(path).graph["experts.code.sft"].key
    stage["launcher"] = {"kind": "accelerate", "num_processes": 4}
    make_project(tmp_path, tokenizer_dir, tiny_manifest({"code": {"stages": [stage]}}, datasets=datasets))
    assert Project.load(path).graph["experts.code.sft"].key == local


@pytest.mark.skipif(sys.platform != "linux", reason="parent-death signals are Linux's")
def test_a_launched_process_dies_with_its_parent(tmp_path):
    """A killed apply must take its ranks with it."""
    import signal
    import subprocess
    import time

    child_pid = tmp_path / "child.pid"
    parent = subprocess.Popen([sys.executable, "-c", (
        "import subprocess, sys, time\n"
        "from barctl.training.launch import die_with_parent\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], preexec_fn=die_with_parent)\n"
        f"open({str(child_pid)!r}, 'w').write(str(child.pid))\n"
        "time.sleep(60)\n")])
    deadline = time.monotonic() + 30
    while not (child_pid.exists() and child_pid.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    pid = int(child_pid.read_text())
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid)


def _alive(pid: int) -> bool:
    """Running (not a zombie awaiting its reaper)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False
