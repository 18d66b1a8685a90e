"""samples.jsonl records carry their system's deltas; files written before they did still read,
and systems.json signatures of the old form (small_base / small_rl / lam) still resume."""

import json

import pytest

from train.errors import UserError
from transfer.deltas import resolve_delta
from transfer.eval.evaluate import System, TransferConfig, build_systems, check_signatures
from transfer.eval.samples import Sample
from transfer.runlog import read_records


def _sample(system="L+RAST(lam=0.5)", role="RAST", deltas=()) -> Sample:
    return Sample(system, role, "tiny", "p1", 0, 7, "text", "1", True, "ok", 3, True,
                  token_ids=[5, 0], stop=0, deltas=deltas)


def test_a_sample_round_trips_with_its_deltas_and_still_writes_lam(tiny_models, tmp_path):
    rl, base = tiny_models["small_rl"], tiny_models["small_base"]
    deltas = (resolve_delta(rl, base, 0.5), resolve_delta(rl, base, 2.0))
    sample = _sample(deltas=deltas)
    row = json.loads(sample.to_json())
    assert row["lam"] == 0.5  # the first delta's, for readers of earlier files
    assert row["deltas"] == [d.to_dict() for d in deltas]
    assert list(row)[:3] == ["system", "role", "lam"]
    again = Sample.from_json(sample.to_json(), "x")
    assert again == sample and again.deltas == deltas and isinstance(again.deltas, tuple)
    assert again.of("RAST", deltas) and not again.of("RAST", deltas[:1])
    assert not again.of("L") and not _sample(deltas=deltas[:1]).of("RAST", deltas)
    alone = _sample("L", "L")
    assert json.loads(alone.to_json())["lam"] == 0.0 and alone.of("L")
    assert Sample.from_json(alone.to_json(), "x") == alone


def test_a_line_written_before_samples_had_deltas_reads_and_keeps_its_lam(tmp_path):
    legacy = {"system": "L+RAST(lam=0.5)", "role": "RAST", "lam": 0.5, "benchmark": "tiny",
              "problem_id": "p1", "sample_index": 0, "seed": 7, "text": "t", "extracted": "1",
              "correct": True, "reason": "ok", "num_tokens": 3, "finished": True}
    path = tmp_path / "samples.jsonl"
    path.write_text(json.dumps(legacy) + "\n")
    (record,) = read_records(path, Sample)
    assert record.deltas is None  # not known: never taken for () (a model alone)
    assert json.loads(record.to_json()) == legacy  # merge rewrites it as it was
    assert not record.of("RAST", ()) and record.of("L_RL") is False


def _old_signature(system: dict, config: TransferConfig) -> dict:
    """A systems.json entry as versions before deltas wrote it: describe() was the name and the
    System fields small_base, small_rl, lam (and pairs for a combination), then the settings."""
    decoding = {key: getattr(config, key) for key in ("temperature", "top_p", "max_new_tokens",
                                                       "seed", "prompt_template", "batch_size",
                                                       "split", "stop_strings", "stop_ids",
                                                       "speculative")}
    return {**system, **decoding}


def test_systems_json_of_the_old_form_still_resumes(tiny_models, tmp_path):
    rl, base, large = tiny_models["small_rl"], tiny_models["small_base"], tiny_models["large"]
    config = TransferConfig(target=large, small_rl=rl, small_base=base, lam=[0.5, 1.0],
                            combinations=[f"1*({rl} - {base}) + 0.5*({rl} - {base})"])
    systems = build_systems(config)
    names = [s.name for s in systems]
    assert names == ["S_RL", "L", "L+RAST(lam=0.5)", "L+RAST(lam=1)",
                     "L+RAST(1*small_rl+0.5*small_rl)"]
    old = {
        "S_RL": {"name": "S_RL", "role": "S_RL", "target": rl, "small_base": None,
                 "small_rl": None, "lam": 0.0},
        "L": {"name": "L", "role": "L", "target": large, "small_base": None, "small_rl": None,
              "lam": 0.0},
        "L+RAST(lam=0.5)": {"name": "L+RAST(lam=0.5)", "role": "RAST", "target": large,
                            "small_base": base, "small_rl": rl, "lam": 0.5},
        "L+RAST(lam=1)": {"name": "L+RAST(lam=1)", "role": "RAST", "target": large,
                          "small_base": base, "small_rl": rl, "lam": 1.0},
        "L+RAST(1*small_rl+0.5*small_rl)": {
            "name": "L+RAST(1*small_rl+0.5*small_rl)", "role": "RAST", "target": large,
            "small_base": base, "small_rl": rl, "lam": 1.0,
            "pairs": [[base, rl, 1.0], [base, rl, 0.5]]}}
    stored = {name: _old_signature(entry, config) for name, entry in old.items()}
    (tmp_path / "systems.json").write_text(json.dumps(stored, indent=2))
    check_signatures(tmp_path, systems, config)  # the same systems: resumes
    rewritten = json.loads((tmp_path / "systems.json").read_text())
    assert rewritten["L+RAST(lam=0.5)"]["deltas"] == [resolve_delta(rl, base, 0.5).to_dict()]

    (tmp_path / "systems.json").write_text(json.dumps(stored, indent=2))
    with pytest.raises(UserError, match=r"temperature: 1.0 -> 0.5"):
        check_signatures(tmp_path, systems, TransferConfig(
            target=large, small_rl=rl, small_base=base, lam=[0.5, 1.0], temperature=0.5))
    # an old entry of another pair under a system's name is another system: refused
    stored["L+RAST(lam=0.5)"]["small_rl"] = base
    (tmp_path / "systems.json").write_text(json.dumps(stored, indent=2))
    with pytest.raises(UserError, match=r"already holds samples of L\+RAST\(lam=0.5\) with other "
                                        r"settings \(deltas: "):
        check_signatures(tmp_path, systems, config)


def test_a_system_is_named_by_its_deltas_and_describes_them(tiny_models):
    rl, base = tiny_models["small_rl"], tiny_models["small_base"]
    delta = resolve_delta(rl, base, 0.5)
    system = System("RAST", "tiny-l", (delta,))
    assert system.name == "L+RAST(lam=0.5)"
    assert system.describe() == {"name": "L+RAST(lam=0.5)", "role": "RAST", "target": "tiny-l",
                                 "deltas": [delta.to_dict()], "combination": False}
    combined = System("RAST", "tiny-l", (delta, delta.with_lam(2)), combination=True)
    assert combined.name == "L+RAST(0.5*small_rl+2*small_rl)"
    assert System("L", "tiny-l").describe()["deltas"] == []
