"""transfer.serve: the plan's engine arguments reach vLLM's own server unchanged, bad input is one
line, and the served RAST answers as the HF engine does.

The end-to-end check (a server subprocess on hub-shaped stand-ins, the `openai` client: greedy,
concurrent, cancelled, scored and chat requests) is tests/transfer/serve_check.py, run here as a
subprocess (`slow`: 3.5 min on 2 cores shared with other jobs, most of it the server start) and
by `make rehearse`. The other tests build vLLM's serve parser in-process (no engine starts).
"""

import json
import socket
import subprocess
import sys
from types import SimpleNamespace

import pytest

from tests.transfer.serve_check import RESULT, verdicts
from train.errors import UserError
from transfer import serve
from transfer.decode import vllm_engine
from transfer.decode.decoder import LoadOptions
from transfer.decode.vllm_engine import engine_plan
from transfer.deltas import resolve_delta

SERVE_ARGS = SimpleNamespace(served_model_name="rast-x", port=8123, host="127.0.0.1")


@pytest.mark.slow  # 3.5 min on 2 shared cores: a vLLM server start, the HF reference
def test_the_server_answers_as_the_hf_engine(tmp_path):
    run = subprocess.run([sys.executable, "-m", "tests.transfer.serve_check", str(tmp_path)],
                         check=False, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    failed = {name: detail for name, (ok, detail) in
              verdicts(json.loads((tmp_path / RESULT).read_text())).items() if not ok}
    assert not failed, failed


@pytest.fixture
def plan(tiny_models, monkeypatch):
    monkeypatch.setenv("VLLM_USE_AOT_COMPILE", "0")  # engine_plan's default, kept out of the session
    # the plan only, never started: the tiny models' heads (8, 16 dims) need not suit CPU attention
    monkeypatch.setattr(vllm_engine, "check_cpu_head_dims", lambda configs: None)
    delta = resolve_delta(tiny_models["small_rl"], tiny_models["small_base"], lam=0.5)
    return engine_plan(tiny_models["large"], (delta,), LoadOptions(
        engine="vllm", dtype="float32", max_model_len=96, tensor_parallel_size=1,
        vllm_args={"max_num_seqs": 4, "disable_log_stats": False,
                   "compilation_config": {"mode": 0}}))


def test_the_plans_engine_arguments_reach_vllms_server_unchanged(plan, tmp_path):
    from vllm.engine.arg_utils import AsyncEngineArgs

    namespace, argv = serve.server_args(plan, SERVE_ARGS, tmp_path, [])
    engine_args = AsyncEngineArgs.from_cli_args(namespace)
    for key, value in plan.kwargs.items():
        if key == "compilation_config":
            assert engine_args.compilation_config.mode == 0
        elif value is not None:
            assert getattr(engine_args, key) == value, key
    assert engine_args.hf_overrides["rast"]["lams"] == [0.5]
    assert (namespace.served_model_name, namespace.port, namespace.host) == (
        ["rast-x"], 8123, "127.0.0.1")
    assert namespace.generation_config == str(tmp_path)
    assert "--enforce-eager" in argv and "--enable-prefix-caching" in argv


def test_flags_after_the_separator_win_over_the_plan(plan, tmp_path):
    namespace, _ = serve.server_args(plan, SERVE_ARGS, tmp_path,
                                     ["--max-model-len", "64", "--no-enforce-eager",
                                      "--generation-config", "vllm"])
    assert (namespace.max_model_len, namespace.enforce_eager) == (64, False)
    assert namespace.generation_config == "vllm"


def test_a_vllm_args_key_the_server_lacks_is_one_line(plan):
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = make_arg_parser(FlexibleArgumentParser())
    with pytest.raises(UserError, match="'max_num_sequences' is not a `vllm serve` argument"):
        serve.serve_argv({**plan.kwargs, "max_num_sequences": 4}, parser)


def test_the_generation_config_served_stops_on_the_plans_ids(plan, tmp_path):
    from transformers import GenerationConfig

    serve.write_generation_config(plan.kwargs["model"], [7, 9], tmp_path)
    target = GenerationConfig.from_pretrained(plan.kwargs["model"])
    served = GenerationConfig.from_pretrained(tmp_path)
    assert served.eos_token_id == [7, 9]
    assert served.pad_token_id == target.pad_token_id  # the rest is the target's


@pytest.fixture
def held_port():
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


@pytest.mark.parametrize("flags, message", [
    (["--lam", "-1"], "lambda must be a finite number >= 0, got -1.0"),
    (["--small_base", "{small_base}"], "--small_base given without --small_rl"),
    (["--small_rl", "{small_rl}", "{small_rl}", "--lam", "1", "2", "3"],
     "3 lambdas for 2 small RL model(s)"),
    (["--target", "{missing}"], "{missing} does not exist"),
    (["--port", "{held_port}"], "cannot serve on 127.0.0.1:{held_port}"),
])
def test_bad_input_is_one_line_before_anything_loads(tiny_models, held_port, tmp_path, capsys,
                                                     flags, message):
    fill = dict(tiny_models, held_port=held_port, missing=tmp_path / "no-such-model")
    argv = ["--target", tiny_models["large"], "--host", "127.0.0.1",
            *(flag.format(**fill) for flag in flags)]
    with pytest.raises(SystemExit) as exit_:
        serve.main(argv)
    error = capsys.readouterr().err.strip()
    assert exit_.value.code == 2
    assert error.startswith("error: ") and "\n" not in error
    assert message.format(**fill) in error
