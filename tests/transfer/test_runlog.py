"""transfer.runlog: the one resume rule of transfer.generate and transfer.eval.evaluate."""

import json

import pytest

from transfer.runlog import changed_settings, chunks_to_do, write_json_atomic

KEYS = [f"k{i}" for i in range(7)]


def test_chunks_are_fixed_batches_of_whole_prompts_and_done_ones_are_skipped():
    # batch_size 4, n 2: 2 prompts a chunk, the decoder's batches: [k0 k1] [k2 k3] [k4 k5] [k6]
    todo, total = chunks_to_do(KEYS, 2, 4, set())
    assert todo == [["k0", "k1"], ["k2", "k3"], ["k4", "k5"], ["k6"]] and total == 4
    done = {(key, i) for key in ("k0", "k1", "k2", "k3", "k4") for i in range(2)} | {("k5", 0)}
    todo, total = chunks_to_do(KEYS, 2, 4, done)
    # a chunk missing one sample is decoded whole (same batch mates, same floats)
    assert todo == [["k4", "k5"], ["k6"]] and total == 4
    done |= {("k5", 1), ("k6", 0), ("k6", 1)}
    assert chunks_to_do(KEYS, 2, 4, done) == ([], 4)


def test_more_samples_than_the_batch_holds_give_one_prompt_a_chunk():
    assert chunks_to_do(KEYS[:3], 8, 4, set()) == ([["k0"], ["k1"], ["k2"]], 3)


def test_shards_own_every_world_size_th_chunk_and_together_cover_all():
    shards = [chunks_to_do(KEYS, 2, 4, set(), (rank, 3)) for rank in range(3)]
    assert shards == [([["k0", "k1"], ["k6"]], 2), ([["k2", "k3"]], 1), ([["k4", "k5"]], 1)]
    assert sorted(k for chunks, _ in shards for chunk in chunks for k in chunk) == KEYS


def test_changed_settings_name_each_change_and_read_a_missing_key_as_its_default(tmp_path):
    stored = {"temperature": 1.0, "seed": 0}
    assert changed_settings(stored, {"temperature": 1.0, "seed": 0}) == ""
    assert changed_settings(stored, {"temperature": 0.5, "seed": 1}) == (
        "temperature: 1.0 -> 0.5, seed: 0 -> 1")
    assert changed_settings(stored, {"speculative": False}, {"speculative": False}) == ""
    assert changed_settings(stored, {"speculative": True}, {"speculative": False}) == (
        "speculative: False -> True")
    path = tmp_path / "settings.json"
    write_json_atomic(path, stored)
    assert json.loads(path.read_text()) == stored and not list(tmp_path.glob("*.partial"))


def test_the_decode_cli_and_evaluation_share_the_run_log():
    from transfer import generate
    from transfer.eval import evaluate

    for module in (generate, evaluate):
        assert module.chunks_to_do is chunks_to_do


def test_a_full_disk_while_appending_is_one_line_and_the_resume_is_exact(tmp_path, monkeypatch):
    import builtins

    from train.errors import UserError
    from transfer.eval.samples import Sample
    from transfer.runlog import SampleLog

    def sample(i):
        return Sample("L", "L", "tiny", f"p{i}", 0, 0, "text", "1", True, "ok", 3, True)

    log = SampleLog(tmp_path / "samples.jsonl", Sample)
    log.append([sample(0)])
    real_open = builtins.open

    class Full:
        def __init__(self, handle):
            self.handle = handle

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

        def write(self, text):  # half a record reaches the disk, then it is full
            self.handle.write(text[:len(text) // 2])
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(builtins, "open", lambda path, *a, **k: Full(real_open(path, *a, **k)))
    with pytest.raises(UserError, match="No space left on device; free space"):
        log.append([sample(1)])
    monkeypatch.setattr(builtins, "open", real_open)
    resumed = SampleLog(tmp_path / "samples.jsonl", Sample)  # the torn half line is cut
    assert [r.problem_id for r in resumed.records] == ["p0"]
    resumed.append([sample(1)])
    assert [r.problem_id for r in SampleLog(tmp_path / "samples.jsonl", Sample).records] == [
        "p0", "p1"]
