"""Transfer half of RAST: decode a large base model with a small model pair's RL delta.

Every entry point turns what the user named into `Delta`s (`deltas.py`: a resolved small pair and
its lambda) once, and every command that decodes into an output runs on one run log
(`runlog.py`: lock, append-only records, settings check, resume chunks). Then four rooms, in the
order data flows through them:

- `decode/`: the decoder seam (`decoder.py`), the RAST maths (`rast.py`) and the decode loop
  (`engine.py`) with its small-pair and cache machinery; `python -m transfer.generate` is its
  command line.
- `eval/`: benchmark evaluation (`make transfer`): systems decoded and graded into a sample log,
  metrics, reports, GPU placement and sharding.
- `analysis/`: token-level analysis of RL deltas (`make analyze`); it reads evaluations only
  through their sample log.
- `bench/`: throughput benchmarks (`make bench`, `make gpu-bench`, `make gpu-check`).
"""
