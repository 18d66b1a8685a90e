"""vLLM RAST (transfer.decode.vllm_engine) against the HF engine, on hub-shaped stand-ins.

Run apart from pytest (test_vllm_engine.py starts it as a subprocess, and `make rehearse` runs
it): vLLM changes the process's torch threads and environment.

    python -m tests.transfer.decode.vllm_check DIR     # DIR: scratch; writes DIR/vllm_check.json

Models, float32, random weights, the real Qwen2.5 tokenizer: L shaped like Qwen2.5-32B's
checkpoint (152064 untied rows, head_dim 128), S like 0.5B's (151936 tied rows, head_dim 64) and
S_RL a perturbed S; a second pair S2/S2_RL (1.5B-shaped rows, head_dim 64, another width); a
LoRA adapter of S. Prompts of different lengths, one longer than vLLM's token budget per step
(chunked prefill), KV memory for a fraction of the batch (preemption), prefix caching on. Each
case decodes with both engines and records what `verdicts` compares: greedy tokens for lambda
0, 1, 2 (a sweep on one engine, and back to 1 with the prefix cache warm), n = 2, two pairs, a
LoRA pair; sampled tokens' log-probabilities against a recompute of the RAST distribution; stop
ids and a stop string; vLLM's preemption count.
"""

import gc
import json
import sys
from dataclasses import replace
from pathlib import Path

import torch

RESULT = "vllm_check.json"
PROMPTS = ["Hi", "Question: what is 12 times 7?\nAnswer:", "1 2 3 4 5",
           "The derivative of x^2 is " + "a long preamble, " * 12 + "so",  # > 32 tokens
           "Question: what is 12 times 7?\nAnswer:", "Solve 3x = 9. "]  # a repeated prompt
NEW_TOKENS = 20
# Small on purpose: chunked prefill and preemption must happen. (Greedy only: on CPU, vLLM 0.32
# fails a seeded sample of a partly prefilled prompt, so vllm_engine turns chunked prefill off
# there; the sampled case runs with those defaults.)
ENGINE_ARGS = {"block_size": 32, "num_gpu_blocks_override": 8, "max_num_batched_tokens": 32,
               "enable_chunked_prefill": True, "max_num_seqs": 8, "disable_log_stats": False}


def save_model(root: Path, name: str, size: str, seed: int, hidden: int, heads: int,
               kv_heads: int = 1, perturb_from=None):
    """A random Qwen2 model with `size`'s hub-shaped rows (tests.rehearsal.standins) at a small
    width, the real Qwen2.5 tokenizer beside it; `perturb_from`: that model's weights moved by
    0.3 of their spread (an "RL" model of that base)."""
    from transformers import Qwen2ForCausalLM

    from tests.rehearsal.standins import shrunk_architecture
    from train.models import qwen2_config
    from train.qwen_tokenizer import ENDOFTEXT_ID, qwen_tokenizer_dir, write_tokenizer

    torch.manual_seed(seed)
    architecture = replace(shrunk_architecture(size), hidden=hidden, heads=heads,
                           kv_heads=kv_heads, ffn=2 * hidden)
    model = Qwen2ForCausalLM(qwen2_config(architecture, bos_token_id=ENDOFTEXT_ID,
                                          eos_token_id=ENDOFTEXT_ID))
    if perturb_from is not None:
        model.load_state_dict(perturb_from.state_dict())
        with torch.no_grad():
            for param in model.parameters():
                param.add_(0.3 * param.std() * torch.randn_like(param))
    model.save_pretrained(root / name)
    write_tokenizer(root / name, qwen_tokenizer_dir() / "tokenizer.json")
    return model


