import json
import shutil

import pytest

from train.errors import UserError
from train.pairing import PAIR_FILE, paired_base, read_pair, weights_fingerprint, write_pair


def test_pair_records_the_base_and_its_weights(tiny_models, tmp_path):
    pair = write_pair(str(tmp_path), tiny_models["small_base"], adapter=False)
    assert read_pair(str(tmp_path)) == pair
    assert pair["small_base_sha256"] == weights_fingerprint(tiny_models["small_base"])
    assert paired_base(str(tmp_path)) == pair["small_base"]


def test_a_base_rebuilt_after_rl_is_refused(tiny_models, tmp_path):
    base = tmp_path / "base"
    shutil.copytree(tiny_models["small_base"], base)
    rl = tmp_path / "rl"
    rl.mkdir()
    write_pair(str(rl), str(base))
    shutil.copy(f"{tiny_models['small_rl']}/model.safetensors", base / "model.safetensors")
    with pytest.raises(UserError, match="changed since"):
        paired_base(str(rl))
    with pytest.raises(UserError, match="changed since"):  # also when the base is given by hand
        paired_base(str(rl), str(base))


def test_missing_pair_file_asks_for_small_base(tmp_path):
    assert read_pair(str(tmp_path)) == {}
    with pytest.raises(UserError, match="pass small_base"):
        paired_base(str(tmp_path))
    (tmp_path / PAIR_FILE).write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        read_pair(str(tmp_path))


def test_hub_bases_have_no_fingerprint(tmp_path):
    (tmp_path / PAIR_FILE).write_text(json.dumps({"small_base": "Qwen/Qwen2.5-1.5B",
                                                  "small_base_sha256": None}))
    assert paired_base(str(tmp_path)) == "Qwen/Qwen2.5-1.5B"
    assert weights_fingerprint("Qwen/Qwen2.5-1.5B") is None
