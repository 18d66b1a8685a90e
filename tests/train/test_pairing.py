import json
import shutil

import pytest

from train.errors import UserError
from train.pairing import PAIR_FILE, read_pair, resolve_pair, weights_fingerprint, write_pair


def rl_output(path):
    """A stand-in for a train.grpo output: a directory with config.json, which
    train.models.resolve_model requires of a model directory."""
    path.mkdir(exist_ok=True)
    (path / "config.json").write_text("{}")
    return str(path)


def test_pair_records_the_base_and_its_weights(tiny_models, tmp_path):
    rl_output(tmp_path)
    pair = write_pair(str(tmp_path), tiny_models["small_base"], adapter=False)
    assert read_pair(str(tmp_path)) == pair
    assert pair["small_base_sha256"] == weights_fingerprint(tiny_models["small_base"])
    resolved = resolve_pair(str(tmp_path))
    assert (resolved.base, resolved.rl) == (pair["small_base"], str(tmp_path))
    assert not resolved.lora and not resolved.rl_tokenizer  # a bare config.json: neither
    (tmp_path / "adapter_config.json").write_text("{}")  # the one sign of a LoRA adapter
    assert resolve_pair(str(tmp_path)).lora


def test_a_base_rebuilt_after_rl_is_refused(tiny_models, tmp_path):
    base = tmp_path / "base"
    shutil.copytree(tiny_models["small_base"], base)
    rl = tmp_path / "rl"
    rl_output(rl)
    write_pair(str(rl), str(base))
    shutil.copy(f"{tiny_models['small_rl']}/model.safetensors", base / "model.safetensors")
    with pytest.raises(UserError, match="changed since"):
        resolve_pair(str(rl))
    with pytest.raises(UserError, match="changed since"):  # also when the base is given by hand
        resolve_pair(str(rl), str(base))


def test_a_given_base_must_be_the_recorded_one(tiny_models, tmp_path):
    rl_output(tmp_path)
    write_pair(str(tmp_path), tiny_models["small_base"])
    assert resolve_pair(str(tmp_path), tiny_models["small_base"]).base == tiny_models["small_base"]
    with pytest.raises(UserError, match="is not the model .* was trained from"):
        resolve_pair(str(tmp_path), tiny_models["large"])


def test_missing_pair_file_asks_for_small_base(tmp_path):
    rl_output(tmp_path)
    assert read_pair(str(tmp_path)) == {}
    with pytest.raises(UserError, match="pass small_base"):
        resolve_pair(str(tmp_path))
    (tmp_path / PAIR_FILE).write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        read_pair(str(tmp_path))


def test_hub_bases_have_no_fingerprint(tmp_path):
    rl_output(tmp_path)
    (tmp_path / PAIR_FILE).write_text(json.dumps({"small_base": "Qwen/Qwen2.5-1.5B",
                                                  "small_base_sha256": None}))
    pair = resolve_pair(str(tmp_path))
    assert pair.base == "Qwen/Qwen2.5-1.5B" and not pair.lora
    assert weights_fingerprint("Qwen/Qwen2.5-1.5B") is None
