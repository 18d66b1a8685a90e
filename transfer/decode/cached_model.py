"""One model of the decode loop with its own KV cache: `CachedModel`, and left padding.

The RAST loop (transfer.decode.engine) and speculation (transfer.decode.speculative) drive one
`CachedModel` per model unit (the large model; the small pair, stacked or LoRA): prefill once per
prompt, one token (or a verify window) per step, finished rows dropped, drafts rolled back.
"""

import torch
from transformers import DynamicCache

from train.errors import UserError
from transfer.decode.static_cache import (
    BufferPool,
    StaticDecoder,
    compiled_decode_step,
    compiled_verify_step,
    decode_step,
    supports_static,
    verify_step,
)

POOL_BUDGET_BYTES = 2 * 2**30  # KV bytes of idle static buffers (and graphs) kept per model


class CachedModel:
    """One model of the decode loop: its KV cache, attention mask and next positions, plus counters.

    copies > 1: every call runs the batch that many times in ONE forward and returns one logits
    tensor per copy. For a stacked pair (transfer.decode.stacked_pair) the copies meet different
    weights; with `adapters` = ("__base__", "rl") the model is a peft LoRA model and copy i runs
    adapter i (peft mixed-adapter batch, which needs eval mode).

    cache: "dynamic" (a DynamicCache that grows and drops finished rows at once), "static" (fixed
    buffers after prefill, transfer.decode.static_cache) or "cuda-graphs" (static, each step replayed as
    a CUDA graph); "auto" takes cuda-graphs for a model on one GPU, else dynamic (static when
    compiling). compile: torch.compile the fixed-shape step (fuses kernels; costs tens of seconds
    once per model and process, so it pays on long runs). overlap: with cuda-graphs, replay on a
    stream of this model's own, so RastEngine can run the three models' steps concurrently.
    """

    def __init__(self, name: str, model, copies: int = 1, adapters: tuple[str, ...] | None = None,
                 cache: str = "auto", compile: bool = False, overlap: bool = True):
        if adapters is not None and len(adapters) != copies:
            raise ValueError(f"{len(adapters)} adapters for {copies} copies")
        self.name, self.model = name, model.eval()
        self.adapters, self.copies = adapters, copies
        self.input_device = model.get_input_embeddings().weight.device
        self.cache_mode = _cache_mode(name, model, adapters, cache, compile)
        self.static, self.pool = None, BufferPool(POOL_BUDGET_BYTES)
        self.step_fn = compiled_decode_step() if compile else decode_step
        self.verify_fn = compiled_verify_step() if compile else verify_step
        self.stream = (torch.cuda.Stream(self.input_device)
                       if overlap and self.cache_mode == "cuda-graphs" else None)
        self.prefill_calls = self.prefill_rows = self.decode_calls = self.decode_rows = 0

    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                max_new_tokens: int) -> list[torch.Tensor]:
        """Start a fresh cache with left-padded prompts; last-position logits per copy."""
        if self.static is not None:
            self.static.close()  # its buffers (and CUDA graph) wait in the pool for reuse
        self.cache, self.static = DynamicCache(config=self.model.config), None
        self.max_columns = input_ids.shape[1] + max_new_tokens
        self.batch = input_ids.shape[0]  # rows of the caller's batch (each run `copies` times)
        self.attention_mask = self._tile(attention_mask.to(self.input_device))
        # Left padding: a row's positions count its real tokens only, as generate() does;
        # without this every padded row would be shifted and differ from decoding it alone.
        positions = (self.attention_mask.cumsum(-1) - 1).clamp(min=0)
        self.next_position = positions[:, -1:] + 1
        self.prefill_calls += 1
        input_ids = self._tile(input_ids.to(self.input_device))
        self.prefill_rows += input_ids.shape[0]
        return self._forward(input_ids, positions)

    def decode(self, token_ids: torch.Tensor) -> list[torch.Tensor]:
        """Feed one new token per row [rows]; next-token logits per copy."""
        self.decode_calls += 1
        tokens = self._tile(token_ids.to(self.input_device))
        if self.cache_mode != "dynamic":
            self.decode_rows += self._fixed_buffers().rows
            return list(self.static.step(tokens).chunk(self.copies))
        tokens = tokens[:, None]
        self.attention_mask = torch.cat([self.attention_mask, torch.ones_like(tokens)], dim=-1)
        positions, self.next_position = self.next_position, self.next_position + 1
        self.decode_rows += tokens.shape[0]
        return self._forward(tokens, positions)

    def verify(self, token_ids: torch.Tensor) -> list[torch.Tensor]:
        """Feed `width` tokens per row [rows, width] in ONE forward (speculative decoding's
        verify pass); logits at every position [rows, width, vocab] per copy. Counted as a
        decode call computing rows x width rows."""
        self.decode_calls += 1
        width = token_ids.shape[1]
        tokens = self._tile(token_ids.to(self.input_device))
        if self.cache_mode != "dynamic":
            self.decode_rows += self._fixed_buffers().rows * width
            return list(self.static.verify(tokens).chunk(self.copies))
        self.attention_mask = torch.cat(
            [self.attention_mask, self.attention_mask.new_ones(tokens.shape)], dim=-1)
        offsets = torch.arange(width, device=self.input_device)
        positions, self.next_position = self.next_position + offsets, self.next_position + width
        self.decode_rows += tokens.numel()
        return self._forward(tokens, positions, keep=width)

    def rollback(self, fed: int, keep: torch.Tensor) -> None:
        """Of the last `fed` tokens fed, row i keeps its first keep[i] [rows] (speculative
        decoding's accepted drafts); the rest of each row is masked out and its next position
        moves back, and columns no row keeps are cut from the cache."""
        keep = self._tile(keep.to(self.input_device))
        if self.static is not None:
            self.static.rollback(fed, keep)
            return
        dropped = torch.arange(fed, device=self.input_device)[None, :] >= keep[:, None]
        self.attention_mask[:, -fed:].masked_fill_(dropped, 0)
        self.next_position = self.next_position - (fed - keep)[:, None]
        unused = fed - int(keep.max())
        if unused > 0:
            self.cache.crop(-unused)
            self.attention_mask = self.attention_mask[:, :-unused]

    def _fixed_buffers(self) -> StaticDecoder:
        """The static decoder; the first call after prefill moves the cache into fixed buffers."""
        if self.static is None:
            self.static = StaticDecoder(self.model, self.pool, self.cache, self.attention_mask,
                                        self.next_position, self.max_columns,
                                        cuda_graphs=self.cache_mode == "cuda-graphs",
                                        step_fn=self.step_fn, verify_fn=self.verify_fn)
            self.cache = None
        return self.static

    def keep_rows(self, rows: torch.Tensor) -> None:
        """Keep (or repeat) these rows of the batch, in this order, in the cache and the mask."""
        rows = rows.to(self.input_device)
        tiled = torch.cat([rows + copy * self.batch for copy in range(self.copies)])
        self.batch = len(rows)
        if self.static is not None:
            self.static.keep_rows(tiled)
            return
        self.cache.reorder_cache(tiled)  # index_select per layer, on each layer's own device
        self.attention_mask = self.attention_mask[tiled]
        self.next_position = self.next_position[tiled]

    def _tile(self, tensor: torch.Tensor) -> torch.Tensor:
        return torch.cat([tensor] * self.copies) if self.copies > 1 else tensor

    def _forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor,
                 keep: int = 0) -> list[torch.Tensor]:
        """Logits of the last position per copy [rows, vocab]; keep > 0: of the last `keep`
        positions [rows, keep, vocab]."""
        extra = {}
        if self.adapters:  # peft needs adapter_names at every step, cache or not
            rows = input_ids.shape[0] // self.copies
            extra["adapter_names"] = [name for name in self.adapters for _ in range(rows)]
        output = self.model(input_ids=input_ids, attention_mask=self.attention_mask,
                            position_ids=position_ids, past_key_values=self.cache, use_cache=True,
                            logits_to_keep=max(keep, 1), **extra)
        logits = output.logits if keep else output.logits[:, -1]
        return list(logits.chunk(self.copies))


