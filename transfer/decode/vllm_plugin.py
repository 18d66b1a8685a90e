"""vLLM's entry to this project: registers RAST's composite model class in every vLLM process.

vLLM loads the `vllm.general_plugins` entry points (pyproject.toml) in each process it starts
(its engine core, each tensor-parallel worker, Ray actors), so the architecture name that
`transfer.decode.vllm_engine` writes into a model's config resolves everywhere. The class is
registered by name and imported only where a model of that architecture loads: every other
vLLM run of this environment (GRPO's generation) pays one dictionary entry.
"""

ARCHITECTURE = "RastForCausalLM"


def register() -> None:
    from vllm import ModelRegistry

    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ARCHITECTURE, "transfer.decode.vllm_model:RastForCausalLM")
