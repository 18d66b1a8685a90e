"""vLLM RAST under tensor parallelism (2 CPU processes) against the HF engine.

Run apart from pytest (test_vllm_engine.py starts it as a subprocess, `make rehearse` runs it):

    python -m tests.transfer.decode.vllm_tp_check DIR   # writes DIR/vllm_tp_check.json

What a GPU run of the 32B/14B recipes (TP 4/2) does, on CPU: every member of the composite split
over 2 ranks. L has 2 query and 2 KV heads (each rank holds one of each); the pair has 2 query
heads and 1 KV head, which vLLM replicates on both ranks (as Qwen2.5-1.5B's 2 KV heads at TP 4).
Each rank is bound to a core of its own (VLLM_CPU_OMP_THREADS_BIND). Float32, the real Qwen2.5
tokenizer, 152064 rows for L and 151936 for the pair. Sampled log-probabilities against a recompute
of RAST (the logits gathered from both ranks), then greedy tokens against the HF engine's for
lambda 1, 2 and 0.5 set in both workers (with_lams: collective_rpc reaches each rank).
"""

import json
import os
import sys
from pathlib import Path

from tests.transfer.decode.vllm_check import PROMPTS, rast_logprobs, save_model, tokens

RESULT = "vllm_tp_check.json"
NEW_TOKENS = 16
TP = 2


def build_models(root: Path) -> dict[str, str]:
    save_model(root, "L", "32B", 0, hidden=256, heads=2, kv_heads=2)
    small = save_model(root, "S", "0.5B", 1, hidden=128, heads=2, kv_heads=1)
    save_model(root, "S_RL", "0.5B", 2, hidden=128, heads=2, kv_heads=1, perturb_from=small)
    return {name: str(root / name) for name in ("L", "S", "S_RL")}


def main(directory: str) -> None:
    from transformers import Qwen2ForCausalLM
    from vllm import SamplingParams as VllmParams

    from transfer.decode.backends import open_decoder
    from transfer.decode.decoder import LoadOptions, SamplingParams
    from transfer.deltas import resolve_delta

    out = Path(directory)
    # vLLM's automatic binding wants a NUMA node per rank: one core each, by hand
    cores = sorted(os.sched_getaffinity(0))
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND",
                          "|".join(str(core) for core in (cores * TP)[:TP]))
    paths = build_models(out / "models")
    one = resolve_delta(paths["S_RL"], paths["S"], lam=1.0)
    greedy = SamplingParams(temperature=0, max_new_tokens=NEW_TOKENS)
    hf = LoadOptions(engine="hf", dtype="float32")
    result = {"hf": {}, "vllm": {}}
    for lam in (1.0, 2.0, 0.5):
        reference = open_decoder(paths["L"], (one.with_lam(lam),), hf)
        result["hf"][str(lam)] = tokens(reference.generate(PROMPTS, greedy, progress=False))
    decoder = open_decoder(paths["L"], (one,), LoadOptions(
        engine="vllm", dtype="float32", max_model_len=128, tensor_parallel_size=TP))
    # sampled first, at the strength the engine was built with (with_lams applies its
    # strengths when its own generate runs, not on the engine's)
    ids = decoder.engine.tokenizer(PROMPTS)["input_ids"]
    outputs = decoder.engine.llm.generate(
        [{"prompt_token_ids": row} for row in ids],
        VllmParams(temperature=1.0, max_tokens=NEW_TOKENS, seed=3, logprobs=0, n=2,
                   ignore_eos=True), use_tqdm=False)
    models = {name: Qwen2ForCausalLM.from_pretrained(paths[name]).eval()
              for name in ("L", "S", "S_RL")}
    errors = []
    for output in outputs:
        for sample in output.outputs:
            drawn = list(sample.token_ids)
            reported = [step[token].logprob for step, token in zip(sample.logprobs, drawn)]
            exact = rast_logprobs(models, [("S", "S_RL", 1.0)], list(output.prompt_token_ids),
                                  drawn)
            errors += [abs(a - b) for a, b in zip(reported, exact)]
    result["sampled"] = {"max_logprob_error": max(errors), "tokens": len(errors)}
    for lam in (1.0, 2.0, 0.5):
        result["vllm"][str(lam)] = tokens(decoder.with_lams([lam]).generate(PROMPTS, greedy,
                                                                            progress=False))
    result["workers"] = decoder.engine.llm.llm_engine.vllm_config.parallel_config.world_size
    (out / RESULT).write_text(json.dumps(result, indent=1))


def verdicts(result: dict) -> dict[str, tuple[bool, str]]:
    out = {}
    for lam, hf in result["hf"].items():
        same = sum(a == b for a, b in zip(hf, result["vllm"][lam]))
        out[f"TP {TP}, lambda {lam}: greedy = HF engine"] = (
            same == len(hf) > 0, f"{same}/{len(hf)} completions token-identical")
    differ = result["hf"]["1.0"] != result["hf"]["2.0"] != result["hf"]["0.5"]
    out["the lambdas decode differently (not vacuous)"] = (differ, f"{differ}")
    sampled = result["sampled"]
    out[f"TP {TP}, T = 1: log-probabilities are RAST's"] = (
        sampled["max_logprob_error"] < 1e-4 and sampled["tokens"] > 100,
        (f"max |vLLM - recomputed RAST| {sampled['max_logprob_error']:.2e} over "
         f"{sampled['tokens']} tokens; {result['workers']} workers"))
    return out


if __name__ == "__main__":
    main(sys.argv[1])
    for name, (ok, detail) in verdicts(json.loads((Path(sys.argv[1]) / RESULT).read_text())
                                       ).items():
        print(f"{'ok ' if ok else 'FAIL'} {name}: {detail}")
