"""transfer.eval.evaluate: recipes, fail-fast validation, crash-safe resume, W&B offline, real engine.

The resume and W&B tests run the evaluation in a subprocess with tests/transfer/eval/fake_engine.py
(instant, deterministic, known accuracies) and kill it with SIGKILL mid-run.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import wandb_inspect

from tests.transfer.decode.test_stop_strings import earliest_stop_string
from train import pairing
from train.errors import UserError
from train.models import load_tokenizer
from train.tracking import ARTIFACT_FILE
from transfer.deltas import resolve_delta
from transfer.eval.evaluate import (
    System,
    TransferConfig,
    build_systems,
    check_signatures,
    parse_config,
    run,
    validate_models,
)
from transfer.eval.samples import Sample
from transfer.runlog import SampleLog, read_records

REPO = Path(__file__).resolve().parents[3]
RAST_RECIPES = sorted(REPO.glob("recipes/*/rast/*.yaml"))
SAMPLES, LIMIT, BATCH = 4, 10, 8  # 2 problems per batch, 5 batches per system and benchmark


@pytest.mark.parametrize("recipe", RAST_RECIPES, ids=lambda p: str(p.relative_to(REPO / "recipes")))
def test_every_rast_recipe_parses_into_systems(recipe, monkeypatch):
    # The recipe's systems, not its models: nothing here needs outputs/ or the tiny family built.
    monkeypatch.setattr(pairing, "resolve_model", lambda name: name)
    monkeypatch.setattr(pairing, "read_pair", lambda name: {})
    config = parse_config(["--config", str(recipe)])
    names = [s.name for s in build_systems(config)]
    assert "L" in names and all(f"L+RAST(lam={lam:g})" in names for lam in config.lam)
    assert ("L_RL" in names) == (config.target_rl is not None)
    assert config.output_dir.startswith("outputs/")


def test_rast_recipes_exist_for_every_make_target():
    for target in ("tiny/rast/config_cpu", "Qwen2.5-7B/rast/config_1.5B",
                   "Qwen2.5-14B/rast/config_1.5B", "Qwen2.5-32B/rast/config_1.5B"):
        assert (REPO / "recipes" / f"{target}.yaml") in RAST_RECIPES


PAPER_RECIPES = [r for r in RAST_RECIPES if "Qwen" in str(r) and r.stem.count("_") == 1]
RUNNER_STOPS = ["</s>", "<|im_end|>", "<|endoftext|>", "assistant", "user", "_end", "_start"]


@pytest.mark.parametrize("recipe", PAPER_RECIPES, ids=lambda p: str(p.relative_to(REPO / "recipes")))
def test_qwen_recipes_decode_as_the_paper_runner_and_have_an_8_sample_variant(recipe):
    """The RAST runner (ozyyshr/RAST vllm/tests/RAST_decode/run.py): plain prompt, its stop
    strings and ids, temperature 1, top-p 0.95, 16384 tokens; the paper reports Avg@32."""
    config = parse_config(["--config", str(recipe)])
    assert config.prompt_template == "question-answer" and config.stop_strings == RUNNER_STOPS
    assert config.stop_ids == [151645, 151643] and config.lam == [1.0]
    assert (config.samples, config.temperature, config.top_p, config.max_new_tokens) == (
        32, 1.0, 0.95, 16384)
    cheap = parse_config(["--config", str(recipe.with_name(recipe.stem + "_8samples.yaml"))])
    assert cheap.samples == 8 and cheap.output_dir == config.output_dir + "-8samples"
    differs = {k for k, v in vars(config).items() if getattr(cheap, k) != v}
    assert differs == {"samples", "output_dir", "wandb_group"}


def test_there_are_four_paper_recipes():
    assert len(PAPER_RECIPES) == 4


def test_cli_flags_override_the_recipe_and_unknown_keys_fail(tmp_path):
    recipe = REPO / "recipes/tiny/rast/config_cpu.yaml"
    config = parse_config(["--config", str(recipe), "--lam", "3", "--samples", "2"])
    assert config.lam == [3.0] and config.samples == 2 and config.target == "tiny-l"
    bad = tmp_path / "bad.yaml"
    bad.write_text(recipe.read_text() + "lamda: 2\n")
    with pytest.raises(UserError, match="lamda"):
        parse_config(["--config", str(bad)])
    with pytest.raises(UserError, match="lam"):
        TransferConfig(lam=[])
    with pytest.raises(UserError, match="cache must be one of auto, dynamic, static"):
        parse_config(["--config", str(recipe), "--cache", "paged"])  # before anything is written


def test_32B_recipe_fails_fast_in_one_line_without_the_models(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "empty_hf_home")}
    result = subprocess.run([sys.executable, "-m", "transfer.eval.evaluate", "--config",
                             "recipes/Qwen2.5-32B/rast/config_1.5B.yaml",
                             "--output_dir", str(tmp_path / "out")],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Qwen/Qwen2.5-32B" in lines[0]
    assert "offline" in lines[0] and not (tmp_path / "out").exists()


def test_systems_read_the_pair_file_and_refuse_a_mismatched_small_base(tiny_models, tmp_path):
    rl_dir = tmp_path / "grpo-out"
    rl_dir.mkdir()
    (rl_dir / "rast_pair.json").write_text(json.dumps({"small_base": tiny_models["small_base"]}))
    (rl_dir / "adapter_config.json").write_text("{}")  # a LoRA output of train.grpo
    systems = build_systems(TransferConfig(target=tiny_models["large"], small_rl=str(rl_dir),
                                           lam=[0.5, 2]))
    base = tiny_models["small_base"]
    assert [(s.name, [(d.pair.base, d.pair.rl, d.pair.lora, d.lam) for d in s.deltas])
            for s in systems] == [
        ("S_RL", [(base, str(rl_dir), True, 1.0)]),  # an adapter decodes as S + 1 * (S_RL - S)
        ("L", []), ("L+RAST(lam=0.5)", [(base, str(rl_dir), True, 0.5)]),
        ("L+RAST(lam=2)", [(base, str(rl_dir), True, 2.0)])]
    assert systems[0].target == base  # the adapter's S_RL decodes on its base
    with pytest.raises(UserError, match="is not the model"):
        build_systems(TransferConfig(small_base=tiny_models["large"], small_rl=str(rl_dir)))
    with pytest.raises(UserError, match="does not exist: train it first"):
        validate_models([System("S_RL", str(tmp_path / "outputs" / "no-such-grpo-run"))])


def _sample(index: int) -> Sample:
    return Sample("L", "L", "b", "p", index, 7, f"text {index}", "1", True, "ok", 3, True)


def test_sample_log_drops_a_torn_last_line_and_appends_after_it(tmp_path):
    path = tmp_path / "samples.jsonl"
    path.write_text(_sample(1).to_json() + "\n" + _sample(2).to_json() + '\n{"system": "L", "te')
    log = SampleLog(path, Sample)
    assert log.records == [_sample(1), _sample(2)]
    log.append([_sample(4)])
    assert [Sample.from_json(line, "x") for line in path.read_text().splitlines()] == [
        _sample(1), _sample(2), _sample(4)]
    path.write_text(_sample(1).to_json() + "\nnot json\n")
    with pytest.raises(UserError, match=":2 is not a JSON record"):
        SampleLog(path, Sample)
    path.write_text('{"system": "L", "problem_id": "p"}\n')
    with pytest.raises(UserError, match=r":1 is not a sample record \(missing role, benchmark, "):
        SampleLog(path, Sample)


def test_output_dir_refuses_a_system_decoded_with_other_settings(tmp_path):
    systems = [System("L", "tiny-l")]
    check_signatures(tmp_path, systems, TransferConfig())
    check_signatures(tmp_path, systems + [System("L_RL", "x")], TransferConfig())  # adding is fine
    with pytest.raises(UserError, match="temperature: 1.0 -> 0.5"):
        check_signatures(tmp_path, systems, TransferConfig(temperature=0.5))
    with pytest.raises(UserError, match="speculative: False -> True"):  # other random numbers
        check_signatures(tmp_path, systems, TransferConfig(speculative=True))
    with pytest.raises(UserError, match="engine: 'hf' -> 'vllm'"):  # samples never mix engines
        check_signatures(tmp_path, systems, TransferConfig(engine="vllm"))


def test_a_systems_file_without_engine_was_decoded_by_the_hf_engine(tmp_path):
    systems = [System("L", "tiny-l")]
    check_signatures(tmp_path, systems, TransferConfig())
    stored = json.loads((tmp_path / "systems.json").read_text())
    del stored["L"]["engine"]  # as an older version wrote it
    (tmp_path / "systems.json").write_text(json.dumps(stored))
    check_signatures(tmp_path, systems, TransferConfig())
    with pytest.raises(UserError, match="engine: 'hf' -> 'vllm'"):
        check_signatures(tmp_path, systems, TransferConfig(engine="vllm"))


def _write_recipe(path: Path, tiny_models: dict, tmp_path: Path, **overrides) -> Path:
    benchmark = tmp_path / "mul.jsonl"
    benchmark.write_text("".join(json.dumps({"id": f"m{i}", "problem": f"{12 + i}*{3 + i % 7}",
                                             "answer": str((12 + i) * (3 + i % 7))}) + "\n"
                                 for i in range(LIMIT)))
    recipe = {"target": tiny_models["large"], "small_base": tiny_models["small_base"],
              "small_rl": tiny_models["small_rl"], "target_rl": tiny_models["large"],
              "lam": [0.5, 1.0], "include_small_rl": True, "include_small_base": True,
              "samples": SAMPLES, "benchmarks": ["tiny", str(benchmark)], "limit": LIMIT,
              "prompt_template": "tiny", "batch_size": BATCH, "max_new_tokens": 8,
              "output_dir": str(path), "report_to": "none", **overrides}
    file = path.parent / f"{path.name}.yaml"
    file.write_text(yaml.safe_dump(recipe))
    return file


FAKE_RUN = textwrap.dedent("""
    import sys
    sys.path.insert(0, {here!r})
    from fake_engine import FakeEngine
    from train.errors import exit_on_user_error
    from transfer.eval.evaluate import parse_config, run
    with exit_on_user_error():
        run(parse_config(sys.argv[1:]),
            make_decoder=lambda system, config: FakeEngine(system, {delay}))
