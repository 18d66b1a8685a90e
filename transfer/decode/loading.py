"""Loading a RAST decoder's models, and what can be checked before any weights load.

`check_models` (tokenizers of one family, an embedding row per token) runs for every system
before the first is decoded; `load_pairs` loads small pairs for the engine and for analysis
alike; `device_and_dtype` / `check_device` say where models go.
"""

from collections.abc import Sequence

import torch
from peft import PeftModel

from train.errors import UserError
from train.models import embedding_rows, load_model, load_tokenizer
from train.pairing import Pair
from transfer.decode.rast import check_tokenizers_compatible

RL_ADAPTER = "rl"  # name a LoRA RL adapter is loaded under (the first pair's; then rl1, rl2...)


def load_pairs(pairs: Sequence[Pair], dtype, device_map, loaded: dict | None = None,
               shared_lora: bool = True) -> list[tuple[object, object]]:
    """(base model, RL model) per pair, in eval mode. A model several pairs name is loaded once
    (`loaded`: name -> model, shared with the caller's other loads). A LoRA RL adapter goes into
    a base copy of its own; with shared_lora (the engine's shared-weight mode) the pair is (that
    peft model, the adapter's NAME); without, (the base, that peft model), two models to run
    apart as analysis does."""
    loaded = {} if loaded is None else loaded

    def load(name: str):
        if name not in loaded:
            loaded[name] = load_model(name, dtype=dtype, device_map=device_map).eval()
        return loaded[name]

    models = []
    for i, pair in enumerate(pairs):
        if pair.lora:
            adapter = RL_ADAPTER if i == 0 else f"{RL_ADAPTER}{i}"
            copy = load_model(pair.base, dtype=dtype, device_map=device_map)
            adapted = PeftModel.from_pretrained(copy, pair.rl, adapter_name=adapter).eval()
            models.append((adapted, adapter) if shared_lora else (load(pair.base), adapted))
        else:
            models.append((load(pair.base), load(pair.rl)))
    return models


def check_embedding_rows(name: str, rows: int | None, tokenizer_length: int) -> None:
    """Every id the tokenizer can produce needs a row of the model's embedding (and logits)."""
    if rows is not None and rows < tokenizer_length:
        raise UserError(f"{name} has {rows} embedding rows, fewer than the {tokenizer_length} "
                        f"tokens of the tokenizer it is decoded with: it belongs to another "
                        f"tokenizer; use models of one family")


def check_models(target: str, pairs: list[Pair] = ()) -> tuple[object, list[int]]:
    """What can be checked of a RAST triple (or of L and several small pairs) without loading
    weights: every pair shares the target's tokenizer and every embedding has a row per token.
    Returns the target's tokenizer and the eos/pad ids only the pairs' tokenizers declare
    (check_pair_tokenizers). Evaluation runs it for every system before decoding the first one."""
    tokenizer = load_tokenizer(target)
    check_embedding_rows(target, embedding_rows(target), len(tokenizer))
    extra_stop_ids = set()
    for pair in pairs:
        extra_stop_ids.update(check_pair_tokenizers(tokenizer, target, pair))
        for name in (pair.base, pair.rl):
            check_embedding_rows(name, embedding_rows(name), len(tokenizer))
    return tokenizer, sorted(extra_stop_ids)


def check_pair_tokenizers(tokenizer, target: str, pair: Pair) -> list[int]:
    """Refuse a small pair whose tokenizers map a token to another id than the target's (RAST
    adds logits by id); return the eos/pad ids only the pair's tokenizers declare."""
    extra_stop_ids = check_tokenizers_compatible(tokenizer, load_tokenizer(pair.base), target,
                                                 pair.base)
    if pair.rl_tokenizer:
        extra_stop_ids += check_tokenizers_compatible(tokenizer, load_tokenizer(pair.rl), target,
                                                      pair.rl)
    return sorted(set(extra_stop_ids))


def device_and_dtype(device=None, dtype=None, small_device=None):
    """-> (large model device_map, small pair device_map, dtype): bf16 on GPU, fp32 on CPU."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    spread = device == "auto" or isinstance(device, dict)  # accelerate places the large model
    on_gpu = torch.cuda.is_available() if spread else str(device).startswith("cuda")
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    dtype = dtype or (torch.bfloat16 if on_gpu else torch.float32)
    if small_device is None:
        small_device = f"cuda:{torch.cuda.device_count() - 1}" if spread and on_gpu else (
            "cpu" if spread else device)
    return device, small_device, dtype


def check_device(name: str, device) -> None:
    """Refuse a device this torch cannot use, in one line, before any model loads."""
    if device is None or device == "auto" or isinstance(device, dict):
        return
    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise UserError(f"{name} {device!r} is not a device: use cpu, cuda, cuda:<index> or "
                        f"auto") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"{name} {device!r}: this torch sees no CUDA GPU (torch "
                        f"{torch.__version__}); use cpu, or a CUDA build of torch on a GPU machine")
    if parsed.type == "cuda" and (parsed.index or 0) >= torch.cuda.device_count():
        raise UserError(f"{name} {device!r}: only {torch.cuda.device_count()} CUDA device(s) "
                        f"are visible")
