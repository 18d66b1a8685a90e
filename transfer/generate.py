"""Decode a JSONL file of prompts with RAST (or the large model alone) into a JSONL of completions.

Input rows are {"prompt": ..., "id": optional}; output rows are {"id", "prompt", "sample_index",
"seed", "text", "token_ids", "finished", "stop"}, appended and fsynced batch by batch. --lam 0, or no
--small_rl, decodes the large model alone through the same engine.

Re-running with the same --output resumes as transfer.eval.evaluate does: rows already there are
kept untouched, prompts are decoded in the same fixed batches with the same per-sample seeds, and
only missing samples are appended, so an interrupted run ends byte-identical to an uninterrupted
one. <output>.settings.json records the decoding settings and a resume with other settings is
refused; <output>.lock keeps a second concurrent run out.

    python -m transfer.generate --target tiny-l --small_rl outputs/tiny-s-grpo --lam 1 \\
        --input prompts.jsonl --output out.jsonl --n 4 --max_new_tokens 64

Several small pairs add their deltas (`--small_rl A B --lam 1 0.5`: z_L + 1 d_A + 0.5 d_B).
"""

import argparse
import json
import logging
import os
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from train.data import read_rows
from train.errors import UserError, exit_on_user_error
from transfer.decode.backends import open_decoder
from transfer.decode.cached_model import CACHE_MODES
from transfer.decode.decoder import ENGINES, LoadOptions, SamplingParams
from transfer.decode.rast import sample_seed
from transfer.deltas import Delta, add_pair_arguments, deltas_from_arguments
from transfer.runlog import (
    SampleLog,
    changed_settings,
    chunks_to_do,
    output_lock,
    parse_record,
    write_json_atomic,
)

logger = logging.getLogger(__name__)

# What the rows of an output were decoded with; a resume must match all of it. n and batch_size
# fix which prompts share a batch, and padding changes the floats.
SETTINGS = ("target", "small_base", "small_rl", "lam", "n", "temperature", "top_p", "top_k",
            "max_new_tokens", "seed", "batch_size", "stop_ids", "stop_strings", "dtype",
            "truncate_prompts", "speculative", "engine")  # speculation and the engine sample
# other tokens (the draft count k does not); a settings file of an older version lacks "engine"
SETTING_DEFAULTS = {"engine": "hf"}


@dataclass
class Row:
    """A line of the output: one sample of one prompt."""

    id: str
    prompt: str
    sample_index: int
    seed: int
    text: str
    token_ids: list[int]
    finished: bool  # False: cut at max_new_tokens
    stop: int | str | None = None  # what ended it: a stop id or stop string; None: the length

    @property
    def key(self) -> tuple[str, int]:
        return self.id, self.sample_index

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, line: bytes | str, where: str) -> "Row":
        return parse_record(cls, line, where, {"stop"}, "give another --output")


