"""What every stage kind shares: the model, the mixed dataset, the TRL config, progress and resume."""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import datasets
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PrinterCallback,
    ProgressCallback,
    Trainer,
    TrainerCallback,
)

from barctl.data.load import load_dataset_spec
from barctl.data.mix import build_mix, concatenate_mixes
from barctl.data.stream_draw import StreamedDataset, open_stream
from barctl.data.streaming import streams
from barctl.errors import BarctlError
from barctl.logs import duration
from barctl.manifest.recipe import Recipe
from barctl.model.checkpoint import CheckpointReader
from barctl.model.freezing import AnchorGuard
from barctl.progress import Steps
from barctl.training.trl_fields import BARCTL_SETS, BARCTL_TO_TRL

# barctl's `training` settings that map one to one onto a config field (warmup_ratio and
# precision are translated below).
DIRECT = {ours: field for ours, field in BARCTL_TO_TRL.items() if ours not in ("warmup_ratio", "precision")}
FIXED = BARCTL_SETS  # fields barctl sets itself, whatever `trl:` says
DEFAULT_SAVE_STEPS = 200
KEY_FILE = "node-key"


def on_cpu() -> bool:
    return not torch.cuda.is_available()


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def load_model(model_dir: Path, dtype: torch.dtype = torch.float32, *, experts_implementation: str | None = None,
               device_map: str | None = None) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The checkpoint (in float32 by default: training keeps fp32 master weights, bf16/fp16 run as autocast) and
    its tokenizer. `experts_implementation`: transformers' MoE kernel (None: its default); `device_map`: where
    accelerate places the layers (see `placement`).

    A MoE comes back with `output_router_logits` off: TRL's trainers switch it on for their
    own forward passes, and a checkpoint saved with it on makes generation (GRPO's, an
    evaluation's) compute the balancing loss against a cached prompt's mask, and fail.
    """
    options = {"experts_implementation": experts_implementation} if experts_implementation else {}
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, device_map=device_map, **options)
    stop_router_logits(model)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def trainable_in_fp32(model: PreTrainedModel) -> None:
    """Hold the trainable parameters in fp32 (the optimiser's master copy) when the model was loaded in bf16/fp16
    to save memory; under the trainer's autocast the frozen low-precision layers and these mix freely."""
    for parameter in model.parameters():
        if parameter.requires_grad and parameter.dtype != torch.float32:
            parameter.data = parameter.data.float()


def placement() -> str | None:
    """Where a model that runs in barctl's own process (router training, evaluations) goes: spread over every
    visible GPU by accelerate ("auto"; a 5x7B does not fit one GPU in fp32), or None (the CPU)."""
    return "auto" if torch.cuda.is_available() else None


def stop_router_logits(model: PreTrainedModel) -> None:
    if hasattr(model.config, "output_router_logits"):
        model.config.output_router_logits = False


def stage_dataset(recipe: Recipe, mix: Mapping[str, Any]) -> datasets.Dataset:
    """The stage's mix, drawn from its datasets (local paths resolved against the manifest's directory),
    each read whole or as a stream as barctl.data.streaming decides.

    Its `source` column (the dataset a row came from) stays: GRPO rewards may read it, and
    the other trainers drop columns the model does not take.
    """
    loaded: dict[str, datasets.Dataset | StreamedDataset] = {}
    for name in dict.fromkeys(source["dataset"] for source in mix["sources"]):
        spec = recipe.dataset_spec(name)
        loaded[name] = open_stream(spec) if streams(spec, mix) else load_dataset_spec(spec)
    return build_mix(mix, loaded)


def union_dataset(recipe: Recipe, mixes: list[dict[str, Any]], seed: int) -> datasets.Dataset:
    """Every mix drawn as its own stage draws it, concatenated and shuffled (a retrain stage's rows)."""
    return concatenate_mixes([stage_dataset(recipe, mix) for mix in mixes], seed)


def trl_config(config_cls: type, training: dict[str, Any], output_dir: Path,
               defaults: dict[str, Any] | None = None, fixed: dict[str, Any] | None = None):
    """A TRL config from barctl's `training` settings, the kind's `defaults` and the `trl:` pass-through.

    `trl:` overrides `defaults` but not barctl's own settings, nor the kind's `fixed` values
    (e.g. GRPO's reward_weights come from the manifest's rewards).
    """
    names = {f.name for f in dataclasses.fields(config_cls)}
    passthrough = dict(training.get("trl") or {})
    _check_passthrough(config_cls.__name__, names, passthrough, set(fixed or ()))
    cpu = on_cpu()
    values: dict[str, Any] = {
        "report_to": "none",
        "disable_tqdm": True,
        "logging_steps": 1,
        "save_strategy": "steps",
        "save_steps": DEFAULT_SAVE_STEPS,
        "save_total_limit": 2,  # the newest checkpoint may be half-written when killed; keep one more
        **(defaults or {}),
        **passthrough,
        **_precision(training.get("precision", "fp32"), cpu),
        "output_dir": str(output_dir),
        "use_cpu": cpu,
        **(fixed or {}),
    }
    if not {"gradient_checkpointing", "activation_checkpointing"} & passthrough.keys():
        # TRL turns checkpointing on by default (under its deprecated name); it only slows the CPU down.
        values["activation_checkpointing"] = not cpu
    for ours, field in DIRECT.items():
        if training.get(ours) is not None and field in names:
            values[field] = training[ours]
    if training.get("warmup_steps") is None and training.get("warmup_ratio") is not None:
        if training["warmup_ratio"] >= 1:
            raise BarctlError("training.warmup_ratio must be below 1 (a share of the steps)")
        values["warmup_steps"] = float(training["warmup_ratio"])  # transformers reads a float < 1 as a ratio
    try:
        config = config_cls(**values)
    except (TypeError, ValueError) as e:
        raise BarctlError(f"training: {config_cls.__name__} rejects these settings: {e}") from None
    if config.n_gpu > 1:
        # One process that sees several GPUs: the Trainer would copy the model onto each with nn.DataParallel
        # (8 x 98 GB for a 5x7B in fp32). barctl places it across them (`placement`) or runs ranks under a launcher.
        config._n_gpu = 1
    return config


def _check_passthrough(class_name: str, names: set[str], passthrough: dict[str, Any], fixed: set[str]) -> None:
    owned = {field: ours for ours, field in BARCTL_TO_TRL.items()} | {"fp16": "precision"}
    problems = []
    for field in passthrough:
        if field in owned:
            problems.append(f"{field!r}: set it as training.{owned[field]}, which barctl maps to {field}")
        elif field in fixed or field in FIXED:
            problems.append(f"{field!r}: barctl sets it itself")
        elif field not in names:
            close = difflib.get_close_matches(field, sorted(names), n=3)
            hint = f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""
            problems.append(f"{field!r}: {class_name} has no such field{hint}")
    if problems:
        raise BarctlError("training.trl: " + "; ".join(problems))


def _precision(precision: str, cpu: bool) -> dict[str, bool]:
    if cpu:  # CPU trains in fp32; TRL would otherwise default to bf16
        return {"bf16": False, "fp16": False}
    return {"bf16": precision == "bf16", "fp16": precision == "fp16"}


class Progress(TrainerCallback):
    """Step, loss (or reward), tokens per second and ETA: a bar on a terminal, a line per tenth of the
    steps otherwise (see barctl.progress); only on the main process (global rank 0).

    The bar moves at every step; with a step that logs, it waits for the log, so the value is the current one.
    """

    def __init__(self, say: Callable[[str], None], metric: str = "loss", note: Callable[[str], None] | None = None):
        self.say, self.metric, self.note = say, metric, note
        self.steps: Steps | None = None
        self.value: float | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        self.started = time.monotonic()
        self.first_step, self.first_tokens = state.global_step, state.num_input_tokens_seen
        self.steps = Steps("training", "steps", self.say, self.note).start(state.max_steps)

    def on_step_end(self, args, state, control, **kwargs):
        if self.steps is not None and not control.should_log:
            self.steps.update(state.global_step, self.detail(state))

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.steps is not None and logs and self.metric in logs:
            self.value = logs[self.metric]
            self.steps.update(state.global_step, self.detail(state))

    def on_train_end(self, args, state, control, **kwargs):
        self.close()

    def close(self) -> None:
        if self.steps is not None:
            self.steps.close()
            self.steps = None

    def detail(self, state) -> str:
        """`loss 2.31, 1,234 tok/s, ETA 1m05s`: the last logged value, the speed and the time left since the start."""
        elapsed, done = time.monotonic() - self.started, state.global_step - self.first_step
        parts = [] if self.value is None else [f"{self.metric} {self.value:.4g}"]
        tokens = state.num_input_tokens_seen - self.first_tokens
        if tokens:
            parts.append(f"{tokens / max(elapsed, 1e-9):,.0f} tok/s")
        if done:
            parts.append(f"ETA {duration((state.max_steps - state.global_step) * elapsed / done)}")
        return ", ".join(parts)


class SkipFinalCheckpoint(TrainerCallback):
    """No resumable checkpoint at the last step: barctl saves the trained model itself and then
    clears the work directory, so that checkpoint (weights and optimiser state) would only cost time."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps:
            control.should_save = False


class RestoreAnchor(TrainerCallback):
    """Writes the anchor slot back right after each optimiser step (see barctl.model.freezing), and checks
    after the first that the model holds it exactly, rather than failing the stage after all its compute."""

    def __init__(self, guard: AnchorGuard):
        self.guard = guard
        self.verified = False

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.guard.restore()
        if not self.verified:
            self.guard.verify()
            self.verified = True


def prepare_work(work: Path, node_key: str, say: Callable[[str], None]) -> Path:
    """TRL's output directory inside `work`, emptied first when it holds another configuration's checkpoints.

    Under a launcher, the main process prepares it while the other ranks wait.
    """
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    if not distributed or torch.distributed.get_rank() == 0:
        key_file = work / KEY_FILE
        if work.exists() and (not key_file.exists() or key_file.read_text() != node_key):
            if any(work.iterdir()):
                say("discarding checkpoints of an earlier, different configuration of this stage")
            clear(work)
        work.mkdir(parents=True, exist_ok=True)
        key_file.write_text(node_key)
    if distributed:
        torch.distributed.barrier()
    return work / "trainer"


def wait_for_ranks() -> None:
    """Under a launcher, wait until every rank gets here; alone, return."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def last_checkpoint(output_dir: Path) -> Path | None:
    """The newest complete checkpoint (its trainer_state.json, written last, is readable)."""
    candidates = sorted(output_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]), reverse=True)
    for checkpoint in candidates:
        try:
            json.loads((checkpoint / "trainer_state.json").read_text())
        except (OSError, ValueError):
            continue
        return checkpoint
    return None


