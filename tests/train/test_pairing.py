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


def test_the_weights_fingerprint_is_hashed_once_per_path_and_follows_a_rewrite(tmp_path,
                                                                                monkeypatch):
    """Every system and every check resolves its pair (issue 22): a 32B base's 64 GB must be
    read once per process, yet a rewritten weight file must give its new fingerprint."""
    import hashlib
    import os

    from train import pairing

    model = tmp_path / "base"
    rl_output(model)
    weights = model / "model.safetensors"
    weights.write_bytes(b"first weights")
    digests, real_sha256 = [], hashlib.sha256

    def counting_sha256(*args):
        digests.append(args)
        return real_sha256(*args)

    monkeypatch.setattr(pairing.hashlib, "sha256", counting_sha256)
    pairing._sha256.cache_clear()
    first = weights_fingerprint(str(model))
    assert first == real_sha256(b"first weights").hexdigest()
    rl = tmp_path / "rl"
    rl_output(rl)
    write_pair(str(rl), str(model))  # records the fingerprint: from the cache
    for _ in range(3):
        assert weights_fingerprint(str(model)) == first
        resolve_pair(str(rl))  # checks the base's weights against rast_pair.json
    assert len(digests) == 1  # hashed once for all of them

    stat = weights.stat()
    weights.write_bytes(b"other weights")  # same size: only the mtime tells them apart
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert weights_fingerprint(str(model)) == real_sha256(b"other weights").hexdigest()
    assert len(digests) == 2
    with pytest.raises(UserError, match="changed since"):
        resolve_pair(str(rl))


def test_a_recorded_base_that_is_gone_is_named_with_the_file_that_records_it(tmp_path):
    rl = tmp_path / "rl"
    rl.mkdir()
    (rl / "config.json").write_text("{}")
    (rl / PAIR_FILE).write_text(json.dumps({"small_base": str(tmp_path / "gone" / "base")}))
    with pytest.raises(UserError, match=rf"{rl / PAIR_FILE} names small_base "
                                        rf"'{tmp_path / 'gone' / 'base'}', which cannot be loaded"):
        resolve_pair(str(rl))
