import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from barctl.errors import BarctlError
from barctl.model.checkpoint import CheckpointReader, ShardedWriter
from barctl.model.expert_merge import merge
from barctl.model.families import MIXTRAL
from barctl.model.hf_export import export, smoke_test
from barctl.model.router_weights import extract_router, random_router
from barctl.model.upcycle import branch
from tests.helpers import TINY_CONFIG, make_dense_checkpoint, make_tokenizer_dir, model_logits

BIG = 1 << 30
CARD = "# tiny BAR model\n"


def build_merged(root, tok_dir, family="llama"):
    anchor = make_dense_checkpoint(root / "anchor", family=family, tokenizer_dir=tok_dir)
    experts = [root / "e1", root / "e2"]
    for seed, expert in enumerate(experts):
        branch(anchor, expert, ffn_dir=None, seed=seed, max_shard_bytes=BIG)
    merge(anchor, experts, root / "merged", shared="average", top_k=3, max_shard_bytes=BIG)
    return root / "merged"


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    return make_tokenizer_dir(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def merged(tmp_path_factory, tok_dir):
    return build_merged(tmp_path_factory.mktemp("llama"), tok_dir)


def test_export_round_trips_and_generates(tmp_path, merged):
    out = tmp_path / "final"
    export(merged, out, router_file=None, dtype=None, max_shard_bytes=BIG, model_card=CARD, top_k=2)
    assert (out / "README.md").read_text() == CARD
    files = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "chat_template.jinja"} <= files
    assert json.loads((out / "config.json").read_text())["num_experts_per_tok"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["final"]  # no temporary sibling left
    # top_k changes routing only through the config; weights are identical
    reader, source = CheckpointReader(out), CheckpointReader(merged)
    assert all(torch.equal(reader.get(n), source.get(n)) for n in source.names())
    result = smoke_test(out)
    assert isinstance(result["generated"], str) and result["seconds"] > 0


def test_export_bfloat16(tmp_path, merged):
    out = tmp_path / "bf16"
    export(merged, out, router_file=None, dtype="bfloat16", max_shard_bytes=BIG, model_card=CARD, top_k=None)
    reader = CheckpointReader(out)
    assert reader.config["dtype"] == "bfloat16"
    assert {reader.dtype_of(n) for n in reader.names()} == {torch.bfloat16}
    smoke_test(out, max_new_tokens=2)


def test_export_shards_and_reloads(tmp_path, merged):
    out = tmp_path / "sharded"
    export(merged, out, router_file=None, dtype=None, max_shard_bytes=20_000, model_card=CARD, top_k=None)
    shards = sorted(p.name for p in out.glob("*.safetensors"))
    assert len(shards) > 2 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(shards)
    sizes = sum(CheckpointReader(merged).get(n).numel() * 4 for n in CheckpointReader(merged).names())
    assert index["metadata"]["total_size"] == sizes
    torch.testing.assert_close(model_logits(out), model_logits(merged), atol=0, rtol=0)


def test_router_file_replaces_routers(tmp_path, merged):
    extracted, fresh = tmp_path / "extracted.safetensors", tmp_path / "random.safetensors"
    extract_router(merged, extracted)
    random_router(merged, fresh, seed=5)
    routers = load_file(extracted)
    assert sorted(routers) == sorted(MIXTRAL.router_name(i) for i in range(TINY_CONFIG["num_hidden_layers"]))
    assert torch.equal(routers[MIXTRAL.router_name(0)], CheckpointReader(merged).get(MIXTRAL.router_name(0)))
    new = load_file(fresh)
    assert {k: v.shape for k, v in new.items()} == {k: v.shape for k, v in routers.items()}
    out = tmp_path / "final"
    export(merged, out, router_file=fresh, dtype=None, max_shard_bytes=BIG, model_card=CARD, top_k=None)
    assert torch.equal(CheckpointReader(out).get(MIXTRAL.router_name(1)), new[MIXTRAL.router_name(1)])


def test_bad_router_file_leaves_no_output(tmp_path, merged):
    bad = tmp_path / "bad.safetensors"
    save_file({MIXTRAL.router_name(0): torch.zeros(2, TINY_CONFIG["hidden_size"])}, bad)
    out = tmp_path / "final"
    with pytest.raises(BarctlError, match="does not fit"):
        export(merged, out, router_file=bad, dtype=None, max_shard_bytes=BIG, model_card=CARD, top_k=None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.safetensors"]


def test_export_replaces_existing_output(tmp_path, merged):
    out = tmp_path / "final"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    export(merged, out, router_file=None, dtype=None, max_shard_bytes=BIG, model_card=CARD, top_k=None)
    assert not (out / "stale.txt").exists() and (out / "model.safetensors").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["final"]


def test_flex_olmo_export_smoke(tmp_path, tok_dir):
    merged = build_merged(tmp_path, tok_dir, family="olmo2")
    export(merged, tmp_path / "final", router_file=None, dtype=None, max_shard_bytes=BIG, model_card=CARD, top_k=None)
    assert smoke_test(tmp_path / "final", max_new_tokens=2)["generated"] is not None


def export_without(tmp_path, merged, name: str):
    """An export of `merged` with the tensor `name` removed."""
    broken = tmp_path / "broken"
    export(merged, broken, router_file=None, dtype=None, max_shard_bytes=BIG, model_card=CARD, top_k=None)
    path = broken / "model.safetensors"
    tensors = load_file(path)
    del tensors[name]
    save_file(tensors, path, metadata={"format": "pt"})
    return broken


def test_smoke_test_catches_broken_checkpoint(tmp_path, merged):
    with pytest.raises(BarctlError, match="missing_keys"):
        smoke_test(export_without(tmp_path, merged, MIXTRAL.router_name(0)))


def test_writer_rejects_duplicates_and_writes_one_file(tmp_path):
    writer = ShardedWriter(tmp_path, max_shard_bytes=1024)
    writer.add("a", torch.zeros(4))
    with pytest.raises(BarctlError, match="written twice"):
        writer.add("a", torch.zeros(4))
    writer.close()
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]
    assert list(load_file(tmp_path / "model.safetensors")) == ["a"]


def test_large_export_is_smoke_tested_through_its_first_layer(tmp_path, merged, tok_dir, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "final"
    export(merged, out, router_file=None, dtype=None, max_shard_bytes=20_000, model_card=CARD, top_k=None)
    read = []
    original = CheckpointReader.get
    monkeypatch.setattr(CheckpointReader, "get", lambda self, name: read.append(name) or original(self, name))
    result = smoke_test(out, max_new_tokens=3, full_load_bytes=0)
    assert result["loaded_layers"] == 1
    assert read and not [name for name in read if name.startswith("model.layers.") and
                         not name.startswith("model.layers.0.")]  # no other layer's weights were read
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]  # the slice is gone
    # the slice is the export's first layer: the whole model cut to that layer generates the same tokens
    model = AutoModelForCausalLM.from_pretrained(out)
    model.model.layers = model.model.layers[:1]
    model.config.num_hidden_layers = 1
    tokenizer = AutoTokenizer.from_pretrained(out)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is 12 + 30?"}], tokenize=False,
                                           add_generation_prompt=True)
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    output = model.generate(**ids, max_new_tokens=3, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert result["generated"] == tokenizer.decode(output[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)


def test_sliced_smoke_test_catches_a_later_layer_that_differs(tmp_path, merged):
    broken = export_without(tmp_path, merged, MIXTRAL.router_name(1))
    with pytest.raises(BarctlError, match=r"layer 1 of .* differs from layer 0 \(missing: \['block_sparse_moe.gate"):
        smoke_test(broken, full_load_bytes=0)
