"""The embedded tiny model family: three Qwen2 models pretrained from scratch on the multiplication task.

They share the character tokenizer, are built on CPU in minutes, deterministically from a seed,
and are cached under RAST_HOME/tiny/<member> (RAST_HOME defaults to ~/.cache/rast), so they are
built once. Their corpus (train/tiny/task.py) plants a careful style that is always right next to
a quick one that mostly is not: GRPO has a latent skill to activate and RAST one to transfer.

    python -m train.tiny.family                         # build all three (`make tiny-family`)
    python -m train.tiny.family --members tiny-s --force
    python -m train.tiny.family --evaluate tiny-s tiny-m tiny-l
"""

import argparse
import hashlib
import inspect
import json
import logging
import random
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import Qwen2Config, Qwen2ForCausalLM

from train.errors import UserError, exit_on_user_error
from train.models import MODELS, check_rast_home, load_model, load_tokenizer
from train.tiny.heldout import print_table
from train.tiny.task import sample_corpus
from train.tiny.tokenizer import build_tokenizer

logger = logging.getLogger(__name__)

EMBEDDING_ROWS = 128  # the 98-token character vocabulary padded to a multiple of 64
BUILD_INFO = "build.json"


@dataclass(frozen=True)
class Size:
    hidden: int
    layers: int
    heads: int
    ffn: int


# Parameter counts with tied embeddings and 2 key/value heads (GQA, as in Qwen2.5): 48k, 82k, 608k.
MEMBERS: dict[str, Size] = {
    "tiny-s": Size(48, 2, 4, 96),
    "tiny-m": Size(64, 2, 4, 128),
    "tiny-l": Size(128, 3, 4, 384),
}


@dataclass(frozen=True)
class PretrainArgs:
    steps: int = 1500
    batch_size: int = 64
    lr: float = 3e-3
    warmup_steps: int = 100
    weight_decay: float = 0.01
    seed: int = 0
    corpus_split: str = "all"  # "train" keeps pretraining off the held-out problems (see task.py)


def qwen2_config(size: Size) -> Qwen2Config:
    eos = build_tokenizer().eos_token_id  # 0; also pad, as for Qwen2.5 base models
    return Qwen2Config(
        vocab_size=EMBEDDING_ROWS, hidden_size=size.hidden, num_hidden_layers=size.layers,
        num_attention_heads=size.heads, num_key_value_heads=size.heads // 2,
        intermediate_size=size.ffn, max_position_embeddings=128, tie_word_embeddings=True,
        bos_token_id=eos, eos_token_id=eos, pad_token_id=eos,
    )


def code_version() -> str:
    """Hash of the code that defines a member's weights (task, tokenizer, sizes, config, training
    loop): build.json records it, so a stale cache shows up. CLI and saving code are left out."""
    digest = hashlib.sha256()
    for module in ("task.py", "tokenizer.py"):
        digest.update((Path(__file__).parent / module).read_bytes())
    digest.update(repr((MEMBERS, EMBEDDING_ROWS)).encode())
    for code in (PretrainArgs, qwen2_config, _batch, pretrain):
        digest.update(inspect.getsource(code).encode())
    return digest.hexdigest()[:12]


def _batch(tokenizer, examples: list[tuple[str, str]]) -> dict[str, torch.Tensor]:
    """Right-padded ids with labels only on completion tokens (eos included)."""
    rows = []
    for prompt, completion in examples:
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        rows.append((prompt_ids + completion_ids, [-100] * len(prompt_ids) + completion_ids))
    length = max(len(ids) for ids, _ in rows)
    pad = tokenizer.pad_token_id
    return {
        "input_ids": torch.tensor([ids + [pad] * (length - len(ids)) for ids, _ in rows]),
        "labels": torch.tensor([labels + [-100] * (length - len(labels)) for _, labels in rows]),
        "attention_mask": torch.tensor([[1] * len(ids) + [0] * (length - len(ids)) for ids, _ in rows]),
    }


def pretrain(config: Qwen2Config, args: PretrainArgs, desc: str = "pretrain", position: int = 0):
    """Train a fresh Qwen2ForCausalLM on the corpus; returns (model, per-step losses)."""
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    model = Qwen2ForCausalLM(config)
    tokenizer = build_tokenizer()
    corpus = sample_corpus(args.steps * args.batch_size, seed=args.seed, split=args.corpus_split)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    # Linear warmup, then cosine decay to 10% of the peak rate.
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(
        (step + 1) / args.warmup_steps,
        0.1 + 0.45 * (1 + torch.cos(torch.tensor(step / args.steps * torch.pi)).item())))
    model.train()
    losses = []
    bar = tqdm(range(args.steps), desc=desc, position=position, leave=True, mininterval=2)
    for step in bar:
        batch = _batch(tokenizer, corpus[step * args.batch_size:(step + 1) * args.batch_size])
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if step % 50 == 0:
            bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.3f}")
    model.eval()
    return model, losses


