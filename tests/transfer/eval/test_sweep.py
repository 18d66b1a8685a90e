"""A lambda sweep is a first-class operation of the decoder seam: evaluation loads one decoder
for a recipe's swept pair and reaches every other lambda through `with_lams`."""

import json
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).parent))
from fake_engine import FakeEngine

from transfer.eval.evaluate import parse_config, run
from transfer.eval.samples import Sample
from transfer.runlog import read_records


def _recipe(tmp_path: Path, tiny_models: dict, name: str = "recipe", **overrides) -> Path:
    recipe = {"target": tiny_models["large"], "small_base": tiny_models["small_base"],
              "small_rl": tiny_models["small_rl"], "lam": [0.5, 1.0, 2.0],
              "include_small_rl": False, "include_small_base": False, "samples": 2,
              "benchmarks": ["tiny"], "limit": 4, "batch_size": 4, "max_new_tokens": 8,
              "output_dir": str(tmp_path / "out"), "report_to": "none", **overrides}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_a_three_lambda_sweep_loads_one_decoder_and_decodes_as_fresh_ones(tiny_models,
                                                                         tmp_path):
    loaded, swept = [], []

    class Recording(FakeEngine):
        def with_lams(self, lams):
            swept.append(list(lams))
            return super().with_lams(lams)

    def make_decoder(system, config):
        loaded.append(system.name)
        return Recording(system)

    summary = run(parse_config(["--config", str(_recipe(tmp_path, tiny_models))]),
                  make_decoder=make_decoder)
    rast = [name for name in loaded if "RAST" in name]
    assert rast == ["L+RAST(lam=0.5)"]  # make_decoder once for the three lambdas
    assert loaded == ["L", "L+RAST(lam=0.5)"] and swept == [[1.0], [2.0]]
    accuracy = {name: m["avg"] for name, m in summary["benchmarks"]["tiny"].items()}
    assert list(accuracy) == ["L", "L+RAST(lam=0.5)", "L+RAST(lam=1)", "L+RAST(lam=2)"]
    records = read_records(tmp_path / "out" / "samples.jsonl", Sample)
    by_system = {}
    for record in records:
        by_system.setdefault(record.system, []).append(record)
    for name, lam in (("L+RAST(lam=1)", 1.0), ("L+RAST(lam=2)", 2.0)):
        assert {r.deltas[0].lam for r in by_system[name]} == {lam}  # each sample its own lam

    # the same recipe, every lambda on a decoder loaded for it: the same samples
    def rast_rows(output_dir: Path) -> list[dict]:
        rows = map(json.loads, (output_dir / "samples.jsonl").read_text().splitlines())
        return [row for row in rows if row["role"] == "RAST"]

    fresh = []
    for lam in (0.5, 1.0, 2.0):
        recipe = _recipe(tmp_path, tiny_models, f"fresh-{lam}", lam=[lam],
                         output_dir=str(tmp_path / f"fresh-{lam}"))
        run(parse_config(["--config", str(recipe)]),
            make_decoder=lambda system, config: FakeEngine(system))
        fresh += rast_rows(tmp_path / f"fresh-{lam}")
    swept_rows = rast_rows(tmp_path / "out")
    assert len(swept_rows) == 3 * 4 * 2
    assert swept_rows == fresh


def test_a_sweep_that_resumes_past_its_first_lambda_loads_for_the_next(tiny_models, tmp_path):
    """Finished systems are skipped without loading: a decoder is loaded for the first
    unfinished lambda and swept from there."""
    recipe = _recipe(tmp_path, tiny_models)
    run(parse_config(["--config", str(recipe), "--lam", "0.5"]),
        make_decoder=lambda system, config: FakeEngine(system))
    loaded = []

    def make_decoder(system, config):
        loaded.append(system.name)
        return FakeEngine(system)

    run(parse_config(["--config", str(recipe)]), make_decoder=make_decoder)
    assert loaded == ["L+RAST(lam=1)"]
