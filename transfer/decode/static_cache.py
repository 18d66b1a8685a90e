"""Fixed-shape decoding for one model: a preallocated KV cache and, on a GPU, CUDA graphs.

A decode step of an HF model launches hundreds of small kernels from Python. At batch <= 16 the
GPU finishes a small model's kernels faster than Python can launch them, so RAST's two extra
small forwards would cost far more than their bytes. Here a step runs on
buffers whose addresses never change (token ids, positions, a boolean attention mask, a static
KV cache), so on CUDA each step is captured once as a CUDA graph and replayed, one launch per
model per token.

What keeps that exact and cheap:
- The cache holds the filled columns rounded up to a power of two, not the whole generation
  budget (16K tokens of a 32B model at batch 16 would be ~70 GB): attention reads only that,
  and when it is full it is rebuilt twice as long (a copy per doubling, O(1) per token).
- Finished rows are dropped lazily: until at most half of the rows are still decoding they keep
  their slot (computing them costs almost nothing when decoding is bandwidth-bound), then the
  cache is rebuilt with the live rows only.
- Buffers and their graph are kept per shape (rows, capacity) in a BufferPool, within a memory
  budget, so the next batch of the same shape replays the graph instead of capturing it again.

A step is `decode_step(model, buffers)`; compiling it (torch.compile, one dynamic-shape graph per
model) fuses HF's many small elementwise kernels (RMSNorm, rotary, residuals), which is what
sets the floor of a small model's step once launches are gone.

The state starts from the eager prefill (a DynamicCache), so prompts are never recomputed.
"""

import functools
from collections import OrderedDict

import torch
from transformers.cache_utils import Cache, StaticLayer

MIN_CAPACITY = 32  # columns of the smallest cache


def supports_static(model) -> bool:
    """Every attention layer is full attention (no sliding windows): one mask serves all."""
    return set(getattr(model.config, "layer_types", None) or ["full_attention"]) == {
        "full_attention"}


class StaticBuffers:
    """Everything a step reads or writes, for one shape: KV cache, mask, positions, token ids, and
    the CUDA graph captured on them (with its output logits) once there is one."""

    def __init__(self, like: list[tuple[torch.Tensor, torch.Tensor]], rows: int, capacity: int):
        layers = []
        for keys, values in like:  # one (keys, values) per layer: dtype, device, heads, head dim
            layer = StaticLayer(max_cache_len=capacity)
            layer.lazy_initialization(keys[:1].expand(rows, *keys.shape[1:]),
                                      values[:1].expand(rows, *values.shape[1:]))
            layers.append(layer)
        device = like[0][0].device
        self.cache = Cache(layers=layers)
        self.mask = torch.zeros(rows, 1, 1, capacity, dtype=torch.bool, device=device)
        self.positions = torch.zeros(rows, 1, dtype=torch.long, device=device)
        self.tokens = torch.zeros(rows, 1, dtype=torch.long, device=device)
        self.wide_tokens = {}  # verify width m -> token ids [rows, m] (speculative decoding)
        self.graphs = {}  # width (1: the decode step) -> (CUDAGraph, its output logits)
        self.nbytes = sum(layer.keys.nbytes + layer.values.nbytes for layer in layers)

    def load(self, like: list[tuple[torch.Tensor, torch.Tensor]], mask: torch.Tensor,
             positions: torch.Tensor) -> None:
        """Fill the first columns with a state of `length` columns; the rest is masked out, and
        zeroed: attention weighs masked columns by 0, and 0 * NaN left by an earlier batch would
        still be NaN."""
        length = mask.shape[-1]
        for layer, (keys, values) in zip(self.cache.layers, like):
            layer.keys[:, :, :length] = keys
            layer.values[:, :, :length] = values
            layer.keys[:, :, length:] = 0
            layer.values[:, :, length:] = 0
            layer.cumulative_length.fill_(length)
        self.mask.zero_()
        self.mask[:, 0, 0, :length] = mask
        self.positions.copy_(positions)


class BufferPool:
    """StaticBuffers per (rows, capacity), kept for reuse while their KV bytes fit the budget."""

    def __init__(self, budget_bytes: int):
        self.budget_bytes = budget_bytes
        self.idle: OrderedDict[tuple[int, int], StaticBuffers] = OrderedDict()  # oldest first

    def take(self, like, rows: int, capacity: int) -> StaticBuffers:
        """Pooled buffers of this shape if any are idle, else new ones."""
        return self.idle.pop((rows, capacity), None) or StaticBuffers(like, rows, capacity)

    def give_back(self, buffers: StaticBuffers) -> None:
        self.idle[(buffers.tokens.shape[0], buffers.mask.shape[-1])] = buffers
        while sum(b.nbytes for b in self.idle.values()) > self.budget_bytes:
            self.idle.popitem(last=False)  # frees the tensors and the graph's memory


