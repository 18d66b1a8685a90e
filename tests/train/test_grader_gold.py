"""Gold self-check: every benchmark's gold answer must grade correct against itself, boxed, and
against its own equivalent rewritings (e-notation and \\times 10^{}, plain decimals, thousands
commas, with and without a percent sign, \\dfrac/\\frac).

The default run checks a deterministic sample of each benchmark (every k-th row); the full check
over every row takes minutes on 2 cores and prints its counts:

    python -m pytest tests/train/test_grader_gold.py -m slow -s
"""

import re
from decimal import Decimal

import pytest

from train.data import load_benchmark
from train.grader import grade_batch

BENCHMARKS = ["math500", "gsm8k", "aime24", "amc23", "minerva_math", "olympiadbench",
              "simplerl_math_level3to5"]
SAMPLE_ROWS = 25  # per benchmark in the default run: ~900 grades, ~10 s on 2 busy cores
# A plain number as benchmarks write it: -3 / 2,125 / 0.5 / 4.4e7 / 1.70e-4.
_NUMBER_RE = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?")
_PERCENT_RE = re.compile(r"\s*\\?%$")


def _number(text: str) -> Decimal | None:
    return Decimal(text.replace(",", "")) if _NUMBER_RE.fullmatch(text) else None


def _number_forms(value: Decimal) -> list[str]:
    """One number written as e-notation, as m \\times 10^{k}, in full, and with thousands commas."""
    mantissa, exponent = f"{value.normalize():e}".split("e")
    plain = f"{value:f}"
    forms = [f"{mantissa}e{int(exponent)}", f"{mantissa} \\times 10^{{{int(exponent)}}}", plain]
    if abs(value) >= 1000:
        whole, _, decimals = plain.partition(".")
        forms.append(f"{int(whole):,}" + (f".{decimals}" if decimals else ""))
    return forms


def rewritings(gold: str) -> list[str]:
    """Answers that must grade correct against `gold` under the grader's rule."""
    forms = [gold]
    percent = _PERCENT_RE.search(gold)
    bare = gold[:percent.start()] if percent else gold
    value = _number(bare)
    if value is not None:
        forms += _number_forms(value)
        forms += [] if percent else [f"{gold}\\%"]
        if percent:  # 62.5% is also 0.625
            forms.append(f"{value / 100:f}")
    if percent:
        forms.append(bare)
    if "\\dfrac" in gold:
        forms.append(gold.replace("\\dfrac", "\\frac"))
    elif "\\frac" in gold:
        forms.append(gold.replace("\\frac", "\\dfrac"))
    return list(dict.fromkeys(forms))


def test_rewritings():
    assert rewritings("4.4e7") == ["4.4e7", "4.4 \\times 10^{7}", "44000000", "44,000,000",
                                   "4.4e7\\%"]
    assert rewritings("62.5%") == ["62.5%", "6.25e1", "6.25 \\times 10^{1}", "62.5", "0.625"]
    assert rewritings("\\frac{1}{2}") == ["\\frac{1}{2}", "\\dfrac{1}{2}"]
    assert rewritings("1.70e-4")[1:3] == ["1.7e-4", "1.7 \\times 10^{-4}"]
    assert rewritings("x^2") == ["x^2"]


def self_check(rows: list[dict]) -> list[tuple[str, str, str]]:
    """(gold, rewriting, reason) of every rewriting of every gold that does not grade correct."""
    pairs = [(row["answer"], form) for row in rows for form in rewritings(row["answer"])]
    grades = grade_batch([gold for gold, _ in pairs], [f"\\boxed{{{form}}}" for _, form in pairs])
    return [(gold, form, g.reason) for (gold, form), g in zip(pairs, grades) if not g.correct]


@pytest.mark.parametrize("benchmark", BENCHMARKS)
def test_gold_answers_grade_correct_against_their_rewritings_sample(benchmark):
    rows = load_benchmark(benchmark)
    step = -(-len(rows) // SAMPLE_ROWS)
    failures = self_check(rows[::step])
    assert not failures, failures[:10]


@pytest.mark.slow
@pytest.mark.parametrize("benchmark", BENCHMARKS)
def test_gold_answers_grade_correct_against_their_rewritings_all(benchmark):
    rows = load_benchmark(benchmark)
    failures = self_check(rows)
    failed_golds = {gold for gold, _, _ in failures}
    passed = sum(row["answer"] not in failed_golds for row in rows)
    print(f"\n{benchmark}: {passed}/{len(rows)} golds grade correct "
          f"against every rewriting; failures: {failures[:20]}")
    assert not failures, failures[:10]
