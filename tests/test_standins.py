"""The rehearsal's hub stand-ins (tests/rehearsal/standins.py) look like the hub to the loaders."""

import re
from pathlib import Path

import torch
from huggingface_hub import try_to_load_from_cache
from transformers import AutoModelForCausalLM

from tests.rehearsal.standins import (
    SIZES,
    STOP_SHARE,
    add_to_hub_cache,
    build_model,
    standin_architecture,
    stop_share,
)
from train.models import MODELS


def test_every_hub_id_the_recipes_name_has_a_stand_in():
    named = {match for path in Path("recipes").rglob("*.yaml")
             for match in re.findall(r"(?:Qwen|hkust-nlp)/[\w.-]+", path.read_text())}
    named -= {"hkust-nlp/SimpleRL-Zoo-Data"}  # a data set, read from $RAST_DATA_DIR
    built = {id_ for size in SIZES for id_ in (MODELS[size].base_id, MODELS[size].rl_id)}
    assert named and named <= built, named - built


def test_hub_cache_layout_loads_offline_by_id(tiny_models, tmp_path):
    files = tmp_path / "files"
    files.mkdir()
    for file in Path(tiny_models["small_base"]).iterdir():
        (files / file.name).write_bytes(file.read_bytes())
    snapshot = add_to_hub_cache(tmp_path / "hub", "Qwen/Qwen2.5-0.5B", files)
    assert (tmp_path / "hub/models--Qwen--Qwen2.5-0.5B/refs/main").read_text() == snapshot.name
    assert all(path.is_symlink() for path in snapshot.iterdir())
    cached = try_to_load_from_cache("Qwen/Qwen2.5-0.5B", "config.json", cache_dir=tmp_path / "hub")
    assert cached == str(snapshot / "config.json")
    model = AutoModelForCausalLM.from_pretrained("Qwen/Qwen2.5-0.5B", cache_dir=tmp_path / "hub")
    reference = AutoModelForCausalLM.from_pretrained(tiny_models["small_base"])
    assert torch.equal(model.model.embed_tokens.weight, reference.model.embed_tokens.weight)


def test_stand_ins_have_real_rows_stop_often_and_a_nonzero_rl_delta():
    base = build_model("1.5B", seed=0)
    rl = build_model("1.5B", seed=1, perturb_from=base)
    assert base.config.vocab_size == 151936 and base.dtype == torch.bfloat16
    assert STOP_SHARE / 2 < stop_share(base.float()) < STOP_SHARE * 2
    delta = rl.model.layers[0].mlp.up_proj.weight.float() - base.model.layers[0].mlp.up_proj.weight.float()
    assert (delta != 0).float().mean() > 0.9


def test_stand_ins_have_head_dims_vllms_cpu_attention_takes():
    """The rehearsal's GRPO runs generate with vLLM and `make transfer` decodes the targets with
    it, whose CPU attention rejects head_dim 8/16: 32 for the GRPO sizes, Qwen2.5's 64 and 128
    for the targets."""
    head_dims = {"0.5B": 32, "1.5B": 32, "7B": 64, "14B": 64, "32B": 128}
    for size, head_dim in head_dims.items():
        architecture = standin_architecture(size)
        assert architecture.hidden // architecture.heads == head_dim
        assert architecture.hidden % architecture.heads == 0 and architecture.kv_heads == 1
    assert build_model("0.5B", seed=0).config.num_attention_heads == 1
