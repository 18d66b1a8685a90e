"""Decode a JSONL file of prompts with RAST (or the large model alone) into a JSONL of completions.

Input rows are {"prompt": ..., "id": optional}; output rows are {"id", "prompt", "sample_index",
"seed", "text", "token_ids", "finished", "stop"}, appended batch by batch so an interrupted run keeps
what it finished. --lam 0, or no --small_rl, decodes the large model alone through the same engine.

    python -m transfer.generate --target tiny-l --small_rl outputs/tiny-s-grpo --lam 1 \\
        --input prompts.jsonl --output out.jsonl --n 4 --max_new_tokens 64
"""

import argparse
import json
import logging
from pathlib import Path

from train.errors import UserError, exit_on_user_error
from transfer.decode.engine import CACHE_MODES, RastEngine, SamplingParams


def read_prompts(path: str) -> tuple[list[str], list[str]]:
    """(ids, prompts) of a JSONL file; a row without "id" gets its line number."""
    if not Path(path).is_file():
        raise UserError(f"input file {path} does not exist")
    ids, prompts = [], []
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            prompts.append(row["prompt"])
        except (json.JSONDecodeError, KeyError, TypeError):
            raise UserError(f"{path}:{number}: expected a JSON object with a \"prompt\" field"
                            ) from None
        ids.append(str(row.get("id", number)))
    if len(set(ids)) != len(ids):
        raise UserError(f"{path}: duplicate ids; give every row its own id (seeds derive from it)")
    return ids, prompts


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    # Flags are spelled as the recipes' fields (--max_new_tokens); --max-new-tokens works too.
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", "--large", required=True,
                        help="large base model L: registry name, directory or hub id")
    parser.add_argument("--small_base", "--small-base",
                        help="small model before RL (default: from rast_pair.json)")
    parser.add_argument("--small_rl", "--small-rl",
                        help="RL checkpoint or LoRA adapter directory of small_base")
    parser.add_argument("--lam", type=float, default=1.0, help="RL delta weight; 0 = large alone")
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
    parser.add_argument("--device", help="cpu, cuda, cuda:0 or auto (multi-GPU large model)")
    parser.add_argument("--small_device", "--small-device", help="default: last GPU or --device")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                        help="default: bfloat16 on GPU, float32 on CPU")
    parser.add_argument("--cache", choices=CACHE_MODES, default="auto",
                        help="KV cache per model: auto = CUDA graphs on one GPU, else dynamic")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the decode step (pays on long runs; see README)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    with exit_on_user_error():
        ids, prompts = read_prompts(args.input)
        if args.n < 1:
            raise UserError(f"--n must be >= 1, got {args.n}")
        params = SamplingParams(args.temperature, args.top_p, args.top_k, args.max_new_tokens,
                                tuple(args.stop_strings))
        engine = RastEngine.from_pretrained(args.target, args.small_base, args.small_rl,
                                            lam=args.lam, device=args.device, dtype=args.dtype,
                                            small_device=args.small_device, cache=args.cache,
                                            compile=args.compile)
        prompt_of = dict(zip(ids, prompts))
        output = Path(args.output)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text("")
        for batch in engine.generate_batches(prompts, params, n=args.n, seed=args.seed, keys=ids,
                                             stop_ids=args.stop_ids, batch_size=args.batch_size):
            with output.open("a") as sink:
                for c in batch:
                    sink.write(json.dumps({"id": c.key, "prompt": prompt_of[c.key],
                                           "sample_index": c.sample_index, "seed": c.seed,
                                           "text": c.text, "token_ids": c.token_ids,
                                           "finished": c.finished, "stop": c.stop}) + "\n")


if __name__ == "__main__":
    main()
