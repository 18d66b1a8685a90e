"""RAST as one vLLM model: the large model and the small pairs under one model class.

    next-token logits = z_L + sum_i lam_i * (z_RL_i - z_base_i), cut to the tokenizer's ids

`RastForCausalLM` is vLLM's own `Qwen2ForCausalLM` for the large model L (its weights keep the
checkpoint's names, so vLLM's loader reads L's files as for L alone), with each distinct small
model as another `Qwen2ForCausalLM` under `rast_small.<letter>` (a, b, ...: vLLM reads a layer's
index as the one integer in its name), read from its own directory through
the loader's `secondary_weights`. `forward` runs every member on the tokens vLLM scheduled and
returns their hidden states side by side; `compute_logits` (the sampled positions only) applies
each member's LM head and combines them with transfer.decode.rast.combine_pairs, the function the
Hugging Face engine calls, so both engines compute one formula. Every member's attention layers
sit in vLLM's KV cache with one block table: paged memory, prefix caching, preemption, n > 1,
chunked prefill, CUDA graphs and tensor parallelism cover the small pair as they cover L. This is
the paper's fork's architecture (a worker per model, shared block tables) without a fork.

The model is described in its config's `rast` entry (transfer.decode.vllm_engine writes it
through vLLM's `hf_overrides`): members (small model directories), pairs (member indices of each
pair's base and RL model), lams (one per pair), shared_vocab (the tokenizer's length: ids past
it are embedding padding and never sampled). No pairs: L alone, with the same cut. `set_lams`
changes the strengths in place (RastWorkerExtension.set_rast_lams reaches it in every worker):
a lambda sweep loads nothing again, and the prefix cache stays valid, since no member's keys
and values depend on lambda.

Imported only inside vLLM processes (transfer.decode.vllm_plugin registers it by name).
"""

import itertools
from collections.abc import Iterable, Sequence

import torch
from torch import nn
from transformers import AutoConfig
from vllm.compilation.backends import set_model_tag
from vllm.model_executor.model_loader.default_loader import DefaultModelLoader
from vllm.model_executor.models.qwen2 import Qwen2ForCausalLM

from transfer.decode.rast import combine_pairs

SMALL = "rast_small"  # the small members' name prefix: rast_small.<letter>.model.layers...


class RastForCausalLM(Qwen2ForCausalLM):
    def __init__(self, *, vllm_config, prefix: str = ""):
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        spec = vllm_config.model_config.hf_config.rast
        self.shared_vocab = int(spec["shared_vocab"])
        self.pairs = [tuple(pair) for pair in spec["pairs"]]
        self.lams = [float(lam) for lam in spec["lams"]]
        members = list(spec["members"])
        self.rast_small = nn.ModuleDict()
        for key, path in zip(member_keys(len(members)), members):
            config = vllm_config.with_hf_config(AutoConfig.from_pretrained(path),
                                                architectures=["Qwen2ForCausalLM"])
            with set_model_tag(f"{SMALL}_{key}"):  # a compiled graph of its own
                self.rast_small[key] = Qwen2ForCausalLM(vllm_config=config,
                                                        prefix=f"{SMALL}.{key}")
        self.secondary_weights = [DefaultModelLoader.Source(path, None, prefix=f"{SMALL}.{key}.")
                                  for key, path in zip(self.rast_small, members)]
        self.members = list(self.rast_small.values())
        self.widths = [self.config.hidden_size, *(m.config.hidden_size for m in self.members)]

    def set_lams(self, lams: Sequence[float]) -> None:
        if len(lams) != len(self.pairs):
            raise ValueError(f"{len(lams)} lambdas for {len(self.pairs)} small pairs")
        self.lams = [float(lam) for lam in lams]

    def forward(self, input_ids, positions, intermediate_tensors=None, inputs_embeds=None):
        if inputs_embeds is not None:
            raise ValueError("RAST decodes token ids: prompt embeddings reach the large model "
                             "only, not the small pair")
        hidden = [super().forward(input_ids, positions, intermediate_tensors)]
        hidden += [member(input_ids, positions) for member in self.members]
        return hidden[0] if len(hidden) == 1 else torch.cat(hidden, dim=-1)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        large, *small = hidden_states.split(self.widths, dim=-1)
        large_logits = super().compute_logits(large)
        if large_logits is None:  # a tensor-parallel rank that does not gather logits
            return None
        small_logits = [member.compute_logits(h) for member, h in zip(self.members, small)]
        return combine_pairs(large_logits,
                             [(small_logits[base], small_logits[rl]) for base, rl in self.pairs],
                             self.lams, shared_vocab=self.shared_vocab)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """L's weights (first, unprefixed), then each member's (prefixed, in member order)."""
        loaded = set()
        for key, group in itertools.groupby(weights, key=_member_of):
            if key is None:
                loaded |= super().load_weights(group)
                continue
            own = f"{SMALL}.{key}."
            names = self.rast_small[key].load_weights(
                (name.removeprefix(own), tensor) for name, tensor in group)
            loaded |= {own + name for name in names}
        return loaded


def member_keys(count: int) -> list[str]:
    if count > 26:
        raise ValueError(f"{count} small models: at most 26")
    return [chr(ord("a") + i) for i in range(count)]


def _member_of(weight: tuple[str, torch.Tensor]) -> str | None:
    name = weight[0]
    return name.split(".", 2)[1] if name.startswith(SMALL + ".") else None


class RastWorkerExtension:
    """Methods vLLM adds to each worker (`worker_extension_cls`), reached by collective_rpc."""

    def set_rast_lams(self, lams: list[float]) -> None:
        self.model_runner.get_model().set_lams(lams)
