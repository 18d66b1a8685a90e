"""GPU-only checks (`pytest -m gpu` on a machine with CUDA; never part of `make test`)."""

import pytest
import torch


@pytest.mark.gpu
def test_gpu_check_at_real_qwen_sizes(tmp_path):
    assert torch.cuda.is_available(), "gpu tests need a CUDA device: run `pytest -m gpu` there"
    from transfer import gpu_check

    report = gpu_check.main(["--pairs", "7B:0.5B", "--batches", "1", "8", "--new-tokens", "32",
                             "--train-sizes", "0.5B", "--grpo-steps", "2",
                             "--output", str(tmp_path / "gpu_check.json")])
    (pair,) = report["throughput"]
    assert all(row["rast"]["tokens_per_s"] > 0 for row in pair["batches"])
    # bf16 models, fp32 combination: the argmax of the combined logits rarely moves.
    assert report["precision"]["top1_agreement"] >= 0.9
    assert report["train_step_memory"][0]["fits"]
