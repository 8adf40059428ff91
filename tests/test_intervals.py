"""95% intervals on evaluation scores: Wilson for pass/fail rows, a seeded bootstrap otherwise; the overlap check."""

from __future__ import annotations

import math

import numpy as np
import pytest

from barctl.errors import BarctlError
from barctl.evaluate.intervals import average_interval, bootstrap, score_interval, wilson
from barctl.evaluate.results import indistinct_experts, overlap, small_sample_warning


def test_wilson_matches_a_hand_computed_interval():
    # 7 of 20: p = 0.35, z = 1.959964; centre (p + z^2/2n) / (1 + z^2/n), half-width z sqrt(p(1-p)/n + z^2/4n^2) / (...)
    low, high = wilson(7, 20)
    assert (low, high) == (pytest.approx(0.1812, abs=5e-5), pytest.approx(0.5671, abs=5e-5))
    assert wilson(7, 20, z=1.959964) == (pytest.approx(low, abs=1e-6), pytest.approx(high, abs=1e-6))


def test_wilson_stays_inside_zero_and_one_at_the_extremes():
    assert wilson(0, 10)[0] == 0.0 and 0.0 < wilson(0, 10)[1] < 0.35
    assert wilson(10, 10)[1] == 1.0 and 0.65 < wilson(10, 10)[0] < 1.0


def test_pass_fail_rows_get_the_wilson_interval_and_partial_credit_the_bootstrap():
    rows = [1.0] * 7 + [0.0] * 13
    assert score_interval("math_answer", rows, "math") == wilson(7, 20)
    assert score_interval("math_verify", rows, "math") == wilson(7, 20)
    partial = [0.5] * 7 + [0.0] * 13
    assert score_interval("tool_call", partial, "tools") == score_interval("loss_like", partial, "tools")
    assert score_interval("tool_call", partial, "tools") != wilson(3.5, 20)


def test_bootstrap_is_deterministic_for_a_domain_and_differs_between_domains():
    rows = [float(i % 3 == 0) for i in range(30)]
    first = bootstrap("math_answer", rows, "math")
    assert first.shape == (1000,) and np.array_equal(first, bootstrap("math_answer", rows, "math"))
    assert not np.array_equal(first, bootstrap("math_answer", rows, "code"))


def test_bootstrap_of_a_mean_agrees_with_the_normal_approximation():
    values = [float(v) for v in np.random.default_rng(1).normal(0.5, 0.1, size=400)]
    low, high = score_interval("refusal", values, "safety")  # not pass/fail: the bootstrap
    mean, error = float(np.mean(values)), float(np.std(values, ddof=1)) / math.sqrt(len(values))
    assert low == pytest.approx(mean - 1.96 * error, abs=0.25 * error)
    assert high == pytest.approx(mean + 1.96 * error, abs=0.25 * error)


def test_loss_rows_resample_whole_rows_of_nll_and_tokens():
    # every row has the same per-token loss: every resample scores exp(-1), whatever the row lengths
    rows = [[1.0 * tokens, tokens] for tokens in (3, 5, 8, 13)]
    low, high = score_interval("loss", rows, "general")
    assert low == pytest.approx(math.exp(-1)) and high == pytest.approx(math.exp(-1))
    varied = [[0.5 * 4, 4], [2.0 * 4, 4], [1.0 * 10, 10]]
    low, high = score_interval("loss", varied, "general")
    assert math.exp(-2.0) <= low < math.exp(-10 / 18 - 1) < high <= math.exp(-0.5)


def test_average_interval_resamples_each_domain_with_its_own_seed():
    math_rows, loss_rows = [1.0, 0.0, 1.0, 1.0], [[4.0, 4], [2.0, 4], [6.0, 4]]
    low, high = average_interval({"math": ("math_answer", math_rows), "general": ("loss", loss_rows)})
    expected = (bootstrap("math_answer", math_rows, "math") + bootstrap("loss", loss_rows, "general")) / 2
    assert (low, high) == (pytest.approx(np.percentile(expected, 2.5)), pytest.approx(np.percentile(expected, 97.5)))


def test_no_rows_is_an_error():
    with pytest.raises(BarctlError, match="at least one row"):
        score_interval("math_answer", [], "math")


def eval_entry(model: str, domains: dict[str, tuple[float, list[float]]]) -> dict:
    return {"kind": "eval", "config": {"model": model},
            "metrics": {"domains": {d: {"score": s, "n": 8, "ci95": ci} for d, (s, ci) in domains.items()},
                        "average": 0.0, "average_ci95": [0.0, 1.0]}}


def test_experts_whose_intervals_overlap_the_anchors_everywhere_are_named():
    entries = {
        "eval.anchor": eval_entry("anchor", {"math": (0.2, [0.1, 0.3]), "code": (0.2, [0.1, 0.3])}),
        "eval.experts.math": eval_entry("experts.math", {"math": (0.8, [0.6, 0.9]), "code": (0.2, [0.1, 0.3])}),
        "eval.experts.code": eval_entry("experts.code", {"math": (0.3, [0.2, 0.4]), "code": (0.3, [0.25, 0.5])}),
    }
    assert overlap([0.1, 0.3], [0.3, 0.5]) and not overlap([0.1, 0.3], [0.31, 0.5])
    assert indistinct_experts(entries) == ["experts.code"]
    warning = small_sample_warning(entries)
    assert "experts.code" in warning and "experts.math" not in warning and "8 evaluation rows" in warning
    del entries["eval.experts.code"]
    assert small_sample_warning(entries) is None