def decode_step(model, buffers: StaticBuffers) -> torch.Tensor:
    """One step on fixed buffers, next-token logits [rows, vocab]; every state change is a device
    op, so the step can be captured as a CUDA graph (and compiled)."""
    buffers.mask.index_fill_(-1, buffers.cache.layers[0].cumulative_length.view(1), True)
    output = model(input_ids=buffers.tokens, position_ids=buffers.positions,
                   attention_mask={"full_attention": buffers.mask},
                   past_key_values=buffers.cache, use_cache=True, logits_to_keep=1)
    buffers.positions.add_(1)
    return output.logits[:, -1]


def verify_step(model, buffers: StaticBuffers, tokens: torch.Tensor) -> torch.Tensor:
    """One forward over the `width` new tokens per row of tokens [rows, width] (one of
    buffers.wide_tokens), logits at every one [rows, width, vocab]: speculative decoding's verify
    pass, capturable like decode_step. The width is read from the tensor, not passed as a
    number: compiled, it is then a dynamic size, and every width shares one graph instead of
    recompiling per width until dynamo's recompile limit (8) sends the rest back to eager.

    The row mask says which columns a row may attend to (holes where rejected drafts were rolled
    back); the new columns add causality among themselves: query i sees new columns <= i."""
    width = tokens.shape[1]
    start = buffers.cache.layers[0].cumulative_length
    offsets = torch.arange(width, device=buffers.mask.device)
    new_columns = start + offsets
    buffers.mask.index_fill_(-1, new_columns, True)
    columns = torch.arange(buffers.mask.shape[-1], device=buffers.mask.device)
    causal = columns[None, :] <= new_columns[:, None]  # [width, capacity]
    mask = buffers.mask & causal[None, None]  # [rows, 1, width, capacity]
    output = model(input_ids=tokens, position_ids=buffers.positions + offsets,
                   attention_mask={"full_attention": mask}, past_key_values=buffers.cache,
                   use_cache=True, logits_to_keep=0)
    buffers.positions.add_(width)
    return output.logits


@functools.cache
def compiled_decode_step():
    """decode_step compiled once per process for every model (dynamic shapes: rows and capacity
    change without recompiling; dynamo recompiles per model only where its guards differ)."""
    return torch.compile(decode_step, dynamic=True)


@functools.cache
def compiled_verify_step():
    """verify_step compiled once per process, like compiled_decode_step."""
    return torch.compile(verify_step, dynamic=True)


