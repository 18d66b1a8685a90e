"""How a RAST token is computed: the seam every caller decodes through (`decoder.py`, opened by
`backends.py`), the pure maths (`rast.py`) and the cached decode loop (`engine.py`) over models
with their own KV caches (`cached_model.py`), loaded and checked by `loading.py`, with the small
pair run as one stacked model (`stacked_pair.py`), fixed-shape caches for CUDA graphs and
torch.compile (`static_cache.py`) and speculative RAST (`speculative.py`)."""
