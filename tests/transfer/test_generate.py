"""transfer.generate: bad inputs fail in one line and touch nothing; an interrupted run resumes to
the bytes of an uninterrupted one, decoding only what was missing."""

import json

import pytest
import torch

from tests.bad_inputs import outcome
from tests.conftest import build_random_qwen2
from transfer import generate
from transfer.decode.engine import RastEngine

PROMPTS = ["Q: 47*8=\nA: ", "Q: 3*4=\nA: ", "Q: 12*5=\nA: ", "Q: 9*9=\nA: ", "Q: 6*7=\nA: "]


# tiny models decode fastest on one thread (and the same on every machine)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def odd_models(tmp_path_factory):
    """A model with fewer embedding rows (64) than the 98-token tokenizer, an empty directory and
    a file where a model directory belongs."""
    root = tmp_path_factory.mktemp("odd_models")
    (root / "empty").mkdir()
    (root / "weights.safetensors").write_bytes(b"not a directory")
    return {"narrow": build_random_qwen2(root / "narrow", embedding_rows=64),
            "empty": str(root / "empty"), "file": str(root / "weights.safetensors")}


@pytest.fixture
def user_dir(tmp_path):
    """The user's files: prompts, a prompts file with a bad row, and an earlier run's output."""
    (tmp_path / "prompts.jsonl").write_text(
        "".join(json.dumps({"id": f"p{i}", "prompt": p}) + "\n" for i, p in enumerate(PROMPTS)))
    (tmp_path / "number.jsonl").write_text('{"prompt": "Q: 1*2=\\nA: "}\n{"prompt": 5}\n')
    (tmp_path / "long.jsonl").write_text(json.dumps({"prompt": "Q: " + "1" * 300}) + "\n")
    (tmp_path / "earlier.jsonl").write_text('{"id": "x", "text": "an earlier run I keep"}\n')
    return tmp_path


# (flags after --large/--input/--output, the expected error line); {d}: the user's directory.
MODELS = "--large {large} --small-base {small_base} --small-rl {small_rl}"
IO = "--input {d}/prompts.jsonl --output {d}/out.jsonl"
BAD_INPUTS = [
    (f"{MODELS} {IO} --lam nan --temperature 0",
     "error: lambda must be a finite number >= 0, got nan"),
    (f"{MODELS} {IO} --lam inf", "error: lambda must be a finite number >= 0, got inf"),
    # one rule for lambda everywhere: a negative one is refused here as in a recipe
    (f"{MODELS} {IO} --lam -0.5", "error: lambda must be a finite number >= 0, got -0.5"),
    (f"{MODELS} {IO} --lam 1 0.5",
     "error: 2 lambdas for 1 small RL model(s): give one per --small_rl, or one for all"),
    (f"--large {{large}} --small-base {{small_base}} {{small_base}} --small-rl {{small_rl}} {IO}",
     ("error: 2 small_base for 1 small_rl: give one base per RL model, or none to read each "
      "one's rast_pair.json")),
    (f"{MODELS} {IO} --temperature nan", "error: temperature must be a finite number, got nan"),
    (f"{MODELS} {IO} --temperature inf", "error: temperature must be a finite number, got inf"),
    (f"{MODELS} {IO} --top-p nan", "error: top_p must be a finite number, got nan"),
    (f"{MODELS} --input {{d}}/prompts.jsonl --output {{d}}/./prompts.jsonl",
     ("error: --output {d}/./prompts.jsonl is the --input file: the completions would overwrite "
     "the prompts; give another --output")),
    (f"{MODELS} --input {{d}}/number.jsonl --output {{d}}/earlier.jsonl",
     'error: {d}/number.jsonl:2: "prompt" is a int, not a string'),
    (f"{MODELS} --input {{d}}/prompts.jsonl --output {{d}}/earlier.jsonl",
     ("error: --output {d}/earlier.jsonl already holds rows that this command did not record "
     "settings for (earlier.jsonl.settings.json is missing): give another --output")),
    (f"{MODELS} --input {{d}}/long.jsonl --output {{d}}/out.jsonl --max-new-tokens 16",
     ("error: prompt '1' has 303 tokens, more than the 240 that the context of 256 positions "
     "leaves beside max_new_tokens 16 (1 prompt(s) too long): shorten it, lower max_new_tokens, "
     "or ask for truncation to its last 240 tokens (--truncate-prompts)")),
    (f"{MODELS} --input {{d}}/prompts.jsonl --output {{d}}",
     "error: --output {d} is a directory: give a .jsonl file path"),
    (f"{MODELS} --input {{d}}/prompts.jsonl --output /sys/rast-test/out.jsonl",
     ("error: cannot create the directory of --output /sys/rast-test/out.jsonl: Operation not "
     "permitted")),
    (f"{MODELS} --input {{d}}/prompts.jsonl --output /sys/out.jsonl",
     ("error: cannot write --output /sys/out.jsonl: Permission denied (/sys/out.jsonl.lock); "
     "choose a writable location")),
    (f"{MODELS} {IO} --device cuda",
     (f"error: device 'cuda': this torch sees no CUDA GPU (torch {torch.__version__}); use cpu, "
     f"or a CUDA build of torch on a GPU machine")),
    (f"{MODELS} {IO} --device gpu0",
     "error: device 'gpu0' is not a device: use cpu, cuda, cuda:<index> or auto"),
    (f"--large {{empty}} {IO}",
     ("error: {empty} is a directory without config.json or adapter_config.json, so not a model: "
     "give the directory that save_pretrained wrote (a train.grpo output_dir once it finished)")),
    (f"--large {{file}} {IO}",
     ("error: {file} is a file, not a model: give the directory that save_pretrained wrote (with "
     "config.json), a registry name or a hub id")),
    (f"--large {{narrow}} {IO}",
     ("error: {narrow} has 64 embedding rows, fewer than the 98 tokens of the tokenizer it is "
     "decoded with: it belongs to another tokenizer; use models of one family")),
    (f"--large {{large}} --small-base {{narrow}} --small-rl {{small_rl}} {IO}",
     ("error: {narrow} has 64 embedding rows, fewer than the 98 tokens of the tokenizer it is "
     "decoded with: it belongs to another tokenizer; use models of one family")),
]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the --device cuda row expects no CUDA")
@pytest.mark.parametrize("flags, expected", BAD_INPUTS,
                         ids=[f"{i}-{expected[7:40]}" for i, (_, expected) in enumerate(BAD_INPUTS)])
