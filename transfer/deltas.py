"""One RL delta as a value: a resolved small pair and its strength, lam * (z_RL - z_base).

Every entry point turns what the user wrote into `Delta`s here, once, at its edge; everything
below (the engine, `System`, `Sample`, analysis) carries `deltas: tuple[Delta, ...]`, empty for a
model decoded alone. What a list of lambdas means depends on the entry point, and only there:

- a transfer recipe's `lam: [0.5, 1, 2]` is a SWEEP: one RAST system per value, over one pair;
- a transfer recipe's `combinations` entry, `1*A + 0.5*(B_RL - B)`, is ONE system over several
  pairs whose deltas add up (`parse_combination`);
- `transfer.generate --small_rl A B --lam 1 0.5` gives ONE lambda PER PAIR (a single value
  applies to every pair);
- analysis's `lam` is the strength of the first pair's RAST distribution.

    python -c "from transfer.deltas import resolve_delta; print(resolve_delta('outputs/tiny-s-grpo', lam=0.5))"
"""

import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from train.errors import UserError
from train.pairing import Pair, resolve_pair


def check_lam(lam: float) -> float:
    """One rule for every entry point: lambda is a finite number >= 0 (0 = the large model
    alone). A negative lambda would push L away from what RL taught S: refused, not guessed."""
    if not isinstance(lam, int | float) or isinstance(lam, bool):
        raise UserError(f"lambda must be a number, got {lam!r}")
    if not math.isfinite(lam) or lam < 0:
        raise UserError(f"lambda must be a finite number >= 0, got {lam}")
    return float(lam)


@dataclass(frozen=True)
class Delta:
    """lam * (z_{pair.rl} - z_{pair.base}): a small pair resolved once (train.pairing) and its
    strength. Compared by value, so two systems over the same pair at the same lam are equal."""

    pair: Pair
    lam: float

    def __post_init__(self):
        object.__setattr__(self, "lam", check_lam(self.lam))

    @property
    def label(self) -> str:
        """How it is spelled in a system's name: "0.5*tiny-s-grpo" (the RL directory's name)."""
        return f"{self.lam:g}*{Path(self.pair.rl).name}"

    def with_lam(self, lam: float) -> "Delta":
        return Delta(self.pair, lam)

    def to_dict(self) -> dict:
        """As samples.jsonl and systems.json record it: the pair's fields and lam."""
        return {**asdict(self.pair), "lam": self.lam}

    @classmethod
    def from_dict(cls, row: dict) -> "Delta":
        return cls(Pair(row["base"], row["rl"], row["lora"], row["rl_tokenizer"]), row["lam"])


def resolve_delta(small_rl: str, small_base: str | None = None, lam: float = 1.0) -> Delta:
    """The Delta of an RL checkpoint (its base from rast_pair.json unless given) at lam."""
    lam = check_lam(lam)  # before resolving: a bad number is the cheaper thing to report
    return Delta(resolve_pair(small_rl, small_base), lam)


def add_pair_arguments(parser, lam_note: str = "") -> None:
    """The command-line flags deltas_per_pair reads (--target, --small_base, --small_rl, --lam),
    one spelling for every command that decodes pairs (transfer.generate, transfer.serve)."""
    parser.add_argument("--target", "--large", required=True,
                        help="large base model L: registry name, directory or hub id")
    parser.add_argument("--small_base", "--small-base", nargs="+",
                        help="small model before RL (default: from rast_pair.json); one per "
                             "--small_rl")
    parser.add_argument("--small_rl", "--small-rl", nargs="+",
                        help="RL checkpoint or LoRA adapter directory of small_base; several: "
                             "their deltas add up, z_L + sum_i lam_i (z_RL_i - z_base_i)")
    parser.add_argument("--lam", type=float, nargs="+", default=[1.0],
                        help="RL delta weight, one per --small_rl (a single value applies to "
                             "every pair); 0 = large alone" + lam_note)


def deltas_from_arguments(args, alone: str) -> tuple[Delta, ...]:
    """The Deltas add_pair_arguments' flags name, checked: every lambda, and --small_base only
    with --small_rl (`alone`: what the command does with neither, for the message)."""
    for lam in args.lam:
        check_lam(lam)
    if args.small_base and not args.small_rl:
        raise UserError(f"--small_base given without --small_rl: pass both, or neither to "
                        f"{alone}")
    return deltas_per_pair(args.small_rl or [], args.small_base, args.lam)


def deltas_per_pair(small_rl: list[str], small_base: list[str | None] | None,
                    lams: list[float]) -> tuple[Delta, ...]:
    """One Delta per RL model, lams[i] for pair i (a single lam applies to every pair): the
    meaning of `transfer.generate --small_rl A B --lam 1 0.5`."""
    small_base = list(small_base or [None] * len(small_rl))
    if len(small_base) != len(small_rl):
        raise UserError(f"{len(small_base)} small_base for {len(small_rl)} small_rl: give one "
                        f"base per RL model, or none to read each one's rast_pair.json")
    if len(lams) == 1:
        lams = lams * len(small_rl)
    if len(lams) != len(small_rl):
        raise UserError(f"{len(lams)} lambdas for {len(small_rl)} small RL model(s): give one "
                        f"per --small_rl, or one for all")
    return tuple(resolve_delta(rl, base, lam) for rl, base, lam in zip(small_rl, small_base, lams))


# LAM*RL or LAM*(RL - BASE); names hold no spaces, so " - " and " + " separate
COMBINATION_TERM = re.compile(r"(?P<lam>[^*()]+)\*\s*(?:\((?P<rl>[^\s()*]+)\s+-\s+"
                              r"(?P<base>[^\s()*]+)\)|(?P<alone>[^\s()*]+))")


def parse_combination(text: str) -> list[tuple[str | None, str, float]]:
    """(small_base or None, small_rl, lam) per term of a combination, "lam*RL + lam*(RL - BASE)",
    checked but not resolved (a recipe is checked before any model directory is read).

    >>> parse_combination("1*outputs/tiny-s-grpo + 0.5*(hub/rl-0.5B - hub/base-0.5B)")
    [(None, 'outputs/tiny-s-grpo', 1.0), ('hub/base-0.5B', 'hub/rl-0.5B', 0.5)]
    """
    terms = []
    for term in text.split(" + "):
        match = COMBINATION_TERM.fullmatch(term.strip())
        try:
            lam = float(match["lam"]) if match else math.nan
        except ValueError:
            lam = math.nan
        if not math.isfinite(lam):
            raise UserError(f"combination {text!r}: cannot read {term.strip()!r}; write each term "
                            f"as LAM*RL or LAM*(RL - BASE), terms joined by ' + '")
        if lam < 0:
            raise UserError(f"combination {text!r}: lambda must be >= 0, got {lam:g}")
        terms.append((match["base"], match["rl"] or match["alone"], lam))
    return terms


def resolve_combination(text: str) -> tuple[Delta, ...]:
    return tuple(resolve_delta(rl, base, lam) for base, rl, lam in parse_combination(text))
