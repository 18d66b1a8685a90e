"""The small pair as one model: S_base and S_RL stacked, so one forward computes both.

RAST's two small models differ only in their weights. Stacked, they run as one batch: rows
[0, B) with S_base's weights, rows [B, 2B) with S_RL's. Each linear layer is one batched matmul
over both weight sets (bmm), each norm and embedding one call, and everything that has no
weights (attention, rotary, KV cache, masks, the model's Python) runs once on 2B rows instead of
twice on B. At the batch sizes of decoding a small model's step costs its launches and host
overhead, not its FLOPs, so the pair then costs about one small forward instead of two.

`stack_pair` stacks two full-weight models, `stack_models` any number n of them (several small
pairs of one size: n row blocks, block i with model i's weights). Stacking copies nothing: the
models' parameters become views of the stacked tensors, so each model still works alone, with
the same values. It applies to models of the same class, config and parameter shapes on one
device whose weights sit in linear layers, embeddings and RMS norms (all Qwen2/2.5/3 and Llama
models); `unstackable` says why other models cannot.

`stack_lora` does the same for an RL model that is a LoRA adapter of the base: every row runs
the base weights, and each adapted linear layer adds its low-rank update to the second half only.
One set of weights, as in peft's mixed-adapter batch, but with fixed halves instead of indices
built on the host each call, so the step can be captured as a CUDA graph and compiled.
`lora_unstackable` names what it does not cover (LoRA variants such as DoRA, adapted embeddings,
modules_to_save); those pairs keep peft's mixed batch.
"""

import copy

import torch
from torch import nn

# Config keys that do not change a forward: names, versions, generation ids, use_cache (TRL saves
# RL checkpoints with use_cache=False; the engine always passes use_cache=True), the dtype saved
# (the loaded parameters' dtypes are compared instead).
IGNORED_CONFIG_KEYS = {"_name_or_path", "_commit_hash", "transformers_version", "architectures",
                       "use_cache", "bos_token_id", "eos_token_id", "pad_token_id", "dtype",
                       "torch_dtype"}


def _is_rms_norm(module: nn.Module) -> bool:
    """A norm scaling the last dim by one weight vector, per row (Qwen2RMSNorm, LlamaRMSNorm)."""
    params = dict(module.named_parameters(recurse=False))
    return (type(module).__name__.endswith("RMSNorm") and list(params) == ["weight"]
            and params["weight"].dim() == 1)


def _leaves(model: nn.Module) -> dict[str, nn.Module]:
    """Modules holding parameters of their own, by name."""
    return {name: module for name, module in model.named_modules()
            if next(module.parameters(recurse=False), None) is not None}


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, attribute = name.rpartition(".")
    setattr(model.get_submodule(parent), attribute, module)


def unstackable(*models: nn.Module) -> str | None:
    """Why these models (two or more) cannot be stacked, or None if they can."""
    first = models[0]
    for other in models[1:]:
        reason = _unlike(first, other)
        if reason is not None:
            return reason
    devices = {p.device for m in models for p in m.parameters()}
    if len(devices) != 1 or next(iter(devices)).type == "meta":
        return f"their weights are spread over {sorted(map(str, devices))}"
    for name, module in _leaves(first).items():
        if not (isinstance(module, nn.Linear) or _is_rms_norm(module)
                or (isinstance(module, nn.Embedding) and module.max_norm is None)):
            return (f"{name} is of type {type(module).__name__} (stacking knows linear, embedding "
                    f"and RMS norm layers)")
    return None


def _unlike(base: nn.Module, rl: nn.Module) -> str | None:
    """How two models differ in what a stacked forward needs equal, or None."""
    if type(base) is not type(rl):
        return f"different classes ({type(base).__name__}, {type(rl).__name__})"
    if hasattr(base, "peft_config") or hasattr(rl, "peft_config"):
        return "a peft model (LoRA pairs share weights through their adapters instead)"
    config = [{k: v for k, v in m.config.to_dict().items() if k not in IGNORED_CONFIG_KEYS}
              for m in (base, rl)]
    if config[0] != config[1]:
        keys = sorted(k for k in config[0].keys() | config[1].keys()
                      if config[0].get(k) != config[1].get(k))
        return f"their configs differ in {', '.join(keys)}"
    shapes = [[(n, p.shape, p.dtype) for n, p in m.named_parameters()] for m in (base, rl)]
    if shapes[0] != shapes[1]:
        return "their parameters differ in names, shapes or dtypes"
    return None


class StackedLinear(nn.Module):
    """nn.Linear for a stacked batch of n blocks: weight [n, out, in], bias [n, out]."""

    def __init__(self, weight: nn.Parameter, bias: nn.Parameter | None):
        super().__init__()
        self.weight, self.bias = weight, bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        blocks = x.reshape(self.weight.shape[0], -1, x.shape[-1])
        weight = self.weight.transpose(1, 2)
        out = (torch.bmm(blocks, weight) if self.bias is None
               else torch.baddbmm(self.bias[:, None], blocks, weight))
        return out.view(*x.shape[:-1], -1)


