"""When an answer equals a gold answer: the grader's rules, run inside its worker processes.

train.grader extracts the answer and runs these functions under a CPU budget; nothing here guards
against runaway sympy work, so call them through train.grader (grade, grade_batch,
grade_batch_by_rule, unscorable_golds), not directly. Gold and answer go through one
normalisation (normalise_answer), are wrapped in \\boxed{} and parsed by math-verify's LaTeX
extraction only, and are compared by verify(gold, answer), gold first (verify is asymmetric).

Two rules, both computed from the same parses (verdicts() returns both):

- "default", this project's rule, for the GRPO reward and the evaluation:
  - Trailing punctuation is dropped (`7\\text{ hours}.`), `,\\!` thousands separators removed
    (`\\dfrac{1}{29,\\!322,\\!216}`), Python in a gold is LaTeX (`-1./3` is `-1/3`,
    `np.arcsin(10/13)` is `\\arcsin(10/13)`: math-verify keeps both as text, which only the same
    text matches).
  - Scientific notation is a number, written out exactly: `4.4e7`, `4.4\\times 10^{7}`,
    `1,234 \\times 10^{3}` become `44000000` and `1234000` (math-verify reads `4.4e7` as 4.4 * e * 7
    with Euler's e, and multiplies `1.16\\times 10^{2}` to 115.99999999999999).
  - Floats agree when both round alike to 6 decimal places (math-verify's default), or to more
    places for a gold below 1e-4 in magnitude, as many as keep its 3 leading significant digits
    (1.24e-8: 10 places). So `0.083333` is 1/12 and `0.033333` is 1/30 (the previous rule, 6
    significant digits below 1, asked 1/12 for a 7th decimal), while `1.3e-8` is not `1.24e-8`
    (6 places alone round both to 0).
  - Percent: a percent sign on the gold only is a unit that may also be read as /100 (`5\\%`
    accepts `5` and `0.05`); on the answer only, it is read so as to make a gold of 1 or more a
    percent number and a gold of at most 1 a fraction (gold `5` accepts `5\\%`, rejects `500\\%`;
    gold `0.05` accepts `5\\%`, rejects `0.05\\%`; gold `1` accepts `1\\%` and `100\\%`). On both
    sides the signs cancel.
  - A gold `a = b` whose two sides are numbers equal under this rule (SimpleRL's `0.56 = 56\\%`) is
    read as either side; any other equation stays an equation (`x = 3` accepts `3`).
  - The rest is math-verify's: fractions, radicals, sets, intervals, equations, units in \\text{},
    thousands separators, degrees, matrices. An answer that does not parse is wrong.
- "paper", the comparison of numbers in the paper's public runner (simplelr_math_eval's
  math_equal: math.isclose with rel_tol=1e-4 against the gold, gold x 100 and gold / 100): right if
  right under "default", or if gold and answer are single numbers (constants allowed: `\\pi`,
  `\\sqrt{2}`) and the answer is within a relative 1e-4 of the gold, 100 x gold or gold / 100
  (percent signs dropped, as that runner's string normalisation does). Gold `4.03188` accepts
  `4.032`, gold `5` accepts `500` and `0.05`. Its string normalisation and tuple/matrix splitting
  are not ported: for anything but a single number the two rules agree.
"""

from __future__ import annotations

import cmath
import math
import re
from decimal import Decimal
from functools import lru_cache

RULES = ("default", "paper")
PAPER_RELATIVE_TOLERANCE = 1e-4  # simplelr_math_eval grader.numeric_equal: isclose(rel_tol=1e-4)
PAPER_SCALES = (1, 100, 0.01)  # its include_percentage: [reference, reference*100, reference/100]
FLOAT_DECIMALS = 6  # math-verify's default float_rounding
MIN_SIGNIFICANT_DIGITS = 3  # of a gold below 1e-4, where 6 decimal places would keep fewer

# Scientific notation: a mantissa not glued to a word or to a ^/_ before it ("2^3\times 10^{2}" is
# 2^3 times 100), with or without thousands separators, then e/E and a signed exponent (4.4e7;
# "2e^{3}" is not one), or \times, \cdot or * and 10^{k} or 10^k (math-verify too reads 10^12 as
# 10^{12}).
_SCIENTIFIC_RE = re.compile(
    r"(?<![\w.\\^_])(\d{1,3}(?:(?:,|\{,\})\d{3})+(?:\.\d*)?|\d+(?:\.\d*)?|\.\d+)(?:"
    r"[eE]([-+]?\d+)(?![.\d])"
    r"|\s*(?:\\times|\\cdot|\*)\s*10\s*\^\s*(?:\{\s*([-+]?\d+)\s*\}|([-+]?\d+)(?![.\d])))")
