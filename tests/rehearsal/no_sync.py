"""The rehearsal's negative control: `python -m train.grpo` with TRL's weight sync into vLLM off.

vLLM then keeps generating with the initial weights while the policy trains, and TRL's
`sampling/sampling_logp_difference/mean` (policy vs vLLM log-probs of the sampled tokens) grows:
the check that the synced runs keep it below 0.01 is not vacuous.

    python -m tests.rehearsal.no_sync --config recipes/... [train.grpo flags]
"""

import sys

from train import grpo, vllm_cpu


def skip_sync(self) -> None:
    """In place of VLLMGeneration.sync_weights: nothing reaches vLLM."""


skip_sync.rast_cpu = True  # train.vllm_cpu.prepare installs it as the CPU sync


def main(argv: list[str] | None = None) -> None:
    vllm_cpu.sync_weights = skip_sync
    grpo.main(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    main()
