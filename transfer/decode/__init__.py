"""How a RAST token is computed: the pure maths (`rast.py`) and the cached decode loop
(`engine.py`), with the small pair run as one stacked model (`stacked_pair.py`) and fixed-shape
caches for CUDA graphs and torch.compile (`static_cache.py`)."""