MAX_SPELLED_EXPONENT = 100  # 4.4e7 -> 44000000; a longer number than 10^100 stays m\times 10^{k}
_PERCENT_RE = re.compile(r"\\?%")  # \% or a bare %
# Python in a gold (Minerva's `-1./3`, `-3./2`, `np.arcsin(10/13)`), which math-verify keeps as a
# string that only the same string matches: a float's dangling point, numpy/math names.
_DANGLING_POINT_RE = re.compile(r"(?<=\d)\.(?![\d\w\\])")
# `29,\!322` is a thousands separator (math-verify reads `29,322` as 29322 only outside \frac).
_THIN_SPACED_COMMA_RE = re.compile(r"(?<=\d),\\!(?=\d{3})")
_TRAILING_PUNCTUATION_RE = re.compile(r"[\s$.,;]+$")  # `7\text{ hours}.`, `\{1\}$.`
_PYTHON_NAME_RE = re.compile(r"\b(?:np|numpy|math)\.([a-z0-9]+)\b")
_PYTHON_LATEX = {"sin": r"\sin", "cos": r"\cos", "tan": r"\tan", "arcsin": r"\arcsin",
                 "arccos": r"\arccos", "arctan": r"\arctan", "asin": r"\arcsin",
                 "acos": r"\arccos", "atan": r"\arctan", "sinh": r"\sinh", "cosh": r"\cosh",
                 "tanh": r"\tanh", "exp": r"\exp", "log": r"\ln", "log10": r"\log_{10}",
                 "sqrt": r"\sqrt", "pi": r"\pi", "e": "e"}


def normalise_answer(answer: str) -> tuple[str, bool]:
    """(answer rewritten, whether it had a percent sign): trailing punctuation dropped, `,\\!`
    thousands separators removed, Python floats and numpy/math names as LaTeX, scientific notation
    written out, percent signs removed. Gold and answer alike.

    >>> normalise_answer("4.4e7")
    ('44000000', False)
    >>> normalise_answer("1.2 \\\\times 10^{-5} \\\\%")
    ('0.000012', True)
    >>> normalise_answer("np.arcsin(10/13)"), normalise_answer("-1./3")
    (('\\\\arcsin(10/13)', False), ('-1/3', False))
    """
    answer = _THIN_SPACED_COMMA_RE.sub("", _TRAILING_PUNCTUATION_RE.sub("", answer))
    spelled = _DANGLING_POINT_RE.sub("", _SCIENTIFIC_RE.sub(_spell_out, _python_as_latex(answer)))
    without_percent = _PERCENT_RE.sub("", spelled)
    return without_percent.strip(), without_percent != spelled


def _spell_out(match: re.Match) -> str:
    """A scientific-notation match as an exact decimal (sympy would multiply a binary float:
    1.16 * 10^2 is 115.99999999999999, not the gold 116)."""
    mantissa = re.sub(r",|\{,\}", "", match.group(1))  # 1,234 \times 10^{3} is 1234000
    exponent = int(next(g for g in match.groups()[1:] if g))
    before = match.string[:match.start()].rstrip()
    if match.group(2) is None and before.endswith(("/", "\\div")):
        return match.group(0)  # 6/3\times 10^{2} is (6/3) times 100, not 6/300
    if abs(exponent) <= MAX_SPELLED_EXPONENT:
        return f"{Decimal(mantissa).scaleb(exponent):f}"
    return f"{mantissa}\\times 10^{{{exponent}}}" if match.group(2) else match.group(0)


def _python_as_latex(text: str) -> str:
    """np.arcsin(x) -> \\arcsin(x), np.sqrt(x) -> \\sqrt{x}, np.pi -> \\pi (others unchanged)."""
    if "." not in text:
        return text
    text = _PYTHON_NAME_RE.sub(lambda m: _PYTHON_LATEX.get(m.group(1), m.group(0)), text)
    while (start := text.find("\\sqrt(")) >= 0:  # math-verify reads \sqrt{x} only
        depth = 0
        for end in range(start + 5, len(text)):
            depth += {"(": 1, ")": -1}.get(text[end], 0)
            if depth == 0:
                break
        if depth:
            break  # unbalanced: leave it as it is
        text = f"{text[:start]}\\sqrt{{{text[start + 6:end]}}}{text[end + 1:]}"
    return text


@lru_cache(maxsize=64)  # a gold is parsed once per batch of its samples
def _parse(text: str) -> tuple | None:
    """math-verify's parse of \\boxed{text}: (sympy object, string), or (string,) for what it
    could only keep as text; None when nothing parses."""
    from math_verify import LatexExtractionConfig, parse

    # boxed_match_priority=0: the \boxed{} we wrap around the answer is the thing to read.
    config = [LatexExtractionConfig(boxed_match_priority=0)]
    try:
        # None disables math-verify's own alarm (whole seconds only, and it would cancel ours).
        return tuple(parse(f"\\boxed{{{text}}}", config, parsing_timeout=None)) or None
    except Exception:  # noqa: BLE001 - sympy/latex2sympy raise anything on odd answers
        return None


