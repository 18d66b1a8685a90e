"""The rehearsal's GRPO server-mode runs: the README's two terminals, in one command.

Starts the vLLM server (`python -m train.vllm_server --model MODEL`, the first terminal) on a free
port, trains against it (`make train-small RECIPE=... ARGS="... --vllm_mode server"`, the
second; with --no-sync, tests.rehearsal.no_sync instead: the control, whose weights never reach
the server), then stops the server. Exits with the trainer's code.

    python -m tests.rehearsal.server_mode [--no-sync] MODEL RECIPE [train.grpo flags]
"""

import os
import shlex
import signal
import subprocess
import sys

from tests.rehearsal.run import make
from train.vllm_cpu import free_port

# The stand-ins' configs say 32K positions; the rehearsal's prompts and completions are short.
# On CPU gpu_memory_utilization is the share of host RAM the server may hold.
SERVER_SIZES = "--max_model_len 2048 --gpu_memory_utilization 0.05 --enforce_eager true"


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    no_sync = "--no-sync" in argv
    model, recipe, *train_flags = [word for word in argv if word != "--no-sync"]
    port = free_port()
    server_argv = [sys.executable, "-m", "train.vllm_server", "--model", model, "--host",
                   "127.0.0.1", "--port", str(port), *SERVER_SIZES.split()]
    train_flags += ["--vllm_mode", "server", "--vllm_server_host", "127.0.0.1",
                    "--vllm_server_port", str(port)]
    trainer_argv = ([sys.executable, "-m", "tests.rehearsal.no_sync", "--config", recipe, *train_flags]
                    if no_sync else make("train-small", f"RECIPE={recipe}",
                                         f"ARGS={shlex.join(train_flags)}"))
    print(f"server:  {shlex.join(server_argv)}\ntrainer: {shlex.join(trainer_argv)}", flush=True)
    server = subprocess.Popen(server_argv, start_new_session=True)  # its own group: see finally
    try:
        code = subprocess.run(trainer_argv, check=False).returncode  # TRL waits for the server
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and the engine process it spawned
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
    sys.exit(code)


if __name__ == "__main__":
    main()