""")


def _fake_run(recipe: Path, delay: float = 0.0, **popen) -> subprocess.Popen:
    script = FAKE_RUN.format(here=str(Path(__file__).parent), delay=delay)
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-c", script, "--config", str(recipe)], cwd=REPO,
                            env=env, **popen)


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


@pytest.fixture(scope="module")
def uninterrupted(tiny_models, tmp_path_factory):
    """A full fake-engine run, with W&B offline on; returns its output dir."""
    root = tmp_path_factory.mktemp("uninterrupted")
    small_rl = root / "small_rl-grpo"  # as a train.grpo output that logged its W&B artifact
    shutil.copytree(tiny_models["small_rl"], small_rl)
    (small_rl / ARTIFACT_FILE).write_text(json.dumps({"artifact": GRPO_ARTIFACT}))
    process = _fake_run(_write_recipe(root / "out", {**tiny_models, "small_rl": str(small_rl)},
                                      root, report_to="wandb"),
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr
    return root / "out", stdout


def test_resume_after_sigkill_loses_nothing_and_reproduces_the_metrics(uninterrupted, tiny_models,
                                                                        tmp_path):
    full_dir, _ = uninterrupted
    out = tmp_path / "out"
    recipe = _write_recipe(out, tiny_models, tmp_path)
    samples = out / "samples.jsonl"
    process = _fake_run(recipe, delay=0.05, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while len(_lines(samples)) < 150 and time.time() < deadline and process.poll() is None:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    before_kill = _lines(samples)
    total = 6 * 2 * LIMIT * SAMPLES  # systems x benchmarks x problems x samples
    assert 150 <= len(before_kill) < total, "the kill did not land mid-run"
    with open(samples, "a") as file:
        file.write('{"system": "L", "benchmark": "ti')  # what a kill inside write() leaves
    resumed_run = _fake_run(recipe, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert resumed_run.wait(timeout=300) == 0

    after = _lines(samples)
    assert after[:len(before_kill)] == before_kill  # every completed sample survived, untouched
    keys = [(r["system"], r["benchmark"], r["problem_id"], r["sample_index"])
            for r in map(json.loads, after)]
    assert len(keys) == len(set(keys)) == total  # nothing decoded twice, nothing missing
    full = [json.loads(line) for line in _lines(full_dir / "samples.jsonl")]
    # the uninterrupted run read small_rl from a copy (its W&B artifact): the same pair elsewhere
    resumed_rows = [json.loads(line) for line in after]
    rl_dirs = {delta.pop("rl") for rows in (full, resumed_rows) for row in rows
               for delta in row["deltas"]}
    assert rl_dirs == {tiny_models["small_rl"], str(full_dir.parent / "small_rl-grpo")}
    assert sorted(resumed_rows, key=json.dumps) == sorted(full, key=json.dumps)
    resumed = json.loads((out / "summary.json").read_text())["benchmarks"]
    assert resumed == json.loads((full_dir / "summary.json").read_text())["benchmarks"]


def test_summary_report_and_plots_of_a_run(uninterrupted):
    out, stdout = uninterrupted
    summary = json.loads((out / "summary.json").read_text())
    tiny = summary["benchmarks"]["tiny"]
    assert list(tiny) == ["S", "S_RL", "L", "L+RAST(lam=0.5)", "L+RAST(lam=1)", "L_RL"]
    # The fake engine's accuracies (0.1 .. 0.9) must come out in order; the lambda sweep reached
    # the engine (lam 0.5 -> 0.5, lam 1 -> 0.7 expected).
    avg = {name: m["avg"] for name, m in tiny.items()}
    assert avg["S"] < avg["L"] < avg["L+RAST(lam=0.5)"] < avg["L+RAST(lam=1)"] < avg["L_RL"]
    rast = tiny["L+RAST(lam=1)"]
    assert rast["rr"] == pytest.approx((rast["avg"] - avg["L"]) / (avg["L_RL"] - avg["L"]))
    assert rast["careful_share"] == pytest.approx(rast["avg"])  # correct <=> careful in the fake
    assert set(rast["pass"]) == {"1", "2", "4"} and rast["pass"]["1"] == pytest.approx(rast["avg"])
    assert rast["ci_low"] <= rast["avg"] <= rast["ci_high"] and 0 < rast["truncated_share"] < 0.5
    assert "careful_share" not in summary["benchmarks"]["mul"]["L"]
    # RR's paired bootstrap CI brackets it; L_RL (0.9) beats L (0.3) clearly: no warning
    assert rast["rr_ci_low"] <= rast["rr"] <= rast["rr_ci_high"] and rast["rr_warning"] is None
    assert rast["gap_ci_low"] > 0
    average = summary["average"]  # the paper's average row: mean over the two benchmarks
    mul = summary["benchmarks"]["mul"]["L+RAST(lam=1)"]
    assert average["L+RAST(lam=1)"]["rr"] == pytest.approx((rast["rr"] + mul["rr"]) / 2)
    assert average["L"]["avg"] == pytest.approx((avg["L"] + summary["benchmarks"]["mul"]["L"]["avg"]) / 2)
    assert average["L+RAST(lam=1)"]["rr_ci_low"] <= average["L+RAST(lam=1)"]["rr"]
    table = (out / "results.md").read_text()
    assert "| L+RAST(lam=1) |" in table and "### mul" in table and table in stdout
    assert "### average over 2 benchmarks" in table
    assert f"{rast['rr']:.2f} [{rast['rr_ci_low']:.2f}, {rast['rr_ci_high']:.2f}]" in table
    assert (out / "accuracy.png").stat().st_size > 1000 and (out / "recovery_rate.png").exists()


GRPO_ARTIFACT = "rast-grpo/small_rl-grpo:run-abc123"


def test_wandb_offline_runs_hold_the_summary_metrics(uninterrupted):
    out, _ = uninterrupted
    summary = json.loads((out / "summary.json").read_text())
    runs = sorted((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 7  # one per system + the comparison run
    found = {}
    for run_dir in runs:
        stdout = wandb_inspect(run_dir, "--summary", "--json")
        state = json.loads(stdout)
        found[state["config"].get("system", {}).get("name", "comparison")] = state
    expected = summary["benchmarks"]["tiny"]["L+RAST(lam=1)"]
    metrics = found["L+RAST(lam=1)"]["summary"]
    assert metrics["tiny/avg"] == pytest.approx(expected["avg"])
    assert metrics["tiny/rr"] == pytest.approx(expected["rr"])
    assert found["comparison"]["summary"]["mul/L_RL/avg"] == pytest.approx(
        summary["benchmarks"]["mul"]["L_RL"]["avg"])


def test_a_small_rl_tokenizer_declaring_another_eos_joins_every_systems_stop_list(tiny_models,
                                                                                  tmp_path):
    from fake_engine import FakeEngine

    # A hub RL checkpoint may declare eos <|im_end|> where its base says <|endoftext|>; "." here.
    rl = tmp_path / "rl"
    shutil.copytree(tiny_models["small_rl"], rl)
    tokenizer = load_tokenizer(str(rl))
    tokenizer.eos_token = "."
    tokenizer.save_pretrained(rl)
    seen = {}

    class StopRecordingEngine(FakeEngine):
        def generate_batches(self, *args, stop_ids=None, **kwargs):
            seen[self.system.name] = stop_ids
            yield from super().generate_batches(*args, stop_ids=stop_ids, **kwargs)

    recipe = _write_recipe(tmp_path / "out", {**tiny_models, "small_rl": str(rl)}, tmp_path,
                           limit=2, benchmarks=["tiny"], lam=[1.0])
    run(parse_config(["--config", str(recipe)]),
        make_decoder=lambda system, config: StopRecordingEngine(system))
    assert set(seen) == {"S", "S_RL", "L", "L+RAST(lam=1)", "L_RL"}
    assert set(map(tuple, seen.values())) == {(0, tokenizer.convert_tokens_to_ids("."))}


def test_real_engine_end_to_end_on_tiny_random_models(tiny_models, tmp_path):

    torch.set_num_threads(1)
    recipe = _write_recipe(tmp_path / "out", tiny_models, tmp_path, samples=2, limit=3,
                           benchmarks=["tiny"], lam=[1.0])
    summary = run(parse_config(["--config", str(recipe)]))
    records = [json.loads(line) for line in _lines(tmp_path / "out/samples.jsonl")]
    assert len(records) == 5 * 3 * 2  # S, S_RL, L, L+RAST(lam=1), L_RL x 3 problems x 2 samples
    assert all(0 < r["num_tokens"] <= 8 for r in records)
    by_system = {}
    for r in records:
        by_system.setdefault(r["system"], []).append(r["text"])
    assert by_system["L"] != by_system["L+RAST(lam=1)"]  # the delta changed what L samples
    assert by_system["L"] == by_system["L_RL"]  # same model, same seeds -> same samples
    assert set(summary["benchmarks"]["tiny"]) == set(by_system)
    again = run(parse_config(["--config", str(recipe)]))  # finished: decodes nothing, same report
    assert again["benchmarks"] == summary["benchmarks"]
    assert len(_lines(tmp_path / "out/samples.jsonl")) == len(records)


def test_stop_strings_cut_every_systems_samples_by_the_same_rule(tiny_models, tmp_path):
    """Each system's sample with stop strings is its sample without them, cut before the first
    stop string it wrote (one character per token here, so the token ids are cut there too)."""
    import torch

    torch.set_num_threads(1)
    stops = ["1", "2", "3", "a", "e"]
    runs = {}
    for name, stop_strings in (("free", []), ("stopped", stops)):
        recipe = _write_recipe(tmp_path / name, tiny_models, tmp_path, samples=2, limit=2,
                               benchmarks=["tiny"], lam=[1.0], stop_strings=stop_strings,
                               max_new_tokens=12)
        run(parse_config(["--config", str(recipe)]))
        runs[name] = {(r.system, r.problem_id, r.sample_index): r
                      for r in read_records(tmp_path / name / "samples.jsonl", Sample)}
    assert runs["free"].keys() == runs["stopped"].keys()
    cut_systems = set()
    for key, free in runs["free"].items():
        stopped, hit = runs["stopped"][key], earliest_stop_string(free.text, stops)
        assert free.token_ids is not None and free.num_tokens == len(free.token_ids)
        if hit is None:
            assert (stopped.text, stopped.token_ids, stopped.stop) == (
                free.text, free.token_ids, free.stop)
            continue
        cut_systems.add(key[0])
        index, stop = hit
        assert stopped.text == free.text[:index] and stopped.stop == stop and stopped.finished
        assert stopped.token_ids == free.token_ids[:index + len(stop)]
    assert cut_systems == {"S", "S_RL", "L", "L+RAST(lam=1)", "L_RL"}


def test_a_speculative_run_logs_each_rast_systems_draft_acceptance(tiny_models, tmp_path, caplog):
    """With speculation on, each RAST system says how often its drafts were accepted and how
    many tokens a round gave (on a Qwen pair nobody knows that in advance); the other systems
    decode as without it."""
    torch.set_num_threads(1)
    logged, samples = {}, {}
    for name, speculative in (("plain", False), ("spec", True)):
        recipe = _write_recipe(tmp_path / name, tiny_models, tmp_path, samples=2, limit=2,
                               benchmarks=["tiny"], lam=[0.5, 1.0], speculative=speculative)
        caplog.clear()
        with caplog.at_level("INFO", logger="transfer.eval.evaluate"):
            run(parse_config(["--config", str(recipe)]))
        logged[name] = [r.getMessage() for r in caplog.records if "speculative:" in r.getMessage()]
        samples[name] = {(r.system, r.problem_id, r.sample_index): r.token_ids
                         for r in read_records(tmp_path / name / "samples.jsonl", Sample)}
    assert logged["plain"] == []
    assert [line.split(", speculative: draft acceptance ")[0] for line in logged["spec"]] == [
        "L+RAST(lam=0.5) on tiny", "L+RAST(lam=1) on tiny"]
    assert all(line.endswith(" tokens per round") for line in logged["spec"])
    assert {key: ids for key, ids in samples["spec"].items() if "RAST" not in key[0]} == {
        key: ids for key, ids in samples["plain"].items() if "RAST" not in key[0]}


@pytest.mark.slow
def test_tiny_family_shows_the_paper_effect(tmp_path):
    """`make transfer` on the trained tiny family: RAST moves tiny-l to the careful style.

    Trains tiny-s and tiny-l with GRPO first when their outputs are missing (`make train-small`,
    `make train-family`: tens of minutes); the 10-minute budget applies to `make transfer` alone.
    """
    config = parse_config(["--config", str(REPO / "recipes/tiny/rast/config_cpu.yaml")])
    for output, target in ((config.small_rl, "train-small"), (config.target_rl, "train-family")):
        if not (REPO / output / "rast_pair.json").is_file():
            trained = subprocess.run(["make", target, "ARGS=--report_to none"], cwd=REPO,
                                     capture_output=True, text=True, check=False)
            assert trained.returncode == 0, trained.stderr[-3000:]
    start = time.time()
    result = subprocess.run(["make", "transfer", f"ARGS=--output_dir {tmp_path / 'out'}"], cwd=REPO,
                            capture_output=True, text=True, timeout=1800, check=False)
    wall = time.time() - start
    assert result.returncode == 0, result.stderr[-3000:]
    tiny = json.loads((tmp_path / "out/summary.json").read_text())["benchmarks"]["tiny"]
    print(result.stdout[-3000:], f"\nwall time {wall:.0f} s")
    rast, base, small_rl = tiny["L+RAST(lam=1)"], tiny["L"], tiny["S_RL"]
    assert rast["problems"] == 300 and config.samples >= 4 and config.temperature == 1.0
    assert rast["avg"] - base["avg"] >= 0.3
    assert rast["avg"] > small_rl["avg"]
    assert rast["rr"] is not None and rast["rr"] >= 0.7
    assert rast["careful_share"] >= 0.9
    assert wall < 600, f"make transfer took {wall:.0f} s, the budget is 10 minutes on 2 cores"


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in wandb_inspect(run_dir, "--json").splitlines()]


def test_wandb_comparison_charts_side_by_side_tables_lineage_and_no_metadata_charts(
        uninterrupted):
    out, _ = uninterrupted
    summary = json.loads((out / "summary.json").read_text())
    runs = {}
    for run_dir in sorted((out / "wandb").glob("offline-run-*")):
        state = json.loads(wandb_inspect(run_dir, "--summary", "--json"))
        runs[state["config"].get("system", {}).get("name", "comparison")] = (run_dir, state)
    for name, (run_dir, state) in runs.items():
        history = [r["history"]["item"] for r in _records(run_dir) if r["type"] == "history"]
        keys = {key for item in history for key in item}
        # no table metadata as history (it would be charted): only metrics and their x axes
        assert not {k for k in keys if "ncols" in k or "nrows" in k or "per_problem" in k}, name
        assert all(not isinstance(v, dict) for item in history for v in item.values()), name
        assert state["config"]["inputs"] == {"small_rl": GRPO_ARTIFACT}, name  # lineage
    run_dir, state = runs["comparison"]
    history = [r["history"]["item"] for r in _records(run_dir) if r["type"] == "history"]
    by_lambda = {item["lambda"]: item for item in history if "lambda" in item}
    assert set(by_lambda) == {0.5, 1.0}  # one point per lambda, a line per benchmark
    for lam in (0.5, 1.0):
        for benchmark in ("tiny", "mul"):
            assert by_lambda[lam][f"accuracy_vs_lambda/{benchmark}"] == pytest.approx(
                summary["benchmarks"][benchmark][f"L+RAST(lam={lam:g})"]["avg"])
    by_k = {item["k"]: item for item in history if "k" in item}
    assert set(by_k) == {1, 2, 4}
    assert by_k[4]["pass_at_k/mul/L"] == pytest.approx(summary["benchmarks"]["mul"]["L"]["pass"]["4"])
    rr = [item for item in history if "benchmark_index" in item]
    rast = summary["benchmarks"]["tiny"]["L+RAST(lam=1)"]
    assert rr[0]["recovery_rate/L+RAST(lam=1)/rr_ci_low"] == pytest.approx(rast["rr_ci_low"])
    table = state["summary"]["side_by_side/tiny"]
    assert table["_type"] == "table-file" and table["nrows"] == 10 and table["ncols"] == 3 + 3 * 6
    content = json.loads((run_dir / "files" / table["path"]).read_text())
    assert content["columns"][:6] == ["problem_id", "problem", "gold", "S answer", "S correct",
                                      "S tokens"]
    first = dict(zip(content["columns"], content["data"][0]))
    sample = next(r for r in read_records(out / "samples.jsonl", Sample) if r.system == "L"
                  and r.benchmark == "tiny" and r.problem_id == first["problem_id"]
                  and r.sample_index == 0)
    assert (first["L answer"], first["L correct"], first["L tokens"]) == (
        sample.extracted, sample.correct, sample.num_tokens)
    assert first["problem"] and first["gold"]
    assert state["summary"]["plots/accuracy"]["_type"] == "image-file"
    system_run, system_state = runs["L"]
    assert system_state["summary"]["per_problem"]["_type"] == "table-file"
    ks = [item["k"] for r in _records(system_run) if r["type"] == "history"
          for item in [r["history"]["item"]]]
    assert ks == [1, 2, 4]  # the system's pass@k curve


def test_combinations_of_several_pairs_run_beside_each_pair_alone(tiny_models, tmp_path):
    """A combination system reaches the engine with every pair and its lambda: its one-term
    spelling of the swept pair decodes what a sweep at that lambda decodes, exactly; the two-pair
    sum decodes others; each gets its own name, signature and RR; a combination restating a
    swept lambda is refused (two systems, one set of deltas: analysis could not tell them apart)."""
    from tests.conftest import build_random_qwen2

    torch.set_num_threads(1)
    base_2 = build_random_qwen2(tmp_path / "base_2", hidden=48, ffn=96, seed=21)
    rl_2 = build_random_qwen2(tmp_path / "rl_2", hidden=48, ffn=96, seed=22, perturb_from=base_2)
    (Path(rl_2) / ARTIFACT_FILE).write_text(json.dumps({"artifact": GRPO_ARTIFACT}))
    first = f"({tiny_models['small_rl']} - {tiny_models['small_base']})"
    combinations = [f"0.5*{first}", f"1*{first} + 0.5*({rl_2} - {base_2})"]
    options = {"samples": 2, "limit": 3, "benchmarks": ["tiny"], "include_small_rl": False,
               "include_small_base": False}
    recipe = _write_recipe(tmp_path / "out", tiny_models, tmp_path, lam=[1.0],
                           combinations=combinations, report_to="wandb", **options)
    summary = run(parse_config(["--config", str(recipe)]))
    comparison = next(run_dir for run_dir in (tmp_path / "out/wandb").glob("offline-run-*")
                      if "system" not in json.loads(wandb_inspect(run_dir, "--summary", "--json"))["config"])
    config = json.loads(wandb_inspect(comparison, "--summary", "--json"))["config"]
    assert config["inputs"] == {"small_rl/rl_2": GRPO_ARTIFACT}  # the combination's checkpoint
    one, both = "L+RAST(0.5*small_rl)", "L+RAST(1*small_rl+0.5*rl_2)"
    assert list(summary["benchmarks"]["tiny"]) == ["L", "L+RAST(lam=1)", one, both, "L_RL"]
    texts = {}
    swept = (resolve_delta(tiny_models["small_rl"], tiny_models["small_base"], 1.0),)
    for record in read_records(tmp_path / "out/samples.jsonl", Sample):
        texts.setdefault(record.system, []).append(record.text)
        # selection is by role and deltas: the two-pair sum is not its first pair's system
        assert record.of("RAST", swept) == (record.system == "L+RAST(lam=1)")
    assert texts[one] != texts["L+RAST(lam=1)"] != texts[both]
    # the one-term combination is the sweep at its lambda, sample for sample
    sweep = _write_recipe(tmp_path / "sweep", tiny_models, tmp_path, lam=[0.5], report_to="none",
                          **options)
    run(parse_config(["--config", str(sweep)]))
    assert texts[one] == [r.text for r in read_records(tmp_path / "sweep/samples.jsonl", Sample)
                          if r.system == "L+RAST(lam=0.5)"]
    signatures = json.loads((tmp_path / "out/systems.json").read_text())
    assert [[d["base"], d["rl"], d["lam"]] for d in signatures[both]["deltas"]] == [
        [tiny_models["small_base"], tiny_models["small_rl"], 1.0], [base_2, rl_2, 0.5]]
    assert signatures[both]["combination"] is True
    assert signatures["L+RAST(lam=1)"]["combination"] is False
    assert {"rr", "rr_note", "rr_ci_low"} <= summary["benchmarks"]["tiny"][both].keys()
    with pytest.raises(UserError, match=r"two systems decode the same deltas as L\+RAST"):
        build_systems(parse_config(["--config", str(recipe), "--combinations", f"1*{first}"]))
    with pytest.raises(UserError, match=r"cannot read '1\*small_rl - base'; write each term"):
        TransferConfig(combinations=["1*small_rl - base"])
    with pytest.raises(UserError, match=r"cannot read '1\*a\+1\*b'"):  # ' + ' joins terms
        TransferConfig(combinations=["1*a+1*b"])


def test_make_transfer_with_another_tiny_recipe_trains_its_prerequisites_with_their_own():
    """RECIPE names the evaluation recipe only: the GRPO runs make transfer starts first keep
    theirs (the combined recipe was once handed to train.grpo, which refused it)."""
    recipe = "recipes/tiny/rast/config_cpu_combined.yaml"
    result = subprocess.run(["make", "--no-print-directory", "-n", "-o", "setup", "transfer",
                             f"RECIPE={recipe}"], cwd=REPO, capture_output=True, text=True,
                            check=True)
    lines = result.stdout.splitlines()
    assert any("train.grpo --config recipes/tiny/grpo/config_cpu.yaml" in line for line in lines)
    assert not any("train.grpo" in line and recipe in line for line in lines)
    assert lines[-1].endswith(f"transfer.eval.evaluate --config {recipe} ")
    qwen = "recipes/Qwen2.5-32B/rast/config_1.5B_7B_combined.yaml"  # no tiny training for it
    result = subprocess.run(["make", "--no-print-directory", "-n", "-o", "setup", "transfer",
                             f"RECIPE={qwen}"], cwd=REPO, capture_output=True, text=True,
                            check=True)
    assert "train.grpo" not in result.stdout and f"--config {qwen}" in result.stdout
