"""-v/-q/--log-file: the libraries' warnings reach the log file (and the terminal at -v), -q leaves only
errors, and apply's node lines say where it is."""

import logging
import re
import warnings

import pytest

from barctl.logs import route_library_logs, setup
from tests.projects import barctl, make_project, tiny_manifest, write_manifest


@pytest.fixture(autouse=True)
def default_logging():
    yield
    setup(0, None)  # drop the handlers (and the log file) a test's CLI run installed


def test_library_warnings_go_to_the_log_file_and_to_the_terminal_only_at_v(tmp_path, capsys):
    from transformers.utils import logging as transformers_logging

    with warnings.catch_warnings():  # an earlier setup in this process, whose showwarning was swapped back since
        setup(0, None)
    log = tmp_path / "barctl.log"
    setup(0, log)
    route_library_logs()
    transformers_logging.get_logger("transformers.modeling_utils").warning("a transformers warning")
    logging.getLogger("datasets.builder").warning("a datasets warning")
    warnings.warn("a library's UserWarning", UserWarning, stacklevel=1)
    logging.getLogger("barctl.anything").warning("a barctl warning")
    assert capsys.readouterr().err.splitlines() == ["WARNING barctl.anything: a barctl warning"]
    text = log.read_text()
    for line in ("transformers.modeling_utils: a transformers warning", "datasets.builder: a datasets warning",
                 "py.warnings:", "a library's UserWarning", "barctl.anything: a barctl warning"):
        assert line in text, line

    setup(1, None)
    transformers_logging.get_logger("transformers.modeling_utils").warning("shown at -v")
    assert "WARNING transformers.modeling_utils: shown at -v" in capsys.readouterr().err

    setup(-1, None)
    logging.getLogger("barctl.anything").warning("hidden at -q")
    logging.getLogger("barctl.anything").error("an error at -q")
    assert capsys.readouterr().err.splitlines() == ["ERROR barctl.anything: an error at -q"]


def test_quiet_apply_prints_nothing_and_the_log_file_has_every_node(tmp_path, tokenizer_dir):
    path = make_project(tmp_path, tokenizer_dir, tiny_manifest())
    log = tmp_path / "logs" / "apply.log"
    result = barctl("-q", "--log-file", log, "apply", path, "--auto-approve")
    assert result.exit_code == 0 and result.output == ""
    assert (tmp_path / "out" / "moe" / "config.json").is_file()
    text = log.read_text()
    nodes = ["base", "experts.math.branch", "experts.code.branch", "merge", "router", "export"]
    for i, node in enumerate(nodes, start=1):
        left = r", about \d+m\d\ds left" if i > 1 else ""  # estimated from the nodes finished before
        assert re.search(rf"barctl.progress: {re.escape(node)}: create \(node {i} of 6, \d+m\d\ds elapsed{left}\)", text)
        assert re.search(rf"barctl.progress: {re.escape(node)}: done in \d+\.\ds", text)

    failed = barctl("-q", "plan", tmp_path / "missing.yaml")
    assert failed.exit_code == 1 and failed.output.startswith("Error:")
    both = barctl("-q", "-v", "plan", path)
    assert both.exit_code == 1 and "-v and -q exclude each other" in both.output


def test_apply_lines_say_node_i_of_n_and_the_elapsed_time(tmp_path, tokenizer_dir):
    path = make_project(tmp_path, tokenizer_dir, tiny_manifest({"math": {}}))
    result = barctl("apply", path, "--auto-approve")
    assert result.exit_code == 0, result.output
    starts = re.findall(r"\+ (\S+): create \.\.\. \(node (\d) of (\d), \d+m\d\ds elapsed(, about \d+m\d\ds left)?\)",
                        result.output)
    assert [(node, i, n, bool(left)) for node, i, n, left in starts] == [
        ("base", "1", "5", False), ("experts.math.branch", "2", "5", True), ("merge", "3", "5", True),
        ("router", "4", "5", True), ("export", "5", "5", True)]


def report_to_manifest(project_wide=None, stage=None, router=None, learning_rate=1e-3) -> dict:
    def training(report_to):
        return {"max_steps": 1, "learning_rate": learning_rate, **({"report_to": report_to} if report_to else {})}

    sft = {"kind": "sft", "mix": {"sources": [{"dataset": "chat", "count": 2}]}, "training": training(stage)}
    manifest = tiny_manifest({"math": {"stages": [sft]}, "code": {"stages": [dict(sft, training=training(None))]}},
                             datasets={"chat": {"path": "chat.jsonl", "format": "messages"}},
                             routing={"train": {"fraction": 0.5, "training": training(router)}})
    if project_wide:
        manifest["training"] = {"report_to": project_wide}
    return manifest


