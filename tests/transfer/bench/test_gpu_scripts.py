"""The GPU scripts (make gpu-bench, make gpu-check) run their whole path on CPU with --smoke:
tiny configs, the same code a lent GPU runs, so the one GPU call of a session does not fail on
a bug a CPU could have shown."""

import json

import torch

from transfer.bench import check as gpu_check
from transfer.bench import gpu as gpu_bench


def test_gpu_bench_smoke_mode_runs_end_to_end_on_cpu(tmp_path):
    gpu_bench.main(["--smoke", "--output", str(tmp_path / "bench.json")])
    report = json.loads((tmp_path / "bench.json").read_text())
    pair = report["pairs"][0]
    assert [row["batch"] for row in pair["batches"]] == [1, 2]
    for row in pair["batches"]:  # on CPU: the eager loop and the static-cache loop (no graphs)
        assert {mode: row[mode]["rast"]["tokens"] for mode in ("dynamic", "static")} == {
            "dynamic": row["batch"] * report["new_tokens"], "static": row["batch"] * report["new_tokens"]}
    assert 0 < pair["bound"] < 1
    exactness = pair["exactness"]  # sampled rows stop at different steps: rebuilds mid-batch
    assert exactness["rows_identical"] == exactness["rows"] == 8
    assert len(set(exactness["lengths"])) > 3 and exactness["max_abs_logit_diff"] < 1e-5


def test_gpu_bench_smoke_times_speculative_rast_and_projects_it(tmp_path):
    """The GPU script's speculative parts on CPU: end-to-end speculative RAST (static cache, as
    cuda-graphs without capture) and its round timed part by part, verify widths 1..9."""
    gpu_bench.main(["--smoke", "--modes", "cuda-graphs+speculative", "--breakdown-batches",
                    "--output", str(tmp_path / "bench.json")])
    report = json.loads((tmp_path / "bench.json").read_text())
    pair = report["pairs"][0]
    for row in pair["batches"]:
        spec = row["static+speculative"]
        assert spec["rast"]["tokens"] == row["batch"] * report["new_tokens"]
        assert 0 <= spec["acceptance"] <= 1
    (projection,) = pair["speculative_projection"]
    assert "error" not in projection and sorted(projection["verify_ms"]) == [str(w) for w in
                                                                            range(1, 10)]
    assert 0 <= projection["best_k"] <= 8 and projection["projected_over_large_alone"] > 0


def test_gpu_check_smoke_runs_the_whole_path_on_cpu(tmp_path):
    report = gpu_check.main(["--smoke", "--output", str(tmp_path / "check.json")])
    assert json.loads((tmp_path / "check.json").read_text()) == json.loads(json.dumps(report))
    (pair,) = report["throughput"]
    assert all(row[mode]["rast"]["tokens_per_s"] > 0 for row in pair["batches"]
               for mode in ("static", "static+serial"))  # CPU twins of the two graph modes
    assert pair["exactness"]["rows_identical"] == pair["exactness"]["rows"]
    assert 0 <= report["precision"]["max_abs_diff"] < 0.1
    assert report["precision"]["top1_agreement"] > 0.5
    assert report["grpo"]["steps"] == 2
    assert report["grpo"]["parameters_changed"] == report["grpo"]["parameters"]
    assert report["train_step_memory"][0]["fits"]


def test_gpu_bench_times_every_forward_in_inference_mode(tmp_path, monkeypatch):
    """The part timings (step_breakdown, speculative_projection) call CachedModel directly, not
    through the engine's decode: with autograd recording, an eager CPU step of the large model
    measured 2.5 ms against the engine's 1.7 ms, and the projection's ratios were wrong."""
    modes = []
    for method in ("decode", "verify"):
        original = getattr(gpu_bench.CachedModel, method)

        def spy(self, *args, original=original, **kwargs):
            modes.append(torch.is_inference_mode_enabled())
            return original(self, *args, **kwargs)

        monkeypatch.setattr(gpu_bench.CachedModel, method, spy)
    gpu_bench.main(["--smoke", "--modes", "dynamic", "--batches", "1",
                    "--output", str(tmp_path / "bench.json")])
    assert len(modes) > 100 and all(modes)
