"""The tiny family's task: 2-digit x 1-digit multiplication, and the corpus that plants a latent skill.

Every problem is a*b with a in 10..99 and b in 2..9 (720 in all). A fixed, seeded shuffle puts
300 of them in the held-out "test" split and the other 420 in "train"; GRPO only ever sees
"train". The pretraining corpus mixes two answer styles, told apart by the first character of
the answer:

- careful (25%): column multiplication, units first, carries written out, always correct:
  `Let's 7*8+0=56 4*8+5=37 \\boxed{376}`
- quick (75%): `\\boxed{326}`, the product with the units' carry dropped; right only when the
  units product has no carry, 22 of the 80 (units digit, b) pairs = 27.5% of problems.

So a model that imitates the corpus perfectly scores 0.25 + 0.75 * 0.275 = 0.456, and RL can reach
~1.0 by switching to the careful style it already knows.

Trap: the pretraining corpus is drawn from all 720 problems by default (split="all"), so "held-out"
means held out from RL, not from pretraining. The careful tens step `4*8+5=37` is a fact
(tens digit, b, carry) that for 43% of the test problems never occurs in the train split; models
pretrained on "train" only get 47-62% of held-out problems right even when forced to be careful,
which leaves RL little to activate. The latent skill must be there; the experiment is whether RL
switches it on and whether RAST carries the switch to another model.

Look at a few corpus lines with:

    python -c "from train.tiny.task import sample_corpus; print(*sample_corpus(5, seed=0), sep='\\n')"
"""

import random
import re

import datasets

from train.errors import UserError
from train.prompts import render_prompt

CAREFUL_SHARE = 0.25
HELD_OUT = 300
SPLIT_SEED = 1234  # the held-out split is part of the task: changing it changes every reported number
CAREFUL_PREFIX = "Let's"
_CAREFUL = re.compile(r"\s*" + re.escape(CAREFUL_PREFIX))


def all_problems() -> list[tuple[int, int]]:
    return [(a, b) for a in range(10, 100) for b in range(2, 10)]


def _split_pairs(split: str) -> list[tuple[int, int]]:
    pairs = all_problems()
    random.Random(SPLIT_SEED).shuffle(pairs)
    if split == "test":
        return sorted(pairs[:HELD_OUT])
    if split == "train":
        return sorted(pairs[HELD_OUT:])
    raise UserError(f"unknown split {split!r} of the tiny multiplication task: use 'train' or 'test'")


def problems(split: str = "test") -> datasets.Dataset:
    """The split as a Dataset with the benchmark loaders' columns: id, problem ("47*8"), answer ("376")."""
    pairs = _split_pairs(split)
    return datasets.Dataset.from_dict({
        "id": [f"tiny-{a}x{b}" for a, b in pairs],
        "problem": [f"{a}*{b}" for a, b in pairs],
        "answer": [str(a * b) for a, b in pairs],
    })


def prompt(problem: str) -> str:
    return render_prompt("tiny", problem)


def careful_solution(a: int, b: int) -> str:
    units = (a % 10) * b
    tens = (a // 10) * b + units // 10
    return f"{CAREFUL_PREFIX} {a % 10}*{b}+0={units} {a // 10}*{b}+{units // 10}={tens} \\boxed{{{tens}{units % 10}}}"


def quick_guess(a: int, b: int) -> str:
    carry_less = (a // 10) * b * 10 + (a % 10) * b % 10
    return f"\\boxed{{{carry_less}}}"


def is_careful(completion: str) -> bool:
    """True when the completion uses the careful (column multiplication) style."""
    return _CAREFUL.match(completion) is not None


def sample_corpus(n: int, seed: int, eos: str = "", split: str = "all") -> list[tuple[str, str]]:
    """n (prompt, completion) pairs over the split's problems ("all", "train" or "test"), each
    completion ending with `eos`."""
    rng = random.Random(seed)
    pairs = all_problems() if split == "all" else _split_pairs(split)
    corpus = []
    for _ in range(n):
        a, b = rng.choice(pairs)
        solution = careful_solution(a, b) if rng.random() < CAREFUL_SHARE else quick_guess(a, b)
        corpus.append((prompt(f"{a}*{b}"), solution + eos))
    return corpus
