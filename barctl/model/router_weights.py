"""Router tensors of a MoE: extract, draw at random, derive from hidden states, move in and out of a loaded model."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from barctl.errors import BarctlError
from barctl.model.checkpoint import CheckpointReader
from barctl.model.families import moe_family_for_moe_config, num_layers


def router_names(reader: CheckpointReader) -> list[str]:
    family = moe_family_for_moe_config(reader.config)
    return [family.router_name(layer) for layer in range(num_layers(reader.config))]


def extract_router(moe_dir: Path, out_file: Path) -> None:
    """Write only the router tensors of `moe_dir` to the safetensors file `out_file`."""
    with CheckpointReader(moe_dir) as reader:
        tensors = {name: reader.get(name) for name in router_names(reader)}
    save_file(tensors, out_file, metadata={"format": "pt"})


def random_router(moe_dir: Path, out_file: Path, seed: int) -> None:
    """Router tensors shaped like `moe_dir`'s, drawn N(0, initializer_range) in layer order."""
    generator = torch.Generator().manual_seed(seed)
    with CheckpointReader(moe_dir) as reader:
        std = float(reader.config.get("initializer_range", 0.02))
        tensors = {
            name: (torch.randn(reader.shape_of(name), generator=generator) * std).to(reader.dtype_of(name))
            for name in router_names(reader)
        }
    save_file(tensors, out_file, metadata={"format": "pt"})


def router_weights(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The router weight of every layer of a loaded MoE (Mixtral and FlexOlmo both keep it at `mlp.gate`)."""
    return [layer.mlp.gate.weight for layer in decoder_layers(model)]


def decoder_layers(model: torch.nn.Module) -> list[Any]:
    """The decoder layers of a loaded causal LM (`model.model.layers` in every family barctl supports)."""
    loaded: Any = model  # mypy reads submodules as `Tensor | Module`
    return list(loaded.model.layers)


@contextmanager
def captured_router_logits(model: torch.nn.Module) -> Iterator[list[torch.Tensor]]:
    """While open, every router call of `model` appends its logits [tokens, experts], in float32, to the list.

    The logits are computed here from the router's input and weight (input @ weight.T)
    rather than taken from its output: transformers 5.0-5.5 return probabilities where
    5.6+ return raw scores. They keep their autograd graph, so a loss can use them.
    A model without a router at `mlp.gate` raises BarctlError.
    """
    gates = [getattr(layer.mlp, "gate", None) for layer in getattr(getattr(model, "model", None), "layers", [])]
    if not gates or not all(isinstance(getattr(gate, "weight", None), torch.Tensor) for gate in gates):
        raise BarctlError(f"{type(model).__name__} has no router in its layers' `mlp.gate`; it is not a "
                          "Mixture-of-Experts model")
    logits: list[torch.Tensor] = []

    def capture(module: torch.nn.Module, args: tuple) -> None:
        hidden = args[0]
        weight: Any = module.weight
        logits.append(F.linear(hidden.reshape(-1, hidden.shape[-1]).float(), weight.float()))

    handles = [gate.register_forward_pre_hook(capture) for gate in gates if gate is not None]
    try:
        yield logits
    finally:
        for handle in handles:
            handle.remove()


def load_router(model: torch.nn.Module, router_file: Path) -> None:
    """Copy the router tensors of `router_file` (checkpoint names, in layer order) into a loaded MoE."""
    from safetensors.torch import load_file

    tensors = load_file(router_file)
    weights = router_weights(model)
    if len(tensors) != len(weights):
        raise BarctlError(f"{router_file.name} has {len(tensors)} router tensors; the model has {len(weights)} layers")
    with torch.no_grad():
        for weight, name in zip(weights, _in_layer_order(tensors)):
            weight.copy_(tensors[name])


def save_router(model: torch.nn.Module, moe_dir: Path, out_file: Path) -> None:
    """A loaded MoE's router weights under `moe_dir`'s checkpoint names and dtypes."""
    with CheckpointReader(moe_dir) as reader:
        names = router_names(reader)
        dtypes = [reader.dtype_of(name) for name in names]
    tensors = {name: weight.detach().to("cpu", dtype).contiguous()
               for name, weight, dtype in zip(names, router_weights(model), dtypes)}
    save_file(tensors, out_file, metadata={"format": "pt"})


def _in_layer_order(tensors: dict[str, torch.Tensor]) -> list[str]:
    return sorted(tensors, key=lambda name: int(name.split(".layers.")[1].split(".")[0]))


def mean_ffn_inputs(model: torch.nn.Module, tokenizer, texts: list[str], *, max_length: int = 512,
                    batch_size: int = 8) -> torch.Tensor:
    """[layers, hidden]: the mean over the texts' tokens of what each layer's FFN receives (the router's input)."""
    layers = decoder_layers(model)
    config: Any = model.config
    sums = torch.zeros(len(layers), config.hidden_size, dtype=torch.float64)
    count = 0
    mask: list[torch.Tensor] = []

    def accumulate(index: int):
        def hook(module, args):
            hidden = args[0].reshape(-1, args[0].shape[-1]).double()
            sums[index] += hidden[mask[0].reshape(-1)].sum(dim=0)
        return hook

    handles = [layer.mlp.register_forward_pre_hook(accumulate(i)) for i, layer in enumerate(layers)]
    try:
        model.eval()
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                batch = tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True,
                                  truncation=True, max_length=max_length)
                mask[:] = [batch["attention_mask"].bool()]
                count += int(mask[0].sum())
                model(**batch)
    finally:
        for handle in handles:
            handle.remove()
    return (sums / max(count, 1)).float()


def hidden_state_router(anchor_dir: Path, texts_per_expert: list[list[str]], moe_dir: Path, out_file: Path,
                        *, max_length: int = 512) -> None:
    """Router rows from the anchor's hidden states (FlexOlmo's domain embeddings, mergekit's `hidden` gates).

    Row i of every layer is the unit-length mean FFN input of the anchor over expert i's
    texts; row 0 (the anchor's FFN) is the unit-length mean of those rows.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(anchor_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(anchor_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    means = torch.stack([_unit(mean_ffn_inputs(model, tokenizer, texts, max_length=max_length))
                         for texts in texts_per_expert], dim=1)  # [layers, experts, hidden]
    rows = torch.cat([_unit(means.mean(dim=1, keepdim=True)), means], dim=1)
    with CheckpointReader(moe_dir) as reader:
        names = router_names(reader)
        expected = reader.shape_of(names[0])
        if tuple(rows.shape[1:]) != tuple(expected):
            raise BarctlError(f"hidden-state router rows {tuple(rows.shape[1:])} do not fit the merged router "
                              f"{tuple(expected)}")
        tensors = {name: rows[layer].to(reader.dtype_of(name)).contiguous() for layer, name in enumerate(names)}
    save_file(tensors, out_file, metadata={"format": "pt"})


def _unit(t: torch.Tensor) -> torch.Tensor:
    return t / t.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def row_cosines(router_file: Path) -> torch.Tensor:
    """[experts, experts]: the cosine between every two router rows, averaged over layers."""
    from safetensors.torch import load_file

    return torch.stack([_unit(t.float()) @ _unit(t.float()).T for t in load_file(router_file).values()]).mean(dim=0)
