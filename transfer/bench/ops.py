"""Count the ATen ops one decode step dispatches, views excepted: on a GPU each is one kernel
launch, and at batch <= 16 launches, not bytes, set a small model's step time.

    from transfer.bench.ops import decode_step_ops
    decode_step_ops(engine.models()[1], [[1, 2, 3]] * 8)
"""

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from transfer.decode.cached_model import CachedModel, left_pad


class OpCounter(TorchDispatchMode):
    """Counts the ATen ops run inside it, views excepted (on a GPU: the kernel launches)."""

    def __init__(self):
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += not func.is_view
        return func(*args, **(kwargs or {}))


@torch.inference_mode()
def decode_step_ops(unit: CachedModel, prompt_ids: list[list[int]]) -> int:
    """ATen ops of one decode step of a fresh copy of `unit` (same model, copies and adapters, so
    its counters stay as they are), after a prefill and one warm-up step."""
    probe = CachedModel(unit.name, unit.model, copies=unit.copies, adapters=unit.adapters,
                        cache=unit.cache_mode)
    input_ids, attention_mask = left_pad(prompt_ids, pad_id=0)
    probe.prefill(input_ids, attention_mask, max_new_tokens=2)
    tokens = torch.zeros(len(prompt_ids), dtype=torch.long)
    probe.decode(tokens)
    with OpCounter() as counter:
        probe.decode(tokens)
    return counter.ops
