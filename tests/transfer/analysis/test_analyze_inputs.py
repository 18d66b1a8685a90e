"""transfer.analysis.analyze on bad inputs: one line and exit 2; a torn last line or duplicated
records in the samples file it reads are handled as transfer.eval.evaluate handles them."""

from pathlib import Path

import pytest
import torch
import yaml

from tests.bad_inputs import outcome
from train.tiny.tokenizer import build_tokenizer
from transfer.analysis import analyze
from transfer.eval.samples import Sample

TEXTS = ["Let's 7*8+0=56 4*8+5=37 \\boxed{376}", "\\boxed{82}", "\\boxed{1}", "Let's \\boxed{2}"]


def write_inputs(user_dir: Path, tiny_models: dict, records: str, **overrides) -> Path:
    """samples.jsonl holding `records` and a recipe analysing system L of it."""
    (user_dir / "samples.jsonl").write_text(records)
    recipe = {"target": tiny_models["large"], "small_rl": [tiny_models["small_rl"]],
              "small_base": [tiny_models["small_base"]], "trajectories": str(user_dir),
              "evaluation": str(user_dir), "system": "L", "limit": 2,
              "samples": 2, "output_dir": str(user_dir / "out"), "report_to": "none",
              **overrides}
    path = user_dir / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def sample_rows() -> list[str]:
    from train.data import load_benchmark

    ids = [p["id"] for p in load_benchmark("tiny", "test", 2)]
    tokenizer = build_tokenizer()  # one id per character; 0 ends a completion
    return [Sample("L", "L", "tiny", problem_id, index, 0, TEXTS[2 * p + index], None,
                   index == 0, "", len(TEXTS[2 * p + index]) + 1, True,
                   token_ids=tokenizer(TEXTS[2 * p + index], add_special_tokens=False)["input_ids"]
                   + [tokenizer.eos_token_id]).to_json()
            for p, problem_id in enumerate(ids) for index in range(2)]


BAD_INPUTS = [
    ("--limit 0", "error: limit must be >= 1 (leave it empty for every problem), got 0"),
    ("--lam nan", "error: lambda must be a finite number >= 0, got nan"),
    ("--lam -1", "error: lambda must be a finite number >= 0, got -1.0"),
    ("--device cuda",
     (f"error: device 'cuda': this torch sees no CUDA GPU (torch {torch.__version__}); use cpu, "
     f"or a CUDA build of torch on a GPU machine")),
    ("--trajectories {d}/missing_keys.jsonl",
     ("error: {d}/missing_keys.jsonl:2 is not a sample record (missing role, problem_id, "
      "sample_index, seed, text, extracted, correct, reason, num_tokens, finished): point to a "
      "samples.jsonl written by transfer.eval, or re-run the evaluation into a new output_dir")),
]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the --device cuda row expects no CUDA")
@pytest.mark.parametrize("flags, expected", BAD_INPUTS, ids=[f for f, _ in BAD_INPUTS])
def test_bad_input_fails_in_one_line_and_changes_no_file(flags, expected, tiny_models, tmp_path,
                                                         capsys):
    recipe = write_inputs(tmp_path, tiny_models, "\n".join(sample_rows()) + "\n")
    (tmp_path / "missing_keys.jsonl").write_text(
        sample_rows()[0] + '\n{"system": "L", "benchmark": "tiny"}\n')
    argv = f"--config {recipe} {flags.format(d=tmp_path)}"
    assert outcome(analyze.main, argv, capsys, tmp_path) == (2, expected.format(d=tmp_path), [])