def train(trainer: Trainer, say: Callable[[str], None]) -> None:
    """Train, resuming from the newest complete checkpoint in the trainer's output directory."""
    for callback in (PrinterCallback, ProgressCallback):  # barctl reports progress itself
        trainer.remove_callback(callback)
    trainer.add_callback(SkipFinalCheckpoint())
    model, output_dir = trainer.model, trainer.args.output_dir
    if not isinstance(model, PreTrainedModel) or output_dir is None:  # barctl's trainers always have both
        raise BarctlError("a trainer needs a transformers model and an output directory")
    checkpoint = last_checkpoint(Path(output_dir))
    if checkpoint is not None:
        if not trainer.is_deepspeed_enabled:  # DeepSpeed resumes from its own, strictly loaded, state files
            check_resumable(model, checkpoint)
        say(f"resuming from {checkpoint.name}")
    if trainer.is_deepspeed_enabled:
        from barctl.model.zero import moe_blocks_as_leaves

        moe_blocks_as_leaves(model)
    try:
        with checkpoints_as_trained(model):
            trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    finally:  # a failed run leaves no bar drawing on the terminal
        for callback in trainer.callback_handler.callbacks:
            if isinstance(callback, Progress):
                callback.close()


@contextmanager
def checkpoints_as_trained(model: PreTrainedModel) -> Iterator[None]:
    """The trainer's checkpoints keep the tensor names the model trains with.

    transformers fuses a MoE layer's experts in memory (`mlp.experts.gate_up_proj`) and by
    default saves them under the legacy per-expert names; the Trainer resumes with a plain
    `load_state_dict(strict=False)`, which would skip every expert and router tensor.
    """
    setattr(model, "save_pretrained", functools.partial(model.save_pretrained, save_original_format=False))
    try:
        yield
    finally:
        del model.save_pretrained


def check_resumable(model: torch.nn.Module, checkpoint: Path) -> None:
    """BarctlError unless `checkpoint` holds exactly the model's tensors (a tied tensor saved once)."""
    try:
        with CheckpointReader(checkpoint) as reader:
            saved = set(reader.names())
    except BarctlError as e:
        raise BarctlError(f"cannot resume from {checkpoint}: {e}") from None
    state = model.state_dict()
    present = {state[name].data_ptr() for name in saved if name in state}
    missing = sorted(name for name, tensor in state.items() if name not in saved and tensor.data_ptr() not in present)
    unexpected = sorted(saved - state.keys())
    if missing or unexpected:
        raise BarctlError(
            f"cannot resume from {checkpoint}: its tensors are not the model's (missing: {_few(missing)}; "
            f"unexpected: {_few(unexpected)}); it was written in another layout (by an older barctl?). "
            f"Remove {checkpoint.parent.parent} to start this stage over")


def _few(names: list[str], shown: int = 3) -> str:
    if not names:
        return "none"
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def clear(directory: Path) -> None:
    """Remove everything inside `directory`."""
    if not directory.exists():
        return
    for child in directory.iterdir():
        shutil.rmtree(child) if child.is_dir() else child.unlink()
