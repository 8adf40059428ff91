"""Progress: plain lines per tenth outside a terminal, a rich bar on one, nothing under -q or on rank != 0,
and apply's `node i of N` with the time left estimated from the plan's costs and the finished nodes."""

import io
import os
import re

import pytest
from rich.console import Console
from rich.progress import Progress as RichProgress
from transformers import TrainerControl, TrainerState

from barctl.logs import NodeClock, setup
from barctl.progress import ENV, Steps, current_mode
from barctl.training.common import Progress
from tests.projects import barctl, make_project, tiny_manifest

TRAINING_LINE = re.compile(r"training (\d+)/(\d+) steps \((\d+)%\), loss ([\d.]+), ([\d,]+) tok/s, ETA \d+m\d\ds")


@pytest.fixture(autouse=True)
def default_logging():
    yield
    setup(0, None)


def test_lines_come_at_every_tenth_and_at_the_end():
    lines: list[str] = []
    steps = Steps("merging", "tensors", lines.append, mode="lines").start(25)
    for done in range(1, 26):
        steps.update(done)
    assert [int(re.match(r"merging (\d+)/25 tensors", line)[1]) for line in lines] == [3, 6, 9, 12, 15, 18, 21, 24, 25]
    assert lines[0] == "merging 3/25 tensors (12%)" and lines[-1] == "merging 25/25 tensors (100%)"

    few: list[str] = []
    assert list(Steps("writing", "tensors", few.append, mode="lines").track(["a", "b", "c"])) == ["a", "b", "c"]
    assert few == ["writing 1/3 tensors (33%)", "writing 2/3 tensors (66%)", "writing 3/3 tensors (100%)"]

    jumps: list[str] = []  # updates that skip marks (an evaluation's batches) give one line each, none repeated
    steps = Steps("math: math_answer", "rows", jumps.append, mode="lines").start(100)
    for done in (7, 8, 35, 35, 100, 100):
        steps.update(done, "")
    assert jumps == ["math: math_answer 35/100 rows (35%)", "math: math_answer 100/100 rows (100%)"]


def test_a_terminal_gets_a_rich_bar_and_the_log_file_the_lines():
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120)
    said: list[str] = []
    noted: list[str] = []
    with Steps("training", "steps", said.append, noted.append, mode="bars", console=console) as steps:
        steps.start(10)
        assert isinstance(steps._bar, RichProgress) and steps._bar.live.is_started
        steps.update(5, "loss 1.5")
    assert steps._bar is None  # closed
    drawn = out.getvalue()
    assert "training" in drawn and "5/10" in drawn and "loss 1.5" in drawn and "\x1b[" in drawn
    assert said == [] and noted == ["training 5/10 steps (50%), loss 1.5"]


def test_quiet_draws_nothing_and_hands_the_lines_to_say_which_logs_them():
    setup(-1, None)
    assert current_mode() == "off"
    said: list[str] = []
    out = io.StringIO()
    steps = Steps("branching", "tensors", said.append, mode=None, console=Console(file=out, force_terminal=True))
    for _ in steps.track(range(4)):
        pass
    assert steps._bar is None and out.getvalue() == ""
    assert said[-1] == "branching 4/4 tensors (100%)"


def test_setup_chooses_lines_outside_a_terminal_and_keeps_it_for_launched_ranks(monkeypatch):
    setup(0, None)  # pytest's stdout is not a terminal
    assert current_mode() == "lines"
    assert os.environ[ENV] == "lines"
    monkeypatch.setattr("sys.stdout.isatty", lambda: True)
    terminal = Console(file=io.StringIO(), force_terminal=True)
    setup(1, None, terminal)
    assert current_mode() == "bars"
    assert Steps("merging", "tensors", print).console is terminal  # the CLI's console: its lines land above a bar


def drive(callback: Progress, steps: int, rank_zero: bool = True) -> None:
    """A trainer's callback events for `steps` steps, each logging its loss, 8 tokens a step."""
    args = None  # the callback reads nothing from the arguments
    state, control = TrainerState(max_steps=steps, is_world_process_zero=rank_zero), TrainerControl()
    callback.on_train_begin(args, state, control)
    for step in range(1, steps + 1):
        state.global_step, state.num_input_tokens_seen = step, 8 * step
        control.should_log = True
        callback.on_step_end(args, state, control)
        callback.on_log(args, state, control, logs={"loss": 3.0 - step / 10})
    callback.on_log(args, state, control, logs={"train_loss": 2.5})  # the trainer's summary at the end
    callback.on_train_end(args, state, control)


def test_the_training_callback_says_step_loss_speed_and_eta_per_tenth(monkeypatch):
    monkeypatch.setenv(ENV, "lines")
    lines: list[str] = []
    drive(Progress(lines.append), 20)
    matches = [TRAINING_LINE.fullmatch(line) for line in lines]
    assert all(matches), lines
    assert [int(m[1]) for m in matches] == list(range(2, 21, 2))
    assert {m[2] for m in matches} == {"20"}
    assert [float(m[4]) for m in matches] == pytest.approx([3.0 - int(m[1]) / 10 for m in matches])