def build_models(root: Path) -> dict[str, str]:
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2ForCausalLM

    save_model(root, "L", "32B", 0, hidden=128, heads=1)
    small = save_model(root, "S", "0.5B", 1, hidden=128, heads=2)
    save_model(root, "S_RL", "0.5B", 2, hidden=128, heads=2, perturb_from=small)
    small2 = save_model(root, "S2", "1.5B", 3, hidden=64, heads=1)
    save_model(root, "S2_RL", "1.5B", 4, hidden=64, heads=1, perturb_from=small2)
    torch.manual_seed(5)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"],
                      init_lora_weights=False)
    get_peft_model(Qwen2ForCausalLM.from_pretrained(root / "S"), lora).save_pretrained(
        root / "S_LoRA")
    return {name: str(root / name) for name in ("L", "S", "S_RL", "S2", "S2_RL", "S_LoRA")}


def tokens(completions) -> list[list[int]]:
    return [c.token_ids for c in completions]


def stops(completions) -> list:
    return [[c.stop, c.text] for c in completions]


def rast_logprobs(models, deltas, prompt: list[int], completion: list[int]) -> list[float]:
    """log p(token) of each completion token under softmax(z_L + sum lam (z_RL - z_base)),
    recomputed from full forwards of the HF models."""
    from transfer.decode.rast import combine_pairs

    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        large = models["L"](ids).logits[0].float()
        pairs = [(models[base](ids).logits[0].float(), models[rl](ids).logits[0].float())
                 for base, rl, _ in deltas]
    combined = combine_pairs(large, pairs, [lam for *_, lam in deltas], shared_vocab=151665)
    positions = range(len(prompt) - 1, len(prompt) + len(completion) - 1)
    logprobs = combined.log_softmax(-1)
    return [logprobs[p, t].item() for p, t in zip(positions, completion)]


