"""What train.vllm_cpu fixes, measured on one vLLM CPU engine; prints one JSON line.

Run apart from pytest (tests/train/test_vllm_cpu.py starts it as a subprocess): vLLM in-process
sets VLLM_ENABLE_V1_MULTIPROCESSING=0 and replaces torch.set_num_threads with a no-op.

    python -m tests.train.vllm_cpu_check DIR     # DIR: scratch directory for the model

A tied Qwen2 model (head_dim 32, the smallest vLLM's CPU attention takes) is loaded into a vLLM
engine built the way TRL 1.16 colocate builds it; then the weights change (as after an optimizer
step) and are synced three ways: TRL's own per-tensor load_weights, vLLM's reload alone, and
reload + re-pack (train.vllm_cpu.sync_weights). After each, vLLM's prompt log-probs are compared
with those of the transformers model holding the new weights.
"""

import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

RESULT = "vllm_cpu_check.json"
PROMPT = [5, 17, 301, 42, 7, 99, 250, 3, 64, 128, 11, 900]


def tied_model(seed: int) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
                         tie_word_embeddings=True, eos_token_id=0, bos_token_id=0)
    return Qwen2ForCausalLM(config).eval()


def reference_logprobs(model) -> torch.Tensor:
    ids = torch.tensor([PROMPT])
    with torch.no_grad():
        logprobs = model(ids).logits.float().log_softmax(-1)[0, :-1]
    return logprobs.gather(-1, ids[0, 1:, None])[:, 0]


def vllm_logprobs(llm) -> torch.Tensor:
    from vllm import SamplingParams

    out = llm.generate([{"prompt_token_ids": PROMPT}],
                       SamplingParams(max_tokens=1, prompt_logprobs=0), use_tqdm=False)[0]
    return torch.tensor([next(iter(position.values())).logprob
                         for position in out.prompt_logprobs[1:]])


def main(directory: str) -> None:
    # what TRL sets before LLM(...); prepare() picks a free MASTER_PORT
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1")
    from trl.generation import vllm_generation

    from train import vllm_cpu

    trl_sync = vllm_generation.VLLMGeneration.sync_weights
    model = tied_model(seed=0)
    model.save_pretrained(directory)
    args = SimpleNamespace(use_vllm=True, vllm_mode="colocate", vllm_enable_sleep_mode=False)
    result = {"patched": vllm_cpu.prepare(args)}
    # the arguments of TRL 1.16's colocate LLM(...) that matter here; enforce_eager and the KV
    # cache's size are prepare's
    llm = vllm_generation.LLM(model=directory, skip_tokenizer_init=True, dtype="float32",
                              gpu_memory_utilization=0.05, max_model_len=64, max_num_seqs=4, seed=0,
                              distributed_executor_backend="external_launcher",
                              logprobs_mode="processed_logprobs")
    result["enforce_eager"] = llm.llm_engine.vllm_config.model_config.enforce_eager
    result["kv_cache_bytes"] = llm.llm_engine.vllm_config.cache_config.kv_cache_memory_bytes

    def gap() -> float:
        return (vllm_logprobs(llm) - reference_logprobs(model)).abs().max().item()

    result["gap_loaded"] = gap()
    with torch.no_grad():  # an "optimizer step" that moves every tensor, the embedding included
        for param in model.parameters():
            param.add_(0.5 * param.std() * torch.randn_like(param))
    result["gap_stale"] = gap()
    generation = SimpleNamespace(llm=llm, mode="colocate", enable_sleep_mode=False, accelerator=None,
                                 _iter_named_params=lambda: ((n, p.data) for n, p in model.named_parameters()))
    try:
        trl_sync(generation)
        result["trl_sync_error"] = None
    except Exception as err:  # noqa: BLE001 -- the error is the measurement
        result["trl_sync_error"] = f"{type(err).__name__}: {err}"
    runner = llm.llm_engine.model_executor.driver_worker.model_runner
    runner.reload_weights(weights_iterator=generation._iter_named_params())
    llm.reset_prefix_cache()
    result["gap_reload_only"] = gap()
    vllm_cpu.sync_weights(generation)
    result["gap_synced"] = gap()
    (Path(directory) / RESULT).write_text(json.dumps(result))
    print(json.dumps(result), flush=True)


def verdict(result: dict) -> tuple[bool, str]:
    """Each piece of train.vllm_cpu did its job: (ok, what was measured)."""
    from train.vllm_cpu import CPU_KV_CACHE_BYTES

    ok = (result["patched"] and result["enforce_eager"]
          and result["kv_cache_bytes"] == CPU_KV_CACHE_BYTES
          and result["gap_loaded"] < 1e-4
          and result["gap_stale"] > 0.05  # the weights did change
          and "weight_loader" in (result["trl_sync_error"] or "")  # TRL's own sync fails
          and result["gap_reload_only"] > 0.05  # the tied head still uses the old embedding
          and result["gap_synced"] < 1e-4)
    return ok, (f"TRL's sync: {result['trl_sync_error']}; max |logprob gap| after reload alone "
                f"{result['gap_reload_only']:.3g}, after reload + re-pack {result['gap_synced']:.3g}; "
                f"enforce_eager {result['enforce_eager']}; KV cache {result['kv_cache_bytes']} bytes")


if __name__ == "__main__":
    main(sys.argv[1])