def read_prompts(path: str) -> tuple[list[str], list[str]]:
    """(ids, prompts) of a JSONL file (train.data.read_rows: any UTF-8 JSON line, a byte order
    mark, U+2028 inside strings); a row without "id" gets its line number. Empty prompts,
    duplicate ids and an input without rows are refused up front, naming the rows."""
    if not Path(path).exists():
        raise UserError(f"input file {path} does not exist")
    ids, prompts = [], []
    for number, row in read_rows(Path(path)):
        prompt = row.get("prompt") if isinstance(row, dict) else None
        if prompt is None:
            raise UserError(f"{path}:{number}: expected a JSON object with a \"prompt\" field")
        if not isinstance(prompt, str):
            raise UserError(f"{path}:{number}: \"prompt\" is a {type(prompt).__name__}, not a "
                            f"string")
        if not prompt:
            raise UserError(f"{path}:{number}: \"prompt\" is empty: every prompt needs text")
        prompts.append(prompt)
        ids.append(str(row.get("id", number)))
    if not ids:
        raise UserError(f"input file {path} has no rows: write one {{\"prompt\": ...}} per line")
    repeated = sorted(key for key, count in Counter(ids).items() if count > 1)
    if repeated:
        raise UserError(f"{path}: duplicate ids {', '.join(map(repr, repeated[:5]))}; give every "
                        f"row its own id (seeds derive from it)")
    return ids, prompts


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    # Flags are spelled as the recipes' fields (--max_new_tokens); --max-new-tokens works too.
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_pair_arguments(parser)
    parser.add_argument("--input", required=True, help="JSONL of {'prompt', optional 'id'}")
    parser.add_argument("--output", required=True, help="JSONL of completions, appended per batch")
    parser.add_argument("--n", type=int, default=1, help="samples per prompt")
    parser.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    parser.add_argument("--top_p", "--top-p", type=float, default=1.0)
    parser.add_argument("--top_k", "--top-k", type=int, default=0, help="0 = off")
    parser.add_argument("--max_new_tokens", "--max-new-tokens", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch_size", "--batch-size", type=int, default=16,
                        help="sequences decoded together")
    parser.add_argument("--stop_ids", "--stop-ids", type=int, nargs="*",
                        help="default: the models' eos ids")
    parser.add_argument("--stop_strings", "--stop-strings", nargs="*", default=[],
                        help="stop when the text contains one; the text is cut before it "
                             "(token_ids keep the token that completed it)")
    parser.add_argument("--engine", choices=ENGINES, default="hf",
                        help="hf: this project's engine (exact reference); vllm: vLLM (paged KV "
                             "memory, continuous batching, tensor parallelism)")
    parser.add_argument("--tensor_parallel_size", "--tensor-parallel-size", type=int, default=1,
                        help="--engine vllm: GPUs each model is split over")
    parser.add_argument("--max_model_len", "--max-model-len", type=int,
                        help="--engine vllm: positions per sequence (default: the context)")
    parser.add_argument("--device", help="cpu, cuda, cuda:0 or auto (multi-GPU large model)")
    parser.add_argument("--small_device", "--small-device", help="default: last GPU or --device")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                        help="default: bfloat16 on GPU, float32 on CPU")
    parser.add_argument("--cache", choices=CACHE_MODES, default="auto",
                        help="KV cache per model: auto = CUDA graphs on one GPU, else dynamic")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the decode step (pays on long runs; see README)")
    parser.add_argument("--truncate_prompts", "--truncate-prompts", action="store_true",
                        help="keep the last tokens of a prompt too long for the context beside "
                             "--max_new_tokens (default: refuse it)")
    parser.add_argument("--speculative", action="store_true",
                        help="S_RL drafts, the target verifies several tokens per forward (same "
                             "distribution, other samples; see README)")
    parser.add_argument("--draft_tokens", "--draft-tokens", type=int,
                        help="with --speculative: drafts per round (default: adaptive; 4 on vllm); the "
                             "samples do not depend on it")
    return parser.parse_args(argv)


def check_output(args: argparse.Namespace) -> Path:
    """The output path, refused when it is the input or cannot be written."""
    output = Path(args.output)
    if output.resolve() == Path(args.input).resolve():
        raise UserError(f"--output {args.output} is the --input file: the completions would "
                        f"overwrite the prompts; give another --output")
    if output.is_dir():
        raise UserError(f"--output {args.output} is a directory: give a .jsonl file path")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create the directory of --output {args.output}: "
                        f"{err.strerror}") from None
    if output.exists() and not os.access(output, os.W_OK):
        raise UserError(f"--output {args.output} is not writable: choose a writable path")
    return output


def check_settings(output: Path, settings: dict) -> None:
    """Refuse to resume rows decoded with other settings; record them for a new output."""
    path = output.with_name(output.name + ".settings.json")
    has_rows = output.exists() and output.stat().st_size > 0
    if path.is_file():
        changes = changed_settings(json.loads(path.read_text()), settings, SETTING_DEFAULTS)
        if has_rows and changes:
            raise UserError(f"--output {output} holds completions decoded with other settings "
                            f"({changes}); give another --output or the old settings")
    elif has_rows:
        raise UserError(f"--output {output} already holds rows that this command did not "
                        f"record settings for ({path.name} is missing): give another --output")
    write_json_atomic(path, settings)