@pytest.fixture
def installed_integrations(monkeypatch):
    """Every report_to integration counts as installed (their packages are optional and absent here)."""
    from barctl.engine import preflight

    monkeypatch.setattr(preflight, "REPORT_TO_PACKAGES", dict.fromkeys(["tensorboard", "wandb", "trackio"],
                                                                           ("json",)))


def test_report_to_reaches_the_stages_but_not_their_keys(tmp_path, tokenizer_dir, installed_integrations):
    from barctl.engine.project import Project

    (tmp_path / "chat.jsonl").write_text(
        '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n')
    path = make_project(tmp_path, tokenizer_dir, report_to_manifest())
    plain = Project.load(path)
    assert plain.recipe.expert("math").stages[0].training.get("report_to") is None  # trl_config's default: none
    keys = {node.id: node.key for node in plain.graph}

    write_manifest(path, report_to_manifest(project_wide="tensorboard", stage=["wandb", "trackio"], router="wandb"))
    reporting = Project.load(path)
    assert {node.id: node.key for node in reporting.graph} == keys
    assert reporting.recipe.expert("math").stages[0].training["report_to"] == ["wandb", "trackio"]
    assert reporting.recipe.expert("code").stages[0].training["report_to"] == "tensorboard"  # the project's
    assert reporting.recipe.routing["train"]["training"]["report_to"] == "wandb"
    assert reporting.graph["experts.math.sft"].config["training"]["report_to"] == ["wandb", "trackio"]

    write_manifest(path, report_to_manifest(learning_rate=1e-4))
    changed = {node.id for node in Project.load(path).graph if node.key != keys[node.id]}
    assert {"experts.math.sft", "experts.code.sft", "router"} <= changed


def test_report_to_without_its_package_is_refused_at_plan_with_its_line(tmp_path, tokenizer_dir, monkeypatch):
    from barctl.engine import preflight

    monkeypatch.setattr(preflight, "REPORT_TO_PACKAGES", {"wandb": ("no_such_package_for_barctl",)})
    (tmp_path / "chat.jsonl").write_text(
        '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n')
    path = make_project(tmp_path, tokenizer_dir, report_to_manifest(project_wide="wandb", stage="wandb"))
    result = barctl("plan", path)
    assert result.exit_code == 1
    lines = [line.strip() for line in result.output.splitlines() if "needs the" in line]
    assert len(lines) == 2  # the stage's own setting, and the project-wide one the others inherit
    message = "report_to 'wandb' needs the no_such_package_for_barctl package, which is not installed"
    assert any(re.match(rf".*bar\.yaml:\d+:\d+: training\.report_to: {message}", line) for line in lines)
    assert any(re.match(rf".*bar\.yaml:\d+:\d+: experts\.math\.stages\[0\]\.training\.report_to: {message}", line)
               for line in lines)


def test_a_misspelt_report_to_is_refused_with_its_line_and_a_hint(tmp_path, tokenizer_dir):
    (tmp_path / "chat.jsonl").write_text(
        '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n')
    path = make_project(tmp_path, tokenizer_dir, report_to_manifest(project_wide="tensorbord",
                                                                    stage=["wandb", "none"]))
    result = barctl("validate", path)
    assert result.exit_code == 1
    assert re.search(r"bar\.yaml:\d+:\d+: training\.report_to: must be one of none, tensorboard, wandb, trackio, or a "
                     r"list of tensorboard, wandb, trackio; got 'tensorbord' \(did you mean 'tensorboard'\?\)",
                     result.output)
    assert re.search(r"experts\.math\.stages\[0\]\.training\.report_to: must be .*; got \['wandb', 'none'\]",
                     result.output)


def test_report_to_sets_the_trl_config_and_trl_passthrough_may_not(tmp_path):
    from trl import SFTConfig

    from barctl.training.common import trl_config
    from barctl.training.trl_fields import passthrough_problems

    assert trl_config(SFTConfig, {"report_to": ["tensorboard", "wandb"]}, tmp_path).report_to == ["tensorboard", "wandb"]
    assert trl_config(SFTConfig, {}, tmp_path).report_to == []  # none
    assert passthrough_problems("sft", {"report_to": "wandb"}) == {
        "report_to": "set it as training.report_to, which barctl maps to report_to"}
