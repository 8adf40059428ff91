"""Gates on hand-made scores and intervals: own_expert on either side, intervals apart, tolerance ci95,
keep-a-share-of-the-gain; the names they get; and the manifest mistakes validate reports with their place."""

from __future__ import annotations

import re

import pytest
import yaml

from barctl.evaluate.gate_rules import gate_failures
from barctl.manifest.recipe import _build_gate
from tests.projects import barctl, write_manifest
from tests.test_evals import EVALS, evaluated_project

SCORES = {"anchor": {"math": 0.50, "code": 0.40, "average": 0.45},
          "experts.math": {"math": 0.75, "code": 0.30, "average": 0.525},
          "experts.code": {"math": 0.45, "code": 0.38, "average": 0.415},
          "merged": {"math": 0.70, "code": 0.35, "average": 0.525}}
INTERVALS = {"anchor": {"math": (0.40, 0.60), "code": (0.30, 0.50), "average": (0.38, 0.52)},
             "experts.math": {"math": (0.66, 0.83), "code": (0.21, 0.41), "average": (0.45, 0.60)},
             "experts.code": {"math": (0.35, 0.55), "code": (0.28, 0.48), "average": (0.34, 0.49)},
             "merged": {"math": (0.60, 0.79), "code": (0.26, 0.45), "average": (0.45, 0.60)}}


def failures(**gate) -> list[str]:
    return gate_failures([{"name": "g", "tolerance": 0, **gate}], SCORES, INTERVALS)


def test_own_expert_as_the_model_is_the_expert_named_like_each_domain():
    assert failures(model="own_expert", at_least="anchor", domains=["math", "code"]) == [
        "gate 'g' failed on code: experts.code scored 0.3800, below anchor 0.4000"]
    assert failures(model="own_expert", at_least="anchor", domains=["math", "code"], tolerance=0.02) == []


def test_intervals_apart_needs_the_model_low_above_the_reference_high():
    # experts.math on math: 0.66 > anchor's 0.60; merged on math: 0.60 is not above 0.60
    assert failures(model="experts.math", at_least="anchor", domains=["math"], intervals_apart=True) == []
    assert failures(model="merged", at_least="anchor", domains=["math"], intervals_apart=True) == [
        "gate 'g' failed on math: merged scored 0.7000 [0.6000, 0.7900], its 95% interval not entirely above "
        "anchor 0.5000 [0.4000, 0.6000]"]
    # a plain gate passes where the scores differ by less than the intervals resolve
    assert failures(model="merged", at_least="anchor", domains=["math"]) == []


def test_tolerance_ci95_fails_only_an_interval_entirely_below():
    # experts.math on code: 0.30 < 0.40, but [0.21, 0.41] reaches anchor's low 0.30
    assert failures(model="experts.math", at_least="anchor", domains=["code"]) != []
    assert failures(model="experts.math", at_least="anchor", domains=["code"], tolerance="ci95") == []
    scores = {"anchor": {"math": 0.5}, "merged": {"math": 0.2}}
    intervals = {"anchor": {"math": (0.41, 0.59)}, "merged": {"math": (0.12, 0.40)}}
    assert gate_failures([{"name": "g", "model": "merged", "at_least": "anchor", "domains": ["math"],
                           "tolerance": "ci95"}], scores, intervals) == [
        "gate 'g' failed on math: merged scored 0.2000 [0.1200, 0.4000], its 95% interval entirely below "
        "anchor 0.5000 [0.4100, 0.5900]"]


def test_tolerance_ci95_against_a_number_compares_the_model_high_with_it():
    assert failures(model="merged", at_least=0.8, domains=["math"], tolerance="ci95") == [
        "gate 'g' failed on math: merged scored 0.7000 [0.6000, 0.7900], its 95% interval entirely below "
        "the threshold 0.8000"]
    assert failures(model="merged", at_least=0.79, domains=["math"], tolerance="ci95") == []


def test_keep_a_share_of_the_own_experts_gain():
    # math: the expert gained 0.25 over the anchor; 80% of it is 0.70 and merged has 0.70; 90% is 0.725
    gate = {"model": "merged", "at_least": "own_expert", "over": "anchor", "domains": ["math"]}
    assert failures(**gate, keep=0.8) == []
    assert failures(**gate, keep=0.9) == [
        "gate 'g' failed on math: merged scored 0.7000, below 0.7250 = anchor 0.5000 + 0.9 x "
        "(experts.math 0.7500 - anchor 0.5000)"]
    assert failures(**gate, keep=0.9, tolerance=0.03) == []
    # within its interval [0.60, 0.79], 0.725 is reached
    assert failures(**gate, keep=0.9, tolerance="ci95") == []
    lower = {"scores": {**SCORES, "merged": {"math": 0.55}}, "intervals": {**INTERVALS, "merged": {"math": (0.45, 0.65)}}}
    assert gate_failures([{"name": "g", **gate, "keep": 0.8, "tolerance": "ci95"}], **lower) == [
        "gate 'g' failed on math: merged scored 0.5500 [0.4500, 0.6500], its 95% interval entirely below "
        "0.7000 = anchor 0.5000 + 0.8 x (experts.math 0.7500 - anchor 0.5000)"]


