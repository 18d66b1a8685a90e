"""How fast the engine decodes: the CPU benchmark on the tiny family (`cpu.py`, `make bench`),
the GPU benchmark at real Qwen2.5 sizes (`gpu.py`, `make gpu-bench`), the one-call GPU check
(`check.py`, `make gpu-check`) and a counter of the ops one decode step dispatches (`ops.py`)."""