def test_bad_input_fails_in_one_line_and_changes_no_file(flags, expected, tiny_models, odd_models,
                                                         user_dir, capsys):
    names = {**tiny_models, **odd_models, "d": user_dir}
    code, line, changed = outcome(generate.main, flags.format(**names), capsys, user_dir)
    assert (code, line, changed) == (2, expected.format(**names), [])


def _generate(tiny_models, output, *flags):
    generate.main([
        "--large", tiny_models["large"], "--small-base", tiny_models["small_base"],
        "--small-rl", tiny_models["small_rl"], "--lam", "1.5", "--input",
        str(output.parent / "prompts.jsonl"), "--output", str(output), "--n", "2",
        "--batch-size", "4", "--max-new-tokens", "6", "--seed", "3", *flags])


class Interrupt(Exception):
    pass


def test_resume_decodes_only_missing_batches_and_ends_identical(tiny_models, user_dir,
                                                                monkeypatch):
    full = user_dir / "full.jsonl"
    _generate(tiny_models, full)
    rows = full.read_text().splitlines()
    assert len(rows) == len(PROMPTS) * 2

    real = RastEngine.generate_batches
    decoded = []

    def interrupted_after(batches):
        def generate_batches(self, prompts, *args, **kwargs):
            decoded.append(list(prompts))
            for number, batch in enumerate(real(self, prompts, *args, **kwargs)):
                if number == batches:
                    raise Interrupt  # the process dies after `batches` batches were appended
                yield batch
        return generate_batches

    output = user_dir / "out.jsonl"
    monkeypatch.setattr(RastEngine, "generate_batches", interrupted_after(1))
    with pytest.raises(Interrupt):
        _generate(tiny_models, output)
    assert output.read_text().splitlines() == rows[:4]  # one batch: 2 prompts x 2 samples
    with open(output, "a") as file:
        file.write(rows[4][:20])  # what a kill inside write() leaves

    monkeypatch.setattr(RastEngine, "generate_batches", interrupted_after(None))
    _generate(tiny_models, output)
    assert decoded[-1] == PROMPTS[2:]  # the first batch was not decoded again
    assert output.read_bytes() == full.read_bytes()

    _generate(tiny_models, output)  # finished: loads no model, decodes nothing, changes nothing
    assert len(decoded) == 2 and output.read_bytes() == full.read_bytes()


def test_resume_with_other_settings_is_refused_and_changes_nothing(tiny_models, user_dir,
                                                                    capsys):
    output = user_dir / "out.jsonl"
    _generate(tiny_models, output)
    kept = output.read_bytes()
    with pytest.raises(SystemExit):
        _generate(tiny_models, output, "--temperature", "0.5")
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: --output {output} holds completions decoded with other settings (temperature: "
        f"1.0 -> 0.5); give another --output or the old settings")
    assert output.read_bytes() == kept