def test_keep_when_the_expert_did_not_gain_asks_to_reach_the_baseline():
    # code: experts.code 0.38 did not gain over anchor 0.40; merged 0.35 falls below the anchor
    assert failures(model="merged", at_least="own_expert", keep=0.8, over="anchor", domains=["code"]) == [
        "gate 'g' failed on code: merged scored 0.3500, below anchor 0.4000 (experts.code 0.3800 did not gain "
        "over anchor, so merged must not fall below it)"]
    scores = {**SCORES, "merged": {**SCORES["merged"], "code": 0.40}}
    assert gate_failures([{"name": "g", "model": "merged", "at_least": "own_expert", "keep": 0.8, "over": "anchor",
                           "domains": ["code"], "tolerance": 0}], scores) == []


def test_gates_without_intervals_need_no_intervals_and_the_others_insist_on_them():
    assert gate_failures([{"name": "g", "model": "merged", "at_least": "anchor", "domains": ["math"],
                           "tolerance": 0.0}], SCORES) == []
    with pytest.raises(ValueError, match="compares 95% intervals"):
        gate_failures([{"name": "g", "model": "merged", "at_least": "anchor", "domains": ["math"],
                        "tolerance": "ci95"}], SCORES)


def test_every_domain_of_every_gate_is_reported():
    gates = [{"name": "a", "model": "own_expert", "at_least": "anchor", "domains": ["math", "code"],
              "intervals_apart": True, "tolerance": 0},
             {"name": "b", "model": "merged", "at_least": 0.6, "domains": ["math", "code", "average"], "tolerance": 0}]
    assert [line.split(":")[0] for line in gate_failures(gates, SCORES, INTERVALS)] == [
        "gate 'a' failed on code", "gate 'b' failed on code", "gate 'b' failed on average"]


DATA = {"evals": {"domains": {"math": {}, "code": {}, "general": {}}}, "experts": {"math": {}, "code": {}}}


@pytest.mark.parametrize("gate, resolved", [
    ({"model": "own_expert", "at_least": "anchor", "intervals_apart": True},
     {"name": "own_expert > anchor (95% intervals apart) on math, code", "model": "own_expert", "at_least": "anchor",
      "domains": ["math", "code"], "tolerance": 0, "intervals_apart": True}),
    ({"model": "merged", "at_least": "own_expert", "keep": 0.8, "over": "anchor"},
     {"name": "merged keeps 80% of own_expert's gain over anchor on math, code", "model": "merged",
      "at_least": "own_expert", "domains": ["math", "code"], "tolerance": 0, "keep": 0.8, "over": "anchor"}),
    ({"model": "merged", "at_least": "anchor", "tolerance": "ci95"},
     {"name": "merged >= anchor (within 95% intervals) on math, code, general", "model": "merged",
      "at_least": "anchor", "domains": ["math", "code", "general"], "tolerance": "ci95"}),
    # the keys of a gate without the new options stay as they were (and so does its node's key)
    ({"model": "merged", "at_least": 0.5, "domains": ["math"], "tolerance": 0.02, "intervals_apart": False},
     {"name": "merged >= 0.5 - 0.02 on math", "model": "merged", "at_least": 0.5, "domains": ["math"],
      "tolerance": 0.02}),
])
def test_gates_resolve_with_readable_names_and_default_domains(gate, resolved):
    assert _build_gate(gate, DATA) == resolved


