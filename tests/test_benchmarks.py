"""Checks of the statistics that the benchmark scripts print."""
import importlib.util
from pathlib import Path

import pytest
from scipy.stats import binom

ROOT = Path(__file__).resolve().parents[1]


def load_benchmark(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("count", [1, 2, 5, 6, 9, 16, 24, 32, 47])
@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
def test_median_interval_binomial_oracle(count, confidence):
    median_interval = load_benchmark("train_step").median_interval
    values = [float(value) for value in range(count)][::-1]  # unsorted input
    low, high = median_interval(values, confidence)
    # Oracle: the largest j with 1 - 2 P(B <= j) >= confidence for B ~ Binomial(count, 1/2), from scipy.
    eligible = [j for j in range(count // 2) if 1.0 - 2.0 * binom.cdf(j, count, 0.5) >= confidence]
    j = max(eligible) if eligible else 0
    assert low == float(j)
    assert high == float(count - 1 - j)
    assert low <= sorted(values)[count // 2] <= high