def main(directory: str) -> None:
    from vllm import SamplingParams as VllmParams

    from transfer.decode.backends import open_decoder
    from transfer.decode.decoder import LoadOptions, SamplingParams
    from transfer.deltas import resolve_delta

    out = Path(directory)
    paths = build_models(out / "models")
    one = resolve_delta(paths["S_RL"], paths["S"], lam=1.0)
    two = resolve_delta(paths["S2_RL"], paths["S2"], lam=0.5)
    lora = resolve_delta(paths["S_LoRA"], paths["S"], lam=1.0)
    hf = LoadOptions(engine="hf", dtype="float32")
    vllm = LoadOptions(engine="vllm", dtype="float32", max_model_len=128,
                       vllm_args=ENGINE_ARGS)
    vllm_default = LoadOptions(engine="vllm", dtype="float32", max_model_len=128)
    greedy = SamplingParams(temperature=0, max_new_tokens=NEW_TOKENS)
    result = {}

    def both(name, deltas, decoder, params=greedy, n=1, stop_ids=None):
        reference = open_decoder(paths["L"], deltas, hf)
        result[name] = {"hf": reference.generate(PROMPTS, params, n=n, stop_ids=stop_ids,
                                                 progress=False),
                        "vllm": decoder.generate(PROMPTS, params, n=n, stop_ids=stop_ids,
                                                 progress=False)}

    decoder = open_decoder(paths["L"], (one,), vllm)
    both("lambda 1, n = 2", (one,), decoder, n=2)
    both("lambda 2 (with_lams)", (one.with_lam(2.0),), decoder.with_lams([2.0]))
    both("lambda 1 again, prefix cache warm", (one,), decoder.with_lams([1.0]))
    # stops: an id and a string that the greedy completions reach midway
    first = result["lambda 1, n = 2"]["hf"]
    stop_id = first[2].token_ids[len(first[2].token_ids) // 2]
    text = first[6].text
    stop_string = text[len(text) // 2:len(text) // 2 + 2].strip() or text[-2:]
    both("stop id", (one,), decoder, stop_ids=[stop_id])
    both("stop string", (one,), decoder,
         params=replace(greedy, stop_strings=(stop_string,)), stop_ids=[])
    metrics = {metric.name: getattr(metric, "value", None)
               for metric in decoder.engine.llm.get_metrics()}
    result["preemptions"] = metrics.get("vllm:num_preemptions")
    result["prefix cache hits"] = metrics.get("vllm:prefix_cache_hits")
    del decoder
    gc.collect()  # its engine's processes end before the next starts

    both("lambda 0: L alone", (), open_decoder(paths["L"], (), vllm_default))
    both("LoRA pair", (lora,), open_decoder(paths["L"], (lora,), vllm_default))
    decoder = open_decoder(paths["L"], (one, two), vllm_default)
    both("two pairs (1 and 0.5)", (one, two), decoder)
    # sampled: vLLM's log-probabilities of the tokens it drew, against the recomputed RAST ones
    from transformers import Qwen2ForCausalLM

    models = {name: Qwen2ForCausalLM.from_pretrained(paths[name]).eval()
              for name in ("L", "S", "S_RL", "S2", "S2_RL")}
    sampled = decoder.engine.llm.generate(
        [{"prompt_token_ids": ids} for ids in decoder.engine.tokenizer(PROMPTS)["input_ids"]],
        VllmParams(temperature=1.0, max_tokens=NEW_TOKENS, seed=7, logprobs=0, n=1,
                   ignore_eos=True), use_tqdm=False)
    errors = []
    for output in sampled:
        drawn = list(output.outputs[0].token_ids)
        reported = [position[token].logprob
                    for position, token in zip(output.outputs[0].logprobs, drawn)]
        exact = rast_logprobs(models, [("S", "S_RL", 1.0), ("S2", "S2_RL", 0.5)],
                              list(output.prompt_token_ids), drawn)
        errors += [abs(a - b) for a, b in zip(reported, exact)]
    result["sampled log-probabilities"] = {"max_error": max(errors), "tokens": len(errors)}
    (out / RESULT).write_text(json.dumps(
        {name: {engine: {"tokens": tokens(value), "stops": stops(value)}
                for engine, value in case.items()} if isinstance(case, dict) and "hf" in case
         else case for name, case in result.items()}, indent=1))


def verdicts(result: dict) -> dict[str, tuple[bool, str]]:
    """Per case: (passed, what was seen)."""
    found = {}
    for name, case in result.items():
        if isinstance(case, dict) and "hf" in case:
            same = sum(a == b for a, b in zip(case["hf"]["tokens"], case["vllm"]["tokens"]))
            same_stops = case["hf"]["stops"] == case["vllm"]["stops"]
            total = len(case["hf"]["tokens"])
            detail = (f"{same}/{total} completions token-identical, stops and text "
                      f"{'equal' if same_stops else 'DIFFER'}")
            found[name] = (same == total and same_stops and total > 0, detail)
    swept = [result[name]["vllm"]["tokens"] for name in ("lambda 2 (with_lams)",
                                                         "lambda 1 again, prefix cache warm",
                                                         "lambda 0: L alone")]
    found["lambda matters"] = (swept[0] != swept[1] != swept[2],
                               "lambda 2, 1 and 0 decode different tokens" if swept[0] != swept[1]
                               != swept[2] else "two lambdas decode the same tokens")
    sampled = result["sampled log-probabilities"]
    found["sampled log-probabilities"] = (
        sampled["max_error"] < 1e-4 and sampled["tokens"] > 50,
        f"max |vLLM - recomputed RAST| {sampled['max_error']:.2e} over {sampled['tokens']} tokens")
    preempted, hits = result["preemptions"] or 0, result["prefix cache hits"] or 0
    found["preemption"] = (preempted > 0, f"vllm:num_preemptions = {preempted}")
    found["prefix caching"] = (hits > 0, f"vllm:prefix_cache_hits = {hits} tokens")
    stopped = [s for case in ("stop id", "stop string") for s, _ in result[case]["hf"]["stops"]]
    found["stops reached"] = (all(any(isinstance(s, kind) for s in stopped) for kind in (int, str)),
                              f"stops seen: {sorted({str(s) for s in stopped if s is not None})}")
    return found


if __name__ == "__main__":
    main(sys.argv[1])