class StackedEmbedding(nn.Module):
    """nn.Embedding for a stacked batch: one lookup in all n tables, weight [n, rows, dim] (block
    i's ids offset by i * rows). A tied StackedLinear head holds the same weight."""

    def __init__(self, weight: nn.Parameter):
        super().__init__()
        self.weight = weight
        offsets = torch.arange(weight.shape[0], device=weight.device)[:, None] * weight.shape[1]
        self.register_buffer("offsets", offsets, persistent=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        stacked_ids = (ids.reshape(self.weight.shape[0], -1) + self.offsets).view(ids.shape)
        return nn.functional.embedding(stacked_ids, self.weight.flatten(0, 1))


class StackedNorm(nn.Module):
    """An RMS norm for a stacked batch: the norm itself, run with its weight as [n, 1, dim]."""

    def __init__(self, norm: nn.Module, weight: nn.Parameter):
        super().__init__()
        self.norm = copy.deepcopy(norm)
        self.norm.weight = nn.Parameter(weight[:, None], requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        blocks = self.norm.weight.shape[0]
        return self.norm(x.reshape(blocks, -1, x.shape[-1])).view(x.shape)


def stack_pair(base: nn.Module, rl: nn.Module) -> nn.Module:
    """One model computing both: batch rows [0, B) with base's weights, [B, 2B) with rl's.

    Call it with twice the batch (the same rows twice); its outputs' first half is base's, the
    second rl's. Raises ValueError if `unstackable` gives a reason.
    """
    return stack_models([base, rl])


@torch.no_grad()
def stack_models(models: list[nn.Module]) -> nn.Module:
    """One model computing all n: batch rows [i B, (i + 1) B) with models[i]'s weights.

    Call it with n times the batch (the same rows n times); block i of its outputs is model i's.
    Raises ValueError if `unstackable` gives a reason.
    """
    if len(models) < 2:
        raise ValueError(f"stack two or more models, got {len(models)}")
    reason = unstackable(*models)
    if reason is not None:
        raise ValueError(f"cannot stack the small models: {reason}")
    # The skeleton: a copy of the first sharing its parameters, whose leaves are swapped below.
    first = models[0]
    stacked = copy.deepcopy(first, memo={id(p): p for p in first.parameters()})
    leaves, weights = [_leaves(m) for m in models], {}  # tied parameters stack once

    def stack(params: list[nn.Parameter]) -> nn.Parameter:
        key = tuple(map(id, params))
        if key not in weights:
            weights[key] = nn.Parameter(torch.stack(params), requires_grad=False)
            for i, param in enumerate(params):
                param.data = weights[key][i]  # no second copy
        return weights[key]

    for name, leaf in _leaves(stacked).items():
        same = [model_leaves[name] for model_leaves in leaves]
        if isinstance(leaf, nn.Linear):
            bias = None if leaf.bias is None else stack([m.bias for m in same])
            new = StackedLinear(stack([m.weight for m in same]), bias)
        elif isinstance(leaf, nn.Embedding):
            new = StackedEmbedding(stack([m.weight for m in same]))
        else:
            new = StackedNorm(leaf, stack([m.weight for m in same]))
        _replace(stacked, name, new)
    return stacked.eval()


class HalfLoRALinear(nn.Module):
    """A LoRA-adapted linear layer for a stacked batch: the base layer on every row, the
    adapter's update (B A x * scaling, as peft computes it in eval mode, without dropout) added
    to the second half."""

    def __init__(self, base_layer: nn.Linear, lora_a: nn.Linear, lora_b: nn.Linear,
                 scaling: float):
        super().__init__()
        self.base_layer, self.lora_a, self.lora_b = base_layer, lora_a, lora_b
        self.scaling = scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base_layer(x)
        half = x.shape[0] // 2
        update = self.lora_b(self.lora_a(x[half:].to(self.lora_a.weight.dtype))) * self.scaling
        result[half:] += update.to(result.dtype)
        return result


def _tuner_layers(model: nn.Module) -> dict[str, nn.Module]:
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils.other import AuxiliaryTrainingWrapper

    return {name: module for name, module in model.named_modules()
            if isinstance(module, BaseTunerLayer | AuxiliaryTrainingWrapper)}


def _holds(module: nn.Module, adapter: str) -> bool:
    """Whether a peft layer has weights of `adapter` (wrappers such as modules_to_save count as
    holding every adapter: none of them is stacked)."""
    from peft.utils.other import AuxiliaryTrainingWrapper

    return isinstance(module, AuxiliaryTrainingWrapper) or any(
        adapter in getattr(module, name, {}) for name in module.adapter_layer_names)


def lora_unstackable(model: nn.Module, adapter: str) -> str | None:
    """Why this peft model's `adapter` cannot run as a stacked pair with its base, or None."""
    from peft.tuners.lora import Linear as LoraLinear

    if not hasattr(model, "peft_config"):
        return "not a peft model"
    for name, module in _tuner_layers(model).items():
        if not _holds(module, adapter):
            continue  # another adapter's layer: the base layer serves both halves
        if not isinstance(module, LoraLinear) or not isinstance(module.base_layer, nn.Linear):
            return (f"{name} is of type {type(module).__name__} (stacking knows LoRA on linear "
                    f"layers)")
        if adapter in module.lora_variant:
            return f"{name} uses a LoRA variant ({type(module.lora_variant[adapter]).__name__})"
        if module.merged:
            return f"{name} has merged adapters"
    return None


@torch.no_grad()
def stack_lora(model: nn.Module, adapter: str) -> nn.Module:
    """One model computing both halves of a stacked batch from a peft LoRA model: rows [0, B)
    without `adapter` (the base), rows [B, 2B) with it. Shares every weight with `model`, which
    is left as it was. Raises ValueError if `lora_unstackable` gives a reason."""
    reason = lora_unstackable(model, adapter)
    if reason is not None:
        raise ValueError(f"cannot stack the LoRA pair: {reason}")
    inner = model.get_base_model()
    stacked = copy.deepcopy(inner, memo={id(p): p for p in inner.parameters()})
    for name, layer in _tuner_layers(stacked).items():
        new = layer.base_layer
        if _holds(layer, adapter):
            new = HalfLoRALinear(layer.base_layer, layer.lora_A[adapter], layer.lora_B[adapter],
                                 layer.scaling[adapter])
        _replace(stacked, name, new)
    return stacked.eval()