def test_the_training_callback_on_a_terminal_draws_a_bar_and_steps_without_a_log_move_it(monkeypatch):
    monkeypatch.setenv(ENV, "bars")
    out = io.StringIO()
    monkeypatch.setattr("barctl.progress._console", Console(file=out, force_terminal=True, width=120))
    said, noted = [], []
    callback = Progress(said.append, "loss", noted.append)
    args = None
    state, control = TrainerState(max_steps=4, is_world_process_zero=True), TrainerControl()
    callback.on_train_begin(args, state, control)
    assert isinstance(callback.steps._bar, RichProgress)
    for step in range(1, 5):
        state.global_step = step
        control.should_log = step == 4  # logging_steps 4: the first steps only move the bar
        callback.on_step_end(args, state, control)
    callback.on_log(args, state, control, logs={"loss": 1.25})
    callback.on_train_end(args, state, control)
    assert said == [] and callback.steps is None
    assert [re.sub(r", ETA \d+m\d\ds$", "", line) for line in noted] == [
        "training 1/4 steps (25%)", "training 2/4 steps (50%)", "training 3/4 steps (75%)",
        "training 4/4 steps (100%), loss 1.25"]
    assert "4/4" in out.getvalue() and "loss 1.25" in out.getvalue()


def test_the_training_callback_is_silent_off_rank_zero(monkeypatch):
    monkeypatch.setenv(ENV, "bars")
    out = io.StringIO()
    monkeypatch.setattr("barctl.progress._console", Console(file=out, force_terminal=True))
    said: list[str] = []
    callback = Progress(said.append, "loss", said.append)
    drive(callback, 5, rank_zero=False)
    assert said == [] and out.getvalue() == "" and callback.steps is None


def test_the_time_left_comes_from_the_plan_costs_and_the_finished_nodes():
    clock = NodeClock(["base", "experts.a.sft", "experts.b.sft", "merge"],
                      {"experts.a.sft": 1e12, "experts.b.sft": 3e12})
    assert clock.next().endswith(" elapsed")  # nothing finished: no estimate
    clock.finished("base", 2.0)
    assert clock.next().endswith(" elapsed") and clock.remaining() is None  # no training node measured yet
    clock.finished("experts.a.sft", 10.0)
    assert clock.remaining() == pytest.approx(3 * 10.0 + 2.0)  # b at a's seconds per FLOP, merge as base
    assert re.fullmatch(r"node 3 of 4, \d+m\d\ds elapsed, about 0m32s left", clock.next())

    unknown = NodeClock(["base", "experts.a.sft", "merge"], {"experts.a.sft": None})  # tokens not known from config
    unknown.finished("base", 4.0)
    assert unknown.remaining() == pytest.approx(8.0)  # both at the mean of the finished nodes


SFT = {"kind": "sft", "mix": {"sources": [{"dataset": "chat", "count": 2}]},
       "training": {"max_steps": 2, "learning_rate": 1e-3, "batch_size": 1}}


def chat_project(tmp_path, tokenizer_dir):
    (tmp_path / "chat.jsonl").write_text(
        '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n' * 2)
    return make_project(tmp_path, tokenizer_dir, tiny_manifest(
        {"math": {"stages": [SFT]}}, datasets={"chat": {"path": "chat.jsonl", "format": "messages"}}))


def test_apply_outside_a_terminal_prints_plain_progress_lines(tmp_path, tokenizer_dir):
    path = chat_project(tmp_path, tokenizer_dir)
    result = barctl("apply", path, "--auto-approve")
    assert result.exit_code == 0, result.output
    assert "\r" not in result.output
    assert len(re.findall(r"experts\.math\.sft: training [12]/2 steps \(\d+%\), loss [\d.]+, [\d,]+ tok/s, ETA",
                          result.output)) == 2
    for node, label in (("experts.math.branch", "branching"), ("merge", "merging"), ("export", "writing")):
        counts = [(int(done), int(total)) for done, total in
                  re.findall(rf"{re.escape(node)}: {label} (\d+)/(\d+) tensors \(\d+%\)", result.output)]
        total = counts[-1][1]
        every = -(-total // 10)  # a line per tenth, and the last
        marks = list(range(every, total + 1, every))
        assert [done for done, _ in counts] == marks + ([total] if marks[-1] != total else []), counts


def test_quiet_apply_prints_no_progress_and_the_log_file_has_it(tmp_path, tokenizer_dir):
    path = chat_project(tmp_path, tokenizer_dir)
    log = tmp_path / "apply.log"
    result = barctl("-q", "--log-file", log, "apply", path, "--auto-approve")
    assert result.exit_code == 0 and result.output == ""
    text = log.read_text()
    assert re.search(r"barctl\.progress: experts\.math\.sft: training 2/2 steps \(100%\), loss ", text)
    assert re.search(r"barctl\.progress: merge: merging (\d+)/\1 tensors \(100%\)", text)
