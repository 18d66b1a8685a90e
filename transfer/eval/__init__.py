"""How good RAST is on benchmarks (`make transfer`): systems (a role and its deltas) decoded
through the decoder seam and graded into a crash-safe sample log (`samples.py`, on
`transfer.runlog`), metrics and recovery rate (`metrics.py`), tables, plots and W&B
(`report.py`, `dashboard.py`), GPU memory plans (`placement.py`) and sharding over processes
(`distributed.py`); `evaluate.py` is the driver."""
