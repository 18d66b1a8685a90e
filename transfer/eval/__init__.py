"""How good RAST is on benchmarks (`make transfer`): systems decoded and graded into a
crash-safe sample log (`samples.py`), metrics and recovery rate (`metrics.py`), tables, plots and
W&B (`report.py`), GPU memory plans (`placement.py`) and sharding over processes
(`distributed.py`); `evaluate.py` is the driver."""
