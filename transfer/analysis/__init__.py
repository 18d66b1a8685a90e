"""Where an RL delta lives and whether it transfers across scales (`make analyze`): per-position
statistics (`token_stats.py`), summaries and W&B (`report.py`) and plots (`plots.py`);
`analyze.py` is the driver. Evaluations are read only through their sample log."""