def done_samples(log: SampleLog, prompt_of: dict[str, str], args: argparse.Namespace) -> set:
    """(id, sample_index) of the rows already in the output, each checked against the input."""
    done = set()
    for row in log.records:
        key, index = row.key
        if prompt_of.get(key) != row.prompt or not isinstance(index, int) or not (
                0 <= index < args.n and row.seed == sample_seed(args.seed, key, index)):
            raise UserError(f"{log.path} holds a row that is not a completion of this --input "
                            f"with these settings (id {key!r}, sample {index}): give another "
                            f"--output")
        done.add((key, index))
    return done


def _one_or_list(values: list | None):
    """A flag's values: one value as itself (settings of one-pair runs read as before), several
    as a list."""
    return values[0] if values and len(values) == 1 else values


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    with exit_on_user_error():
        output = check_output(args)
        ids, prompts = read_prompts(args.input)
        if args.n < 1:
            raise UserError(f"--n must be >= 1, got {args.n}")
        deltas = deltas_from_arguments(args, "decode the large model alone")
        # as the settings of one-pair runs were always recorded: a single value as itself
        args.small_base, args.small_rl, args.lam = (_one_or_list(args.small_base),
                                                    _one_or_list(args.small_rl),
                                                    _one_or_list(args.lam))
        if args.draft_tokens is not None and not (args.speculative and 0 <= args.draft_tokens
                                                  <= 64):
            raise UserError(f"--draft_tokens needs --speculative and a value in [0, 64], got "
                            f"{args.draft_tokens}")
        params = SamplingParams(args.temperature, args.top_p, args.top_k, args.max_new_tokens,
                                stop_strings=tuple(args.stop_strings),
                                truncate_prompts=args.truncate_prompts)
        with output_lock(output.with_name(output.name + ".lock"), f"--output {args.output}"):
            check_settings(output, {key: getattr(args, key) for key in SETTINGS})
            decode(args, deltas, output, ids, prompts, params)


def decode(args: argparse.Namespace, deltas: tuple[Delta, ...], output: Path, ids: list[str],
           prompts: list[str], params: SamplingParams) -> None:
    """Decode the batches that still miss a sample and append those samples."""
    prompt_of = dict(zip(ids, prompts))
    log = SampleLog(output, Row)  # cuts a torn last line a kill left
    done = done_samples(log, prompt_of, args)
    # Whole chunks of the full input, as the decoder batches them: every prompt gets the same
    # batch mates, hence the same floats, as in an uninterrupted run.
    todo = [key for chunk in chunks_to_do(ids, args.n, args.batch_size, done)[0]
            for key in chunk]
    if done:
        logger.info("%s holds %d of %d samples: decoding the %d prompts of the batches that miss "
                    "one", output, len(done), len(ids) * args.n, len(todo))
    if not todo:
        return
    decoder = open_decoder(args.target, deltas, LoadOptions(
        engine=args.engine, device=args.device, small_device=args.small_device, dtype=args.dtype,
        cache=args.cache, compile=args.compile, speculative=args.speculative,
        draft_tokens=args.draft_tokens, tensor_parallel_size=args.tensor_parallel_size,
        max_model_len=args.max_model_len))
    for batch in decoder.generate_batches([prompt_of[key] for key in todo], params, n=args.n,
                                         seed=args.seed, keys=todo, stop_ids=args.stop_ids,
                                         batch_size=args.batch_size):
        log.append([Row(c.key, prompt_of[c.key], c.sample_index, c.seed, c.text, c.token_ids,
                        c.finished, c.stop) for c in batch if (c.key, c.sample_index) not in done])


if __name__ == "__main__":
    main()
