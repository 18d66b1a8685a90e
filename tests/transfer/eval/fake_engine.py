"""A stand-in decoder (transfer.decode.decoder.Decoder) in evaluation tests: instant,
deterministic, with known accuracies.

Not a test module: tests/transfer/test_evaluate.py imports it, also from a subprocess that it
SIGKILLs mid-run. Each system gets a different accuracy (RAST grows with lam), every sample's
text depends only on (role, lams, key, sample index, seed), and batches follow the real
engine's rule (batch_size // n prompts with all their samples).
"""

import copy
import random
import re
import time

from transfer.decode.decoder import Completion
from transfer.decode.rast import sample_seed

ACCURACY = {"S": 0.1, "S_RL": 0.6, "L": 0.3, "L_RL": 0.9}


class FakeEngine:
    def __init__(self, system, delay: float = 0.0):
        self.system, self.delay, self.deltas = system, delay, system.deltas
        self.generated = 0

    @property
    def lams(self) -> list[float]:
        return [delta.lam for delta in self.deltas] or [0.0]

    def accuracy(self) -> float:
        if self.system.role == "RAST":
            return min(0.95, 0.3 + 0.4 * sum(self.lams))  # the evaluator may sweep lams
        return ACCURACY[self.system.name]

    def with_lams(self, lams):
        if len(lams) != len(self.deltas) or not all(lams):
            raise ValueError(f"with_lams needs a non-zero lambda per pair, got {lams}")
        swept = copy.copy(self)
        swept.deltas = tuple(delta.with_lam(lam) for delta, lam in zip(self.deltas, lams))
        return swept

    def counters(self) -> dict[str, int]:
        return {}

    def generate_batches(self, prompts, params, n=1, seed=0, keys=None, stop_ids=None,
                         batch_size=16, progress=True):
        per_batch = max(1, batch_size // n)
        for start in range(0, len(prompts), per_batch):
            time.sleep(self.delay)
            batch = []
            for prompt, key in zip(prompts[start:start + per_batch], keys[start:start + per_batch]):
                a, b = map(int, re.search(r"(\d+)\*(\d+)", prompt).groups())
                for index in range(n):
                    seed_i = sample_seed(seed, key, index)
                    # what it decodes, not which system loaded it: a swept decoder samples as a fresh one
                    rng = random.Random(f"{self.system.role}|{self.lams}|{seed_i}")
                    good = rng.random() < self.accuracy()
                    text = f"Let's think \\boxed{{{a * b}}}" if good else f"\\boxed{{{a * b + 1}}}"
                    finished = rng.random() < 0.9
                    token_ids = [ord(ch) for ch in text] + [0] * finished  # 0: the stop id
                    batch.append(Completion(key, index, seed_i, token_ids, text, finished))
            self.generated += len(batch)
            yield batch

    def generate(self, prompts, params, n=1, seed=0, keys=None, stop_ids=None, batch_size=16,
                 progress=True):
        return [c for batch in self.generate_batches(prompts, params, n, seed, keys, stop_ids,
                                                     batch_size, progress) for c in batch]