def build_member(member: str, out_dir: str | Path | None = None, args: PretrainArgs = PretrainArgs(),
                 force: bool = False, position: int = 0) -> Path:
    """Pretrain `member` and save model + tokenizer + build.json; skip it when already built."""
    if member not in MEMBERS:
        raise UserError(f"unknown tiny member {member!r}: use one of {', '.join(MEMBERS)}")
    out_dir = Path(out_dir or MODELS[member].base_id)
    if (out_dir / BUILD_INFO).is_file() and not force:
        built = json.loads((out_dir / BUILD_INFO).read_text())
        if built.get("code_version") != code_version():
            logger.warning("%s at %s was built by other code (%s, now %s): rebuild with --force",
                           member, out_dir, built.get("code_version"), code_version())
        logger.info("%s already built at %s (--force rebuilds it)", member, out_dir)
        return out_dir
    torch.set_num_threads(1)  # one core per member: members build side by side
    start = time.perf_counter()
    model, losses = pretrain(qwen2_config(MEMBERS[member]), args, desc=member, position=position)
    seconds = time.perf_counter() - start
    model.generation_config.eos_token_id = model.config.eos_token_id
    model.generation_config.pad_token_id = model.config.pad_token_id
    # Write next to the target and rename, so an interrupted build never looks finished.
    staging = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    build_tokenizer().save_pretrained(staging)
    info = {"member": member, "size": MEMBERS[member].__dict__, **args.__dict__,
            "parameters": sum(p.numel() for p in model.parameters()),
            "final_loss": sum(losses[-50:]) / len(losses[-50:]),
            "train_seconds": round(seconds, 1), "code_version": code_version()}
    (staging / BUILD_INFO).write_text(json.dumps(info, indent=2) + "\n")
    load_tokenizer(str(staging))  # round-trip check on what was saved
    load_model(str(staging))
    shutil.rmtree(out_dir, ignore_errors=True)
    staging.rename(out_dir)
    logger.info("built %s: %d parameters, loss %.3f, %.0f s -> %s", member, info["parameters"],
                info["final_loss"], seconds, out_dir)
    return out_dir


def _build_in_worker(member: str, args: PretrainArgs, force: bool, position: int) -> str:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return str(build_member(member, args=args, force=force, position=position))


def build_family(members: list[str], args: PretrainArgs = PretrainArgs(), force: bool = False,
                 jobs: int = 2) -> list[Path]:
    """Build members as parallel single-threaded processes, the biggest first (it takes longest)."""
    unknown = [m for m in members if m not in MEMBERS]
    if unknown:
        raise UserError(f"unknown tiny member(s) {', '.join(unknown)}: use {', '.join(MEMBERS)}")
    # Cached members are checked here: a worker process would spend seconds importing torch.
    todo = [m for m in members if force or not (Path(MODELS[m].base_id) / BUILD_INFO).is_file()]
    paths = {m: build_member(m, args=args) for m in members if m not in todo}
    order = sorted(todo, key=lambda m: -MEMBERS[m].hidden * MEMBERS[m].ffn)
    if order:
        with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
            futures = {m: pool.submit(_build_in_worker, m, args, force, i) for i, m in enumerate(order)}
            paths |= {m: Path(future.result()) for m, future in futures.items()}
    return [paths[m] for m in members]


@exit_on_user_error()
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", nargs="+", default=list(MEMBERS), metavar="MEMBER")
    parser.add_argument("--force", action="store_true", help="rebuild members already built")
    parser.add_argument("--jobs", type=int, default=2, help="members built at once (one core each)")
    parser.add_argument("--seed", type=int, default=PretrainArgs.seed)
    parser.add_argument("--steps", type=int, default=PretrainArgs.steps)
    parser.add_argument("--corpus_split", "--corpus-split", default=PretrainArgs.corpus_split, choices=["all", "train"],
                        help="problems the pretraining corpus is drawn from (task.py explains why all)")
    parser.add_argument("--evaluate", nargs="+", metavar="MODEL",
                        help="instead of building, print held-out accuracy of these members or directories")
    parser.add_argument("--samples", type=int, default=4, help="samples per held-out problem (--evaluate)")
    parser.add_argument("--temperature", type=float, default=1.0, help="(--evaluate); 0 = greedy")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.evaluate:

        print_table(args.evaluate, samples=args.samples, temperature=args.temperature, seed=args.seed)
        return
    pretrain_args = PretrainArgs(steps=args.steps, seed=args.seed, corpus_split=args.corpus_split)
    with exit_on_user_error():
        check_rast_home()
    paths = build_family(args.members, pretrain_args, args.force, args.jobs)
    for member, path in zip(args.members, paths):
        info = json.loads((path / BUILD_INFO).read_text())
        print(f"{member}: {info['parameters']} parameters, loss {info['final_loss']:.3f}, "
              f"{info['train_seconds']} s, {path}")


if __name__ == "__main__":
    main()