def test_a_torn_last_line_and_duplicated_records_are_dropped_with_a_warning(tiny_models,
                                                                             tmp_path, caplog):
    rows = sample_rows()
    clean = analyze.main(["--config", str(write_inputs(tmp_path, tiny_models,
                                                       "\n".join(rows) + "\n"))])
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    # a killed evaluate leaves a torn last line; an old concurrent run, duplicated samples
    recipe = write_inputs(damaged, tiny_models, "\n".join(rows + rows[:2]) + "\n" + rows[3][:25])
    kept = (damaged / "samples.jsonl").read_bytes()
    with caplog.at_level("INFO"):
        summary = analyze.main(["--config", str(recipe)])
    assert f"{damaged / 'samples.jsonl'} holds 2 duplicated sample record(s)" in caplog.text
    assert f"skipping an incomplete last line of {damaged / 'samples.jsonl'}" in caplog.text
    assert (damaged / "samples.jsonl").read_bytes() == kept  # a reader does not repair the file
    summary["trajectories"].pop("source"), clean["trajectories"].pop("source")  # the two dirs
    for key in ("trajectories", "positions", "evaluation"):
        assert summary.get(key) == clean.get(key), key


def test_trajectories_of_another_prompt_or_an_evaluation_directory_as_output_are_refused(
        tiny_models, tmp_path, capsys):
    """The evaluation's config.json records its prompt_template: teacher-forcing its samples on
    another prompt is refused; so is writing the analysis into the evaluation's directory (it
    replaced its samples.jsonl, summary.json and config.json)."""
    import json

    recipe = write_inputs(tmp_path, tiny_models, "\n".join(sample_rows()) + "\n")
    (tmp_path / "config.json").write_text(json.dumps({"prompt_template": "qwen-boxed"}))
    assert outcome(analyze.main, f"--config {recipe}", capsys, tmp_path) == (
        2, (f"error: prompt_template 'tiny' is not the one the trajectories were decoded with "
           f"('qwen-boxed', {tmp_path / 'config.json'}): set prompt_template: qwen-boxed"), [])
    (tmp_path / "config.json").write_text(json.dumps({"prompt_template": "tiny"}))
    (tmp_path / "systems.json").write_text("{}")  # an evaluation's directory
    assert outcome(analyze.main, f"--config {recipe} --output_dir {tmp_path}", capsys,
                   tmp_path) == (
        2, (f"error: output_dir {tmp_path} holds the files of an evaluation (transfer.eval), which "
           f"this analysis would overwrite: give it a directory of its own"), [])


def test_coverage_of_read_samples_leaves_out_stop_ids_and_is_the_papers_only_when_greedy(
        tiny_models, tmp_path):
    """Every sample of sample_rows ended on its stop id: no such position is counted. The
    evaluation's config.json records its temperature: sampled L_RL trajectories are labelled
    as not the paper's measure, greedy ones are."""
    import json

    rows = [json.dumps({**json.loads(row), "system": "L_RL", "role": "L_RL"})
            for row in sample_rows()]
    recipe = write_inputs(tmp_path, tiny_models, "\n".join(rows) + "\n", system="L_RL")
    (tmp_path / "config.json").write_text(json.dumps({"prompt_template": "tiny",
                                                      "temperature": 1.0}))
    sampled = analyze.main(["--config", str(recipe)])
    coverage = sampled["path_coverage"]
    positions = [json.loads(line) for line in
                 (tmp_path / "out" / "positions.jsonl").read_text().splitlines()]
    hits = [row["covered/L"][:-1] for row in positions]  # the last is each one's stop id
    assert coverage["positions"] == sum(map(len, hits)) == sum(map(len, TEXTS))
    assert coverage["stop_positions_left_out"] == 4
    assert coverage["per_trajectory"]["L"] == pytest.approx(
        sum(sum(h) / len(h) for h in hits) / len(hits))
    assert coverage["pooled"]["L"] == pytest.approx(sum(map(sum, hits)) / sum(map(len, hits)))
    assert not coverage["paper_definition"]
    assert "sampled at temperature 1" in coverage["definition"]
    assert "95.2 %" not in (tmp_path / "out" / "report.md").read_text()

    (tmp_path / "config.json").write_text(json.dumps({"prompt_template": "tiny",
                                                      "temperature": 0.0}))
    greedy = analyze.main(["--config", str(recipe), "--output_dir", str(tmp_path / "greedy")])
    assert greedy["path_coverage"]["paper_definition"]
    assert greedy["path_coverage"]["pooled"] == coverage["pooled"]
    assert "95.2 %" in (tmp_path / "greedy" / "report.md").read_text()