CACHE_MODES = ("auto", "dynamic", "static", "cuda-graphs")


def _cache_mode(name: str, model, adapters, cache: str, compile: bool = False) -> str:
    """Resolve "auto" and refuse a mode this model cannot run."""
    if cache not in CACHE_MODES:
        raise UserError(f"cache must be one of {', '.join(CACHE_MODES)}, got {cache!r}")
    devices = {param.device for param in model.parameters()}
    one_gpu = len(devices) == 1 and next(iter(devices)).type == "cuda"
    unfit = ("it is a LoRA pair (peft's mixed batch indexes on the host)" if adapters else
             None if supports_static(model) else "it has sliding-window attention layers")
    if cache == "auto" and unfit:
        cache = "dynamic"
    elif cache == "auto":
        cache = "cuda-graphs" if one_gpu else "static" if compile else "dynamic"
    if cache != "dynamic" and unfit:
        raise UserError(f"cache={cache} does not fit the {name} model: {unfit}; use cache=dynamic")
    if compile and cache == "dynamic":
        raise UserError(f"compile needs cache=static or cuda-graphs, and the {name} model runs "
                        f"cache=dynamic{f' ({unfit})' if unfit else ''}: drop compile")
    if cache == "cuda-graphs" and not one_gpu:
        raise UserError(f"cache=cuda-graphs needs the {name} model on one GPU, it is on "
                        f"{sorted(map(str, devices))}: use cache=dynamic or static")
    return cache


def left_pad(prompt_ids: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(ids) for ids in prompt_ids)
    input_ids = torch.full((len(prompt_ids), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompt_ids), width), dtype=torch.long)
    for row, ids in enumerate(prompt_ids):
        input_ids[row, width - len(ids):] = torch.tensor(ids)
        attention_mask[row, width - len(ids):] = 1
    return input_ids, attention_mask