def _number(parsed: tuple | None) -> complex | None:
    """The value of a parse that is one number (constants allowed: pi, sqrt(2)), else None."""
    import sympy

    expr = parsed[0] if parsed else None
    if not isinstance(expr, sympy.Expr) or not expr.is_number:
        return None
    try:
        value = complex(expr.evalf())
    except Exception:  # noqa: BLE001 - too big for a float, or no value at all
        return None
    return value if cmath.isfinite(value) else None


def _float_rounding(gold: tuple) -> int:
    """Decimal places for math-verify's float comparison: 6, or as many as keep a small gold's
    MIN_SIGNIFICANT_DIGITS (a gold below 1e-4: 1.24e-8 -> 10 places)."""
    value = _number(gold)
    if value is None or value == 0:
        return FLOAT_DECIMALS
    return max(FLOAT_DECIMALS, MIN_SIGNIFICANT_DIGITS - 1 - math.floor(math.log10(abs(value))))


def _verify(gold: tuple | None, pred: tuple | None) -> bool:
    from math_verify import verify

    if gold is None or pred is None:
        return False
    try:
        return verify(list(gold), list(pred), float_rounding=_float_rounding(gold),
                      timeout_seconds=None)
    except Exception:  # noqa: BLE001 - sympy raises anything on odd answers
        return False


def _default_equal(gold: str, pred: str) -> bool | None:
    """The default rule on one gold reading; None when either does not parse."""
    (gold, gold_percent), (pred, pred_percent) = normalise_answer(gold), normalise_answer(pred)
    gold_parsed, pred_parsed = _parse(gold), _parse(pred)
    if gold_parsed is None or pred_parsed is None:
        return None
    if gold_percent == pred_percent:
        return _verify(gold_parsed, pred_parsed)
    if gold_percent:  # gold 5% accepts 5 and 0.05
        return (_verify(gold_parsed, pred_parsed)
                or _verify(_parse(f"\\frac{{{gold}}}{{100}}"), pred_parsed))
    # Answer X% against a bare gold g: X = g makes g a percent number, X = 100 g a fraction.
    value = _number(gold_parsed)
    as_unit = value is None or abs(value) >= 1
    as_fraction = value is None or abs(value) <= 1
    return ((as_unit and _verify(gold_parsed, pred_parsed))
            or (as_fraction and _verify(gold_parsed, _parse(f"\\frac{{{pred}}}{{100}}"))))


def _paper_close(gold: str, pred: str) -> bool:
    """The paper runner's comparison of two numbers: relative 1e-4, gold x 1, x 100 or / 100."""
    gold_value = _number(_parse(normalise_answer(gold)[0]))
    pred_value = _number(_parse(normalise_answer(pred)[0]))
    if gold_value is None or pred_value is None:
        return False
    return any(cmath.isclose(pred_value, gold_value * scale, rel_tol=PAPER_RELATIVE_TOLERANCE)
               for scale in PAPER_SCALES)


def gold_readings(gold: str) -> list[str]:
    """The gold itself, or both sides of an `a = b` gold whose sides are equal numbers."""
    sides = [side.strip() for side in gold.split("=")]
    numbers = len(sides) == 2 and all(_number(_parse(normalise_answer(side)[0])) is not None
                                      for side in sides)
    return sides if numbers and _default_equal(*sides) else [gold]


def verdicts(gold: str, pred: str) -> dict[str, tuple[bool, str]]:
    """{rule: (correct, reason)} for every rule in RULES; reason "ok", "wrong" or "parse-error"
    (the answer or the gold does not parse)."""
    default, paper, parsed = False, False, False
    for reading in gold_readings(gold):
        equal = _default_equal(reading, pred)
        parsed = parsed or equal is not None
        default = default or bool(equal)
        paper = paper or bool(equal) or (equal is not None and _paper_close(reading, pred))
    return {rule: (correct, "ok" if correct else "wrong" if parsed else "parse-error")
            for rule, correct in (("default", default), ("paper", paper))}


def gold_problem(gold: str) -> str | None:
    """Why no answer can match this gold under the default rule, or None when one can."""
    import sympy

    readings = gold_readings(gold)
    for reading in readings:
        parsed = _parse(normalise_answer(reading)[0])
        if parsed is None:
            return "math-verify cannot parse it"
        if isinstance(parsed[0], str):
            return "math-verify keeps it as text: only the same string matches it"
        if isinstance(parsed[0], sympy.logic.boolalg.BooleanAtom) or (
                isinstance(parsed[0], sympy.core.relational.Relational)
                and parsed[0].lhs.is_number and parsed[0].rhs.is_number):
            return "an (in)equation between two numbers: no answer equals it"
    if not verdicts(gold, gold)["default"][0]:
        return "it does not grade right against itself"
    return None
