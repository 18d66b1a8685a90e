import dataclasses
import json
import re

import pytest
import torch

from train.errors import UserError
from train.models import load_model, load_tokenizer
from train.tiny import family
from train.tiny.family import MEMBERS, PretrainArgs, Size, build_member, pretrain, qwen2_config
from train.tiny.heldout import evaluate
from train.tiny.task import (
    all_problems,
    careful_solution,
    is_careful,
    problems,
    quick_guess,
    sample_corpus,
)
from train.tiny.tokenizer import build_tokenizer

MICRO = Size(16, 1, 2, 32)
CAREFUL_STEP = re.compile(r"(\d)\*(\d)\+(\d)=(\d+)")


def boxed(text: str) -> int:
    return int(re.search(r"\\boxed\{(\d+)\}", text).group(1))


def test_solution_styles_match_the_documented_examples():
    assert careful_solution(47, 8) == "Let's 7*8+0=56 4*8+5=37 \\boxed{376}"
    assert quick_guess(47, 8) == "\\boxed{326}"  # 4*8=32 then the units digit 6, carry 5 dropped
    assert is_careful(careful_solution(47, 8)) and not is_careful(quick_guess(47, 8))
    assert is_careful(" Let's 1") and not is_careful("376 Let's")


def test_careful_solutions_are_always_right_with_carries_written_out():
    for a, b in all_problems():
        text = careful_solution(a, b)
        (u, b1, c0, p1), (t, b2, c1, p2) = CAREFUL_STEP.findall(text)
        assert (int(u), int(t), int(b1), int(b2), int(c0)) == (a % 10, a // 10, b, b, 0)
        assert int(p1) == a % 10 * b and int(c1) == int(p1) // 10 and int(p2) == a // 10 * b + int(c1)
        assert boxed(text) == a * b


def test_quick_guesses_are_right_exactly_when_the_units_do_not_carry():
    right = [boxed(quick_guess(a, b)) == a * b for a, b in all_problems()]
    assert sum(right) == 198  # 22 of the 80 (units digit, b) pairs have units * b < 10
    assert all(r == (a % 10 * b < 10) for r, (a, b) in zip(right, all_problems()))


def test_corpus_is_a_quarter_careful_and_quick_guesses_mostly_wrong():
    corpus = sample_corpus(8000, seed=0, eos="<|endoftext|>")
    careful = [c for _, c in corpus if is_careful(c)]
    quick = [(p, c) for p, c in corpus if not is_careful(c)]
    assert all(c.endswith("<|endoftext|>") for _, c in corpus)
    assert abs(len(careful) / len(corpus) - 0.25) < 0.015
    quick_right = [boxed(c) == eval(p[3:p.index("=")]) for p, c in quick]
    assert abs(sum(quick_right) / len(quick) - 0.275) < 0.03
    assert corpus[0][0].startswith("Q: ") and corpus[0][0].endswith("=\nA: ")
    assert sample_corpus(50, seed=3) == sample_corpus(50, seed=3) != sample_corpus(50, seed=4)


def test_held_out_split_is_deterministic_and_disjoint_from_training():
    test, train = problems("test"), problems("train")
    assert len(test) == 300 and len(train) == 420
    assert set(test["problem"]).isdisjoint(train["problem"])
    assert len(set(test["problem"]) | set(train["problem"])) == 720
    assert list(test["id"]) == list(problems("test")["id"])
    row = test[0]
    assert set(row) == {"id", "problem", "answer"} and eval(row["problem"]) == int(row["answer"])
    strict = {p[3:p.index("=")] for p, _ in sample_corpus(8000, seed=0, split="train")}
    assert strict == set(train["problem"])  # --corpus-split train never shows a held-out problem
    default = {p[3:p.index("=")] for p, _ in sample_corpus(8000, seed=0)}
    assert default >= set(test["problem"])  # by default pretraining sees all (task.py says why)
    with pytest.raises(UserError, match="unknown split"):
        problems("validation")


def test_member_sizes_are_the_documented_parameter_counts():
    counts = {m: sum(p.numel() for p in family.Qwen2ForCausalLM(qwen2_config(s)).parameters())
              for m, s in MEMBERS.items()}
    assert counts == {"tiny-s": 48048, "tiny-m": 82496, "tiny-l": 607872}
    config = qwen2_config(MEMBERS["tiny-s"])
    assert config.vocab_size == 128 and config.tie_word_embeddings
    assert config.eos_token_id == config.pad_token_id == 0


def test_pretraining_reduces_the_loss_and_is_deterministic():
    torch.set_num_threads(1)
    args = PretrainArgs(steps=40, batch_size=16, warmup_steps=5)
    model, losses = pretrain(qwen2_config(MICRO), args)
    again, losses_again = pretrain(qwen2_config(MICRO), args)
    assert sum(losses[-5:]) / 5 < 0.85 * sum(losses[:5]) / 5
    assert losses == losses_again
    for (name, p), q in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(p, q), name
    other, _ = pretrain(qwen2_config(MICRO), PretrainArgs(steps=2, batch_size=16, seed=1))
    assert not torch.equal(other.model.embed_tokens.weight, model.model.embed_tokens.weight)


def test_built_member_round_trips_and_is_not_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setitem(MEMBERS, "tiny-s", MICRO)
    args = PretrainArgs(steps=3, batch_size=4, warmup_steps=1)
    path = build_member("tiny-s", tmp_path / "tiny-s", args)
    info = json.loads((path / "build.json").read_text())
    assert info["steps"] == 3 and info["seed"] == 0 and info["code_version"] == family.code_version()
    assert info["final_loss"] > 0 and info["train_seconds"] >= 0
    tokenizer = load_tokenizer(str(path))
    text = "Q: 47*8=\nA: Let's 7*8+0=56 4*8+5=37 \\boxed{376}"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    model = load_model(str(path))
    assert model.generation_config.eos_token_id == model.generation_config.pad_token_id == 0
    assert not (tmp_path / "tiny-s.partial").exists()

    monkeypatch.setattr(family, "pretrain", lambda *a, **k: pytest.fail("rebuilt a cached member"))
    assert build_member("tiny-s", path, args) == path
    with pytest.raises(pytest.fail.Exception):
        build_member("tiny-s", path, args, force=True)


def test_family_build_checks_the_cache_before_starting_processes(tmp_path, monkeypatch):
    monkeypatch.setitem(MEMBERS, "tiny-s", MICRO)
    monkeypatch.setitem(family.MODELS, "tiny-s",
                        dataclasses.replace(family.MODELS["tiny-s"], base_id=str(tmp_path / "tiny-s")))
    args = PretrainArgs(steps=2, batch_size=4, warmup_steps=1)
    path = build_member("tiny-s", args=args)
    monkeypatch.setattr(family, "ProcessPoolExecutor", lambda **k: pytest.fail("started a process"))
    assert family.build_family(["tiny-s"], args) == [path]


def test_cli_rejects_an_unknown_member():
    with pytest.raises(SystemExit) as exit_info:
        family.main(["--members", "tiny-xl"])
    assert exit_info.value.code == 2


class OracleModel(torch.nn.Module):
    """Answers every other prompt carefully (right) and the rest with the quick guess."""

    def __init__(self, tokenizer):
        super().__init__()
        self.tokenizer, self.calls = tokenizer, 0
        self.device = torch.device("cpu")

    def generate(self, input_ids, attention_mask, **kwargs):
        rows = []
        for ids in input_ids:
            a, b = map(int, re.search(r"(\d+)\*(\d+)", self.tokenizer.decode(ids)).groups())
            text = careful_solution(a, b) if self.calls % 2 == 0 else quick_guess(a, b)
            self.calls += 1
            rows.append(ids.tolist() + self.tokenizer(text)["input_ids"] + [0] * (40 - len(text)))
        return torch.tensor(rows)


def test_evaluate_grades_only_the_completion_and_counts_the_careful_style():
    rows = problems("test").select(range(20))
    model = OracleModel(build_tokenizer())
    result = evaluate(model, rows, samples=2, progress=False)
    quick_right = sum(boxed(quick_guess(*map(int, r["problem"].split("*")))) == int(r["answer"]) for r in rows)
    assert result == {"accuracy": (20 + quick_right) / 40, "careful_share": 0.5, "careful_accuracy": 1.0,
                      "n": 40}


def test_evaluate_on_a_random_model_is_deterministic_and_leaves_rng_alone(tiny_models):
    rows = problems("test").select(range(6))
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    result = evaluate(tiny_models["small_base"], rows, samples=2, seed=5, batch_size=4, progress=False)
    assert torch.equal(torch.rand(1), before)  # caller's RNG state untouched
    assert result["n"] == 12
    assert all(0.0 <= result[key] <= 1.0 for key in ("accuracy", "careful_share", "careful_accuracy"))
    model = load_model(tiny_models["small_base"])
    model.train()
    assert evaluate(model, rows, samples=2, seed=5, batch_size=4, progress=False) == result
    assert model.training


@pytest.mark.slow
def test_recipe_builds_a_small_member_with_the_latent_careful_style(tmp_path):
    # ~1.5-3 minutes on one core: the full 1500-step recipe for tiny-s, then 300 x 4 samples.
    path = build_member("tiny-s", tmp_path / "tiny-s")
    result = evaluate(str(path), progress=False)
    assert 0.3 < result["accuracy"] < 0.6  # imitating the corpus perfectly gives 0.456
    assert 0.1 < result["careful_share"] < 0.4 and result["careful_accuracy"] > 0.7
