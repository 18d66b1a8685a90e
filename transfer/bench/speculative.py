"""CPU benchmark of speculative RAST (part of `make bench`): tokens/s against today's RAST engine
and against the large model alone, at several batch sizes, side by side in one run.

Same prompts, seeds and sampling as the rest of transfer.bench.cpu; interleaved rounds, best
kept. Per mode: tokens/s, its ratio to the eager RAST engine and to L alone, the draft acceptance
rate and mean tokens emitted per round, and forward calls per generated token per model unit
(calls x batch / tokens: 1.00 means one forward per token, as the plain loop; a stacked pair is
one unit). Then the same arithmetic as the GPU script's projection (transfer.bench.gpu:
speculative_projection), from this run's own step costs and acceptance: the ratio to L alone
that a round of these forwards and this accept rule could reach with no other overhead, which
says how much of the gap to L alone is the models' step costs and how much the loop.
"""

import time

from transfer.bench.gpu import speculative_projection
from transfer.decode.engine import RastEngine

ALONE, RAST = "L alone", "RAST (today's engine)"
SPEC, SPEC_SPLIT = "speculative RAST", "speculative, pair unstacked"
SHORT = {"large": "L", "small_base": "S", "small_rl": "S_RL", "small_base+rl": "S+S_RL"}


def engines(models: dict, tokenizer) -> dict[str, RastEngine]:
    """The four modes: L alone, RAST, and speculative RAST (adaptive k) drafting with the
    stacked pair (its steps give S_base's logits too) or with S_RL alone (S_base verifies)."""
    large, pair = models["large"], [(models["small_base"], models["small_rl"])]
    return {ALONE: RastEngine(large, tokenizer=tokenizer),
            RAST: RastEngine(large, pair, [1.0], tokenizer=tokenizer),
            SPEC: RastEngine(large, pair, [1.0], tokenizer=tokenizer, speculative=True),
            SPEC_SPLIT: RastEngine(large, pair, [1.0], tokenizer=tokenizer, speculative=True,
                                   stack_small=False)}


def run(engine, prompt_ids, seeds, params, batch) -> int:
    """Decode every prompt once in batches; -> tokens generated."""
    tokens = 0
    for start in range(0, len(prompt_ids), batch):
        rows = engine.decode(prompt_ids[start:start + batch],
                             [[s] for s in seeds[start:start + batch]], params)
        tokens += sum(len(ids) for ids, _ in rows)
    return tokens


def compare(models: dict, tokenizer, prompt_ids, seeds, params, batches, repeats) -> dict:
    """Print the table for each batch size; -> {batch: {mode: tokens/s}}."""
    results = {}
    for batch in batches:
        modes = engines(models, tokenizer)  # fresh counters per batch size
        best, tokens = {}, {}
        for _ in range(repeats):  # interleaved: background load hits every mode alike
            for name, engine in modes.items():
                start = time.perf_counter()
                tokens[name] = run(engine, prompt_ids, seeds, params, batch)
                best[name] = min(best.get(name, float("inf")), time.perf_counter() - start)
        speed = {name: tokens[name] / best[name] for name in modes}
        print(f"\nspeculative RAST at batch {batch} ({len(prompt_ids)} prompts, best of "
              f"{repeats}; adaptive k):")
        print(f"{'mode':30} {'tok/s':>7} {'/RAST':>6} {'/L':>6} {'accept':>7} {'tok/round':>9}  "
              f"forward calls x batch / token per model")
        for name, engine in modes.items():
            spec = engine.speculative
            accept = f"{spec.acceptance_rate():7.3f}" if spec else f"{'':7}"
            per_round = f"{spec.mean_emitted():9.2f}" if spec else f"{'':9}"
            calls = " ".join(f"{SHORT[unit]}:{c['decode_calls'] * batch / (repeats * tokens[name]):.2f}"
                             for unit, c in engine.forward_counts().items())
            print(f"{name:30} {speed[name]:7.0f} {speed[name] / speed[RAST]:6.2f} "
                  f"{speed[name] / speed[ALONE]:6.2f} {accept} {per_round}  {calls}")
        results[batch] = speed
        spec, pair = modes[SPEC].speculative, modes[SPEC].small[0].model
        prompt_len = round(sum(map(len, prompt_ids)) / len(prompt_ids))
        parts = speculative_projection(models["large"], pair, batch, prompt_len, len(tokenizer),
                                       "dynamic", "cpu", spec.acceptance_rate(), steps=50)
        if "error" not in parts:
            print(f"projected from this run's step costs (the round's forwards and accept rule, "
                  f"nothing else): draft step {parts['draft_step_ms']:.2f} ms = "
                  f"{parts['draft_step_ms'] / parts['large_step_ms']:.2f} of L's step "
                  f"{parts['large_step_ms']:.2f} ms, verify of 9 positions "
                  f"{parts['verify_ms'][9]:.2f} ms; best k {parts['best_k']} at acceptance "
                  f"{parts['acceptance']:.3f}: speculative / L alone "
                  f"{parts['projected_over_large_alone']:.2f}")
    return results
