"""What train.vllm_cpu's server pieces fix, measured on one vLLM CPU server; prints one JSON line.

    python -m tests.train.vllm_server_check MODEL_DIR DIR   # MODEL_DIR: a tied Qwen2 with a tokenizer

`trl vllm-serve` is started as a user would and fails; `python -m train.vllm_server` serves
MODEL_DIR in float32. Then the weights change (as after an optimizer step) and reach the server
two ways: vLLM's own reload from a checkpoint directory (/collective_rpc `reload_weights`, no
re-pack) and train.vllm_cpu.sync_through_checkpoint (a file + `reload_checkpoint`: reload and
re-pack). After each, the server's prompt log-probs are compared with those of the
transformers model holding the new weights. The server runs float32: there its tied head keeps
the old values without the re-pack (max gap 0.55); in bfloat16 on these CPUs it did not (0.014
either way, bf16 rounding): which kernel packs a weight depends on dtype and CPU
(vllm/model_executor/layers/utils.py, dispatch_cpu_unquantized_gemm).
"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
from transformers import AutoModelForCausalLM

from tests.train.vllm_cpu_check import PROMPT, reference_logprobs

RESULT = "vllm_server_check.json"
SERVER_SIZES = "--max_model_len 256 --gpu_memory_utilization 0.05 --enforce_eager true"


def server_logprobs(client) -> torch.Tensor:
    actual = client.get_sequence_logprobs([PROMPT], [1], top_logprobs=0)["actual_logprobs"][0]
    return torch.tensor([position[0] for position in actual])


def trl_vllm_serve_error(model_dir: str) -> str | None:
    """`trl vllm-serve` as the README's GPU launch types it: its last line if it fails at once."""
    trl = Path(sys.executable).with_name("trl")
    try:
        run = subprocess.run([str(trl), "vllm-serve", "--model", model_dir, "--port", "1"],
                             capture_output=True, text=True, timeout=120, check=False)
    except subprocess.TimeoutExpired:
        return None  # it started serving
    return run.stderr.strip().splitlines()[-1] if run.returncode else None


def main(model_dir: str, directory: str) -> None:
    from trl.generation.vllm_client import VLLMClient

    from train import vllm_cpu

    result = {"trl_vllm_serve_error": trl_vllm_serve_error(model_dir)}
    port = vllm_cpu.free_port()
    server = subprocess.Popen([sys.executable, "-m", "train.vllm_server", "--model", model_dir,
                               "--dtype", "float32", "--host", "127.0.0.1", "--port", str(port),
                               *SERVER_SIZES.split()], start_new_session=True)
    try:
        client = VLLMClient(base_url=f"http://127.0.0.1:{port}", connection_timeout=300)
        vllm_cpu.check_server(client)  # raises unless the server reloads checkpoints
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()

        def gap() -> float:
            return (server_logprobs(client) - reference_logprobs(model)).abs().max().item()

        result["gap_loaded"] = gap()
        torch.manual_seed(0)
        with torch.no_grad():  # an "optimizer step" that moves every tensor, the embedding included
            for param in model.parameters():
                param.add_(0.5 * param.std() * torch.randn_like(param))
        result["gap_stale"] = gap()
        moved = Path(directory) / "moved"
        model.save_pretrained(moved)
        client._post(f"{client.base_url}/collective_rpc",
                     json={"method": "reload_weights", "kwargs": {"weights_path": str(moved)}})
        client.reset_prefix_cache()
        result["gap_reload_only"] = gap()
        generation = SimpleNamespace(
            vllm_client=client, accelerator=SimpleNamespace(is_main_process=True),
            _iter_named_params=lambda: ((n, p.data) for n, p in model.named_parameters()))
        vllm_cpu.sync_through_checkpoint(generation)
        result["gap_synced"] = gap()
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and its engine process
        server.wait(timeout=60)
    (Path(directory) / RESULT).write_text(json.dumps(result))
    print(json.dumps(result), flush=True)


def verdict(result: dict) -> tuple[bool, str]:
    """Each server piece of train.vllm_cpu did its job: (ok, what was measured)."""
    ok = ("PackageNotFoundError" in (result["trl_vllm_serve_error"] or "")  # TRL's launch fails
          and result["gap_loaded"] < 1e-4  # train.vllm_server serves the model
          and result["gap_stale"] > 0.05  # the weights did change
          and result["gap_reload_only"] > 0.05  # the tied head still uses the old embedding
          and result["gap_synced"] < 1e-4)
    return ok, (f"trl vllm-serve: {result['trl_vllm_serve_error']}; max |logprob gap| after "
                f"vLLM's reload alone {result['gap_reload_only']:.3g}, after the checkpoint sync "
                f"{result['gap_synced']:.3g}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
