"""Dense -> MoE family pairs: tensor names and config translation (no torch, no transformers)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from barctl.errors import BarctlError, UnsupportedModel

PROJS = ("gate", "up", "down")

_DENSE_FFN = re.compile(r"^model\.layers\.(\d+)\.mlp\.(gate|up|down)_proj\.weight$")

# Config fields every supported MoE shares with its dense family (legacy rope keys included:
# transformers converts them on load).
_COMMON_KEYS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "hidden_act",
    "max_position_embeddings",
    "initializer_range",
    "rms_norm_eps",
    "use_cache",
    "pad_token_id",
    "bos_token_id",
    "eos_token_id",
    "tie_word_embeddings",
    "rope_parameters",
    "rope_theta",
    "rope_scaling",
    "attention_dropout",
    "dtype",
    "torch_dtype",
)


@dataclass(frozen=True)
class Family:
    """One MoE output architecture and the dense model types it upcycles."""

    name: str  # the MoE model_type, also the manifest's output.architecture
    architecture: str
    dense_model_types: tuple[str, ...]
    moe_prefix: str  # module holding experts and router inside each layer
    proj_files: tuple[str, str, str]  # saved names of the gate, up, down projections
    num_experts_key: str
    extra_keys: tuple[str, ...]
    moe_defaults: tuple[tuple[str, object], ...] = ()
    # dense config -> MoE config fields derived from it; raises UnsupportedModel when no exact form exists
    derived: Callable[[dict], dict] | None = None

    def dense_ffn_name(self, layer: int, proj: str) -> str:
        return f"model.layers.{layer}.mlp.{proj}_proj.weight"

    def expert_name(self, layer: int, slot: int, proj: str) -> str:
        file = self.proj_files[PROJS.index(proj)]
        return f"model.layers.{layer}.{self.moe_prefix}.experts.{slot}.{file}.weight"

    def router_name(self, layer: int) -> str:
        return f"model.layers.{layer}.{self.moe_prefix}.gate.weight"

    def parse_dense_ffn(self, name: str) -> tuple[int, str] | None:
        """(layer, proj) for a dense FFN tensor name, else None."""
        m = _DENSE_FFN.match(name)
        return (int(m.group(1)), m.group(2)) if m else None

    def parse_expert(self, name: str) -> tuple[int, int, str] | None:
        """(layer, slot, proj) for an expert tensor name, else None."""
        m = self._expert_re().match(name)
        if not m:
            return None
        return int(m.group(1)), int(m.group(2)), PROJS[self.proj_files.index(m.group(3))]

    def parse_router(self, name: str) -> int | None:
        """The layer of a router tensor name, else None."""
        m = re.match(rf"^model\.layers\.(\d+)\.{re.escape(self.moe_prefix)}\.gate\.weight$", name)
        return int(m.group(1)) if m else None

    def is_ffn_or_router(self, name: str) -> bool:
        """True for dense FFN, expert and router tensors; False for shared tensors."""
        return (
            self.parse_dense_ffn(name) is not None
            or self.parse_expert(name) is not None
            or self.parse_router(name) is not None
        )

    def num_experts(self, moe_config: dict) -> int:
        return int(moe_config[self.num_experts_key])

    def moe_config(self, dense_config: dict, num_experts: int, top_k: int) -> dict:
        """The config.json dict of a `num_experts` MoE built from `dense_config`."""
        if not 1 <= top_k <= num_experts:
            raise BarctlError(f"top_k must be between 1 and {num_experts} (the number of experts), got {top_k}")
        config = {k: dense_config[k] for k in _COMMON_KEYS + self.extra_keys if k in dense_config}
        config.update(
            architectures=[self.architecture],
            model_type=self.name,
            num_experts_per_tok=top_k,
            router_aux_loss_coef=0.01,
            output_router_logits=False,
            **{self.num_experts_key: num_experts},
            **dict(self.moe_defaults),
        )
        if self.derived is not None:
            config.update(self.derived(dense_config))
        return config

    def _expert_re(self) -> re.Pattern:
        files = "|".join(self.proj_files)
        return re.compile(rf"^model\.layers\.(\d+)\.{re.escape(self.moe_prefix)}\.experts\.(\d+)\.({files})\.weight$")


MIXTRAL = Family(
    name="mixtral",
    architecture="MixtralForCausalLM",
    dense_model_types=("llama", "mistral"),
    moe_prefix="block_sparse_moe",
    proj_files=("w1", "w3", "w2"),
    num_experts_key="num_local_experts",
    extra_keys=("head_dim", "sliding_window"),
    moe_defaults=(("router_jitter_noise", 0.0),),
)

FLEX_OLMO = Family(
    name="flex_olmo",
    architecture="FlexOlmoForCausalLM",
    dense_model_types=("olmo2",),
    moe_prefix="mlp",
    proj_files=("gate_proj", "up_proj", "down_proj"),
    num_experts_key="num_experts",
    extra_keys=("attention_bias",),
    moe_defaults=(("norm_topk_prob", False),),
)


def _qwen3_moe_fields(dense_config: dict) -> dict:
    """Every layer sparse, experts as wide as the dense FFN, full attention as in the anchor."""
    layers = num_layers(dense_config)
    layer_types = dense_config.get("layer_types")
    if layer_types is None and dense_config.get("use_sliding_window") and dense_config.get("sliding_window"):
        first = int(dense_config.get("max_window_layers", 0))
        layer_types = ["sliding_attention" if i >= first else "full_attention" for i in range(layers)]
    sliding = [i for i, t in enumerate(layer_types or []) if t == "sliding_attention"]
    if sliding:
        raise UnsupportedModel(
            f"qwen3 model with sliding-window attention on layers {sliding}: Qwen3-MoE applies its window "
            "to every layer or none, so its attention would differ from the anchor's"
        )
    return {
        "moe_intermediate_size": dense_config["intermediate_size"],
        "decoder_sparse_step": 1,
        "mlp_only_layers": [],
        "use_sliding_window": False,
        "sliding_window": None,
    }


QWEN3_MOE = Family(
    name="qwen3_moe",
    architecture="Qwen3MoeForCausalLM",
    dense_model_types=("qwen3",),
    moe_prefix="mlp",
    proj_files=("gate_proj", "up_proj", "down_proj"),
    num_experts_key="num_local_experts",  # what transformers writes (num_experts is its alias)
    extra_keys=("head_dim", "attention_bias"),
    # softmax over all experts, not renormalised over the top k: with every expert active, BAR's layer
    moe_defaults=(("norm_topk_prob", False),),
    derived=_qwen3_moe_fields,
)

FAMILIES = (MIXTRAL, FLEX_OLMO, QWEN3_MOE)
SUPPORTED_DENSE = tuple(t for f in FAMILIES for t in f.dense_model_types)

# Dense families with a MoE counterpart in transformers that barctl cannot fill exactly.
_INEXACT = {
    "qwen2": (
        "Qwen2-MoE (Qwen2 and Qwen2.5's MoE form) always adds a sigmoid-gated shared expert to the routed "
        "experts, which BAR's layer (a softmax over the anchor's and the experts' FFNs) does not have; "
        "barctl does not approximate it"
    ),
}


def num_layers(config: dict) -> int:
    return int(config["num_hidden_layers"])


def family_for(dense_config: dict, output_architecture: str = "auto") -> Family:
    """The MoE family for a dense config, or UnsupportedModel saying why there is none."""
    model_type = dense_config.get("model_type")
    supported = ", ".join(SUPPORTED_DENSE)
    if not model_type:
        raise UnsupportedModel(f"the model's config.json has no model_type; supported: {supported}")
    if any(model_type == f.name for f in FAMILIES):
        raise UnsupportedModel(
            f"model_type {model_type!r} is already a Mixture-of-Experts; the anchor must be a dense model ({supported})"
        )
    family = next((f for f in FAMILIES if model_type in f.dense_model_types), None)
    if model_type in _INEXACT:
        raise UnsupportedModel(f"model_type {model_type!r} has no exact MoE counterpart: {_INEXACT[model_type]}")
    if family is None:
        raise UnsupportedModel(
            f"model_type {model_type!r} has no MoE counterpart in barctl yet; supported: {supported}"
        )
    if output_architecture not in ("auto", family.name):
        known = ", ".join(f.name for f in FAMILIES)
        if all(output_architecture != f.name for f in FAMILIES):
            raise UnsupportedModel(f"unknown output architecture {output_architecture!r}; choose auto, {known}")
        raise UnsupportedModel(
            f"output architecture {output_architecture!r} does not fit a {model_type} anchor; "
            f"use {family.name!r} or 'auto'"
        )
    if family is MIXTRAL:
        biased = [k for k in ("attention_bias", "mlp_bias") if dense_config.get(k)]
        if biased:
            raise UnsupportedModel(
                f"{model_type} model with {' and '.join(biased)}=true: Mixtral has no bias terms, "
                "so its biases would be lost"
            )
    if family.derived is not None:
        family.derived(dense_config)
    return family


def moe_family_for_moe_config(config: dict) -> Family:
    """The family of a MoE checkpoint written by barctl (model_type mixtral, flex_olmo or qwen3_moe)."""
    model_type = config.get("model_type")
    for family in FAMILIES:
        if model_type == family.name:
            return family
    known = ", ".join(f.name for f in FAMILIES)
    raise UnsupportedModel(f"model_type {model_type!r} is not a barctl Mixture-of-Experts; expected one of: {known}")