class StaticDecoder:
    """Decode state of one model with fixed shapes; `step` is one forward fed one token per row,
    `verify` one forward fed several (speculative decoding; a graph per width), `rollback` takes
    back a row's rejected ones (masked holes, squeezed out at the next rebuild).

    cache: the model's cache after prefill (DynamicCache, one row per sequence); attention_mask:
    [rows, columns] of that prefill (1 = real token); next_position: [rows, 1]; max_columns: the
    most columns a row can reach (prompt width + max new tokens, + a round's drafts when
    speculating); step_fn, verify_fn: decode_step and verify_step or compiled copies. Call `close` when done, so the buffers go back to the pool.
    """

    def __init__(self, model, pool: BufferPool, cache: Cache, attention_mask: torch.Tensor,
                 next_position: torch.Tensor, max_columns: int, cuda_graphs: bool,
                 step_fn=decode_step, verify_fn=verify_step):
        self.model, self.pool, self.cuda_graphs = model, pool, cuda_graphs
        self.step_fn, self.verify_fn = step_fn, verify_fn
        self.max_columns = max_columns
        self.length = attention_mask.shape[1]  # columns filled so far, the same for every row
        self.device = attention_mask.device
        self.buffers, self.holes = None, False  # holes: rollback masked columns mid-row
        like = [(layer.keys, layer.values) for layer in cache.layers]
        rows = torch.arange(attention_mask.shape[0], device=self.device)
        self._build(like, attention_mask.bool(), next_position, rows)

    @property
    def rows(self) -> int:
        """Rows computed per step (live ones plus finished ones not yet dropped)."""
        return self.buffers.tokens.shape[0]

    def keep_rows(self, rows: torch.Tensor) -> None:
        """Keep these rows of the caller's batch, in this order (the engine's compaction)."""
        rows = rows.to(self.device)
        self.live = rows if self.live is None else self.live[rows]
        if 2 * len(self.live) <= self.rows:  # half or more are finished: rebuild at live size
            self._rebuild()

    def step(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Feed one token per live row [live]; their next-token logits [live, vocab]."""
        if self.length == self.buffers.mask.shape[-1]:  # full: twice as long (and compacted)
            self._rebuild()
        token_ids = token_ids.to(self.device)[:, None]
        if self.live is None:
            self.buffers.tokens.copy_(token_ids)
        else:
            self.buffers.tokens.index_copy_(0, self.live, token_ids)
        logits = (self._replay(1, self.step_fn) if self.cuda_graphs
                  else self.step_fn(self.model, self.buffers))
        self.length += 1
        return logits if self.live is None else logits.index_select(0, self.live)

    def verify(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Feed `width` tokens per live row [live, width] in one forward; their logits at every
        position [live, width, vocab]. A graph is captured per width."""
        width = token_ids.shape[1]
        if self.length + width > self.buffers.mask.shape[-1]:
            self._rebuild(width)
        token_ids = token_ids.to(self.device)
        tokens = self.buffers.wide_tokens.get(width)
        if tokens is None:
            tokens = self.buffers.wide_tokens[width] = torch.zeros(
                self.rows, width, dtype=torch.long, device=self.device)
        if self.live is None:
            tokens.copy_(token_ids)
        else:
            tokens.index_copy_(0, self.live, token_ids)
        verify = functools.partial(self.verify_fn, tokens=tokens)
        logits = (self._replay(width, verify) if self.cuda_graphs
                  else verify(self.model, self.buffers))
        self.length += width
        return logits if self.live is None else logits.index_select(0, self.live)

    def rollback(self, fed: int, keep: torch.Tensor) -> None:
        """Of the last `fed` columns, live row i keeps its first keep[i] (the accepted tokens):
        the others are masked out and its next position moves back. Columns no live row keeps
        are given back to the cache (its write cursor moves back); the rest stay as holes, until
        a rebuild squeezes them out."""
        rows = torch.arange(self.rows, device=self.device) if self.live is None else self.live
        keep, self.holes = keep.to(self.device), True
        columns = torch.arange(self.length - fed, self.length, device=self.device)
        dropped = columns[None, :] >= (self.length - fed + keep)[:, None]  # [live, fed]
        mask = self.buffers.mask[:, 0, 0]
        mask[rows, self.length - fed:self.length] &= ~dropped
        self.buffers.positions[rows] -= (fed - keep)[:, None]
        unused = fed - int(keep.max())
        if unused > 0:
            for layer in self.buffers.cache.layers:
                layer.cumulative_length.sub_(unused)
            self.length -= unused

    def close(self) -> None:
        if self.buffers is not None:
            self.pool.give_back(self.buffers)
            self.buffers = None

    def _rebuild(self, width: int = 1) -> None:
        old = self.buffers
        rows = torch.arange(self.rows, device=self.device) if self.live is None else self.live
        like = [(layer.keys[:, :, :self.length], layer.values[:, :, :self.length])
                for layer in old.cache.layers]
        self._build(like, old.mask[:, 0, 0, :self.length], old.positions, rows, width)
        self.pool.give_back(old)

    def _build(self, like, mask: torch.Tensor, positions: torch.Tensor, rows: torch.Tensor,
               width: int = 1):
        """Buffers holding `rows` of the current state, with room for `width` more columns."""
        like = [(keys.index_select(0, rows), values.index_select(0, rows)) for keys, values in like]
        mask = mask.index_select(0, rows)
        if self.holes:  # only after a rollback: plain decoding keeps its layout, bit for bit
            like, mask = squeeze_holes(like, mask)
            self.length = mask.shape[1]
        if self.length + width > self.max_columns:
            raise ValueError(f"the cache is full at its {self.max_columns} columns")
        capacity = min(self.max_columns,
                       max(MIN_CAPACITY, 2 ** (self.length + width - 1).bit_length()))
        self.buffers = self.pool.take(like, len(rows), capacity)
        self.buffers.load(like, mask, positions.index_select(0, rows))
        self.live = None  # None: every row is live, in order; else the live rows' slots

    def _replay(self, width: int, step_fn) -> torch.Tensor:
        buffers = self.buffers
        if width in buffers.graphs:
            graph, logits = buffers.graphs[width]
            graph.replay()
            return logits
        with torch.cuda.device(self.device):
            # A new shape: this step runs eagerly on a side stream (lazy kernel and library set-up
            # must not happen during capture), then capture records a step without running it.
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                logits = step_fn(self.model, buffers)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                buffers.graphs[width] = (graph, step_fn(self.model, buffers))
        return logits


def squeeze_holes(like: list[tuple[torch.Tensor, torch.Tensor]], mask: torch.Tensor):
    """Move each row's attended columns to the right end, in order, and drop the columns no row
    attends to any more: (keys, values) per layer [rows, heads, columns, dim] and mask [rows,
    columns] as narrow as the fullest row. Exact: keys are stored after the rotary embedding and
    positions are kept apart, so attention does not depend on where a column sits."""
    width = int(mask.sum(-1).max())
    order = torch.sort(mask.int(), dim=-1, stable=True).indices[:, mask.shape[1] - width:]
    gathered = []
    for keys, values in like:
        index = order[:, None, :, None]
        gathered.append((keys.gather(2, index.expand(-1, keys.shape[1], -1, keys.shape[3])),
                         values.gather(2, index.expand(-1, values.shape[1], -1, values.shape[3]))))
    return gathered, mask.gather(1, order)