@pytest.mark.parametrize("gate, place, message", [
    ({"model": "merged", "at_least": 0.5, "intervals_apart": True}, "gates[0].intervals_apart",
     "intervals_apart compares two models' 95% intervals, but at_least is a number"),
    ({"model": "merged", "at_least": "anchor", "intervals_apart": True, "tolerance": 0.01}, "gates[0].tolerance",
     "tolerance loosens a condition that intervals_apart tightens"),
    ({"model": "merged", "at_least": "own_expert", "keep": 0.8}, "gates[0].keep", "keep needs `over`"),
    ({"model": "merged", "at_least": "own_expert", "over": "anchor"}, "gates[0].over", "over needs `keep`"),
    ({"model": "merged", "at_least": 0.5, "keep": 0.8, "over": "anchor"}, "gates[0].at_least",
     "keep measures at_least's gain over `over`: at_least must be a model, not a number"),
    ({"model": "merged", "at_least": "own_expert", "keep": 0.8, "over": "anchor", "intervals_apart": True},
     "gates[0].intervals_apart", "intervals_apart compares two models' 95% intervals; keep's reference is a "
     "computed score"),
    ({"model": "merged", "at_least": "own_expert", "keep": 0.8, "over": "experts.maths"}, "gates[0].over",
     "unknown expert 'maths' (did you mean 'math'?)"),
    ({"model": "merged", "at_least": "anchor", "keep": 0.8, "over": "anchor"}, "gates[0].over",
     "anchor is already the gate's at_least"),
    ({"model": "own_expert", "at_least": "anchor", "domains": ["math", "general"]}, "gates[0].domains[1]",
     "own_expert: no expert is named 'general'"),
    ({"model": "merged", "at_least": "own_expert", "keep": 1.5, "over": "anchor"}, "gates[0].keep",
     "1.5 is greater than the maximum of 1"),
    ({"model": "merged", "at_least": "anchor", "tolerance": "wide"}, "gates[0].tolerance",
     "must be a number (0 or more) or 'ci95', got 'wide'"),
    ({"model": "merged", "at_least": "anchr"}, "gates[0].at_least",
     "must be a number or a model (anchor, merged, own_expert or experts.<name>), got 'anchr'"),
])
def test_bad_gate_combinations_are_reported_with_their_place(tmp_path, tokenizer_dir, gate, place, message):
    result = validate_with(tmp_path, tokenizer_dir, gates=[gate])
    assert result.exit_code == 1 and message in result.output, result.output
    assert re.search(rf"bar\.yaml:\d+:\d+: {re.escape(place)}: {re.escape(message)}", result.output), result.output
    assert len(re.findall(r"bar\.yaml:\d+:\d+:", result.output)) == 1  # this error only
    assert "Traceback" not in result.output


def test_own_expert_on_any_side_needs_the_experts_evaluated(tmp_path, tokenizer_dir):
    result = validate_with(tmp_path, tokenizer_dir, evals={**EVALS, "models": ["anchor", "merged"]},
                           gates=[{"model": "own_expert", "at_least": "anchor"},
                                  {"model": "merged", "at_least": "own_expert", "keep": 0.8, "over": "anchor"}])
    assert result.exit_code == 1
    for place in ("gates[0].model", "gates[1].at_least"):
        assert re.search(rf"bar\.yaml:\d+:\d+: {re.escape(place)}: own_expert needs 'experts' in evals.models",
                         result.output), result.output


def test_the_demo_gates_validate(tmp_path, tokenizer_dir):
    result = validate_with(tmp_path, tokenizer_dir, gates=[
        {"model": "own_expert", "at_least": "anchor", "intervals_apart": True},
        {"model": "merged", "at_least": "own_expert", "keep": 0.8, "over": "anchor"},
        {"model": "merged", "at_least": "anchor", "tolerance": "ci95"}])
    assert result.exit_code == 0, result.output


OWN_DOMAINS = {**EVALS, "expert_domains": "own",
               "domains": {"math": {"dataset": "math_eval", "metric": "math_answer"},
                           "code": {"dataset": "heldout", "metric": "loss"}}}


def test_with_experts_evaluated_on_their_own_domain_a_gate_reads_no_other_expert_score(tmp_path, tokenizer_dir):
    result = validate_with(tmp_path, tokenizer_dir, evals=OWN_DOMAINS, gates=[
        {"model": "experts.math", "at_least": "anchor", "domains": ["math", "code"]},
        {"model": "merged", "at_least": "experts.code"},
        {"model": "merged", "at_least": "experts.math", "domains": ["average"]}])
    assert result.exit_code == 1
    located = re.findall(r"bar\.yaml:\d+:\d+: (.*)", result.output)
    assert located == [
        "gates[0].domains[1]: experts.math is evaluated only on math (evals.expert_domains: own), not on code",
        "gates[1].at_least: experts.code is evaluated only on code (evals.expert_domains: own), and the gate's "
        "domains default to all of them: give `domains: [code]`, or use own_expert",
        "gates[2].domains[0]: experts.math is evaluated only on math (evals.expert_domains: own), not on average"]


def test_with_experts_evaluated_on_their_own_domain_own_expert_gates_validate(tmp_path, tokenizer_dir):
    result = validate_with(tmp_path, tokenizer_dir, evals=OWN_DOMAINS, gates=[
        {"model": "own_expert", "at_least": "anchor", "intervals_apart": True},
        {"model": "merged", "at_least": "own_expert", "keep": 0.8, "over": "anchor"},
        {"model": "experts.code", "at_least": "anchor", "domains": ["code"]}])
    assert result.exit_code == 0, result.output


def validate_with(tmp_path, tokenizer_dir, **change):
    manifest = evaluated_project(tmp_path, tokenizer_dir)
    write_manifest(manifest, {**yaml.safe_load(manifest.read_text()), **change})
    return barctl("validate", manifest)
