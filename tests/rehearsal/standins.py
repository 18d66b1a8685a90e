"""Hub stand-ins: random-weight Qwen2.5 and SimpleRL-Zoo checkpoints laid out as a Hugging Face
cache, so the real commands run offline on CPU (`make rehearse`).

Each stand-in keeps what the real path depends on and shrinks the rest: the real embedding rows
(151936 for 0.5B/1.5B, tied; 152064 for 7B/14B/32B, untied), the real Qwen2.5 tokenizer
(train/qwen_tokenizer.py), config, generation_config.json and tokenizer_config.json as the hub
ships them, bf16 weights (sharded with an index for 7B and up), under the real ids in
models--org--name/snapshots/<rev>/ with refs/main; but 2 layers, hidden 32 (0.5B, 1.5B: one
head of 32 dims) or 128 (7B, 14B: two heads of 64; 32B: one of 128, Qwen2.5's head_dim), one
KV head, so that vLLM's CPU attention (head_dim 32, 64 or 128; it rejects 8 and 16) runs every
one of them: the GRPO rehearsal generates with vLLM and `make transfer` decodes with it. The
SimpleRL-Zoo stand-ins are perturbed copies of their base (a non-zero RL delta), without
rast_pair.json, and declare <|im_end|> (151645) as eos where the base says <|endoftext|> (151643).

Random weights almost never sample a stop token (2 of 151665), which would leave every stop
check vacuous; so each stand-in is made "stop-prone": ~8% of the next-token mass on 151643 +
151645 at every position (see make_stop_prone), and completions end early at random lengths.

It lives in tests/ because nothing of it belongs in a real run. Built once (~1 min):

    python -m tests.rehearsal.standins [CACHE_DIR]   # default $RAST_HOME/hub-v3; prints CACHE_DIR
"""

import hashlib
import json
import shutil
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import torch
from transformers import Qwen2ForCausalLM

from train.models import HUB_STANDINS, MODELS, qwen2_config
from train.qwen_tokenizer import ENDOFTEXT_ID, IM_END_ID, qwen_tokenizer_dir, write_tokenizer

SIZES = ("0.5B", "1.5B", "7B", "14B", "32B")  # every size a Qwen recipe names
VERSION = 3  # bump when the stand-ins change: a cache of another version is rebuilt
MARKER = "rast-standins.json"
STOP_SHARE = 0.08  # next-token probability of (151643 or 151645) at a typical position
SHARD_SIZE = "8MB"  # splits 7B+ stand-ins into 3 shards (embedding, layers, lm_head)


def shrunk_architecture(size: str):
    """The registry's architecture with 2 layers and hidden 32 (tied sizes) or 64 (untied)."""
    real = MODELS[size].architecture
    hidden = 64 if not real.tied_embeddings else 32
    return replace(real, hidden=hidden, layers=2, heads=4, kv_heads=2, ffn=2 * hidden)


def standin_architecture(size: str):
    """What the stand-in of `size` is built with: shrunk_architecture with heads vLLM's CPU
    attention takes (it rejects head_dim 8 and 16) and one KV head: the GRPO sizes (0.5B, 1.5B:
    tied, hidden 32) one head of 32 dims, so that the rehearsal's GRPO runs generate with vLLM
    colocate; the targets (untied) hidden 128 in heads of Qwen2.5's sizes, 64 (7B, 14B) and 128
    (32B), so that `make transfer` decodes them with vLLM."""
    architecture = shrunk_architecture(size)
    if architecture.tied_embeddings:
        return replace(architecture, heads=1, kv_heads=1)
    heads = 1 if size == "32B" else 2
    return replace(architecture, hidden=128, ffn=256, heads=heads, kv_heads=1)


def stop_share(model, seed: int = 0) -> float:
    """Mean next-token probability of the two stop ids over random contexts."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, ENDOFTEXT_ID, (4, 16), generator=generator)
    with torch.no_grad():
        probs = model(ids).logits.float().softmax(-1)
    return probs[..., [ENDOFTEXT_ID, IM_END_ID]].sum(-1).mean().item()


def make_stop_prone(model) -> None:
    """Put ~STOP_SHARE of the next-token mass on the stop ids at every position.

    Every embedding row gets 0.5 in dimension 0, which the residual stream carries to the final
    norm as its largest component; the stop ids' output rows then get a weight s in that
    dimension, found by bisection. (Tied models share one matrix, so their stop rows get 0.5+s.)
    """
    embed = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    with torch.no_grad():
        embed[:, 0] = 0.5
        base = head[[ENDOFTEXT_ID, IM_END_ID], 0].clone()
        low, high = 0.0, 64.0
        for _ in range(20):
            s = (low + high) / 2
            head[[ENDOFTEXT_ID, IM_END_ID], 0] = base + s
            low, high = (s, high) if stop_share(model) < STOP_SHARE else (low, s)


def build_model(size: str, seed: int, perturb_from=None):
    """A random stand-in of `size` in bf16; with perturb_from, that model plus Gaussian noise."""
    torch.manual_seed(seed)
    config = qwen2_config(standin_architecture(size), bos_token_id=ENDOFTEXT_ID,
                          eos_token_id=ENDOFTEXT_ID)
    model = Qwen2ForCausalLM(config)
    if perturb_from is None:
        make_stop_prone(model)
    else:
        model.load_state_dict(perturb_from.state_dict())
        with torch.no_grad():
            for param in model.parameters():  # noise of 10% of each tensor's spread
                param.add_(0.1 * param.float().std() * torch.randn_like(param))
    return model.to(torch.bfloat16)


def write_checkpoint(model, directory: Path, size: str, rl: bool) -> None:
    """config.json + weights + generation_config.json + tokenizer files, as the hub has them."""
    sharded = not MODELS[size].architecture.tied_embeddings
    model.save_pretrained(directory, max_shard_size=SHARD_SIZE if sharded else "10GB")
    # Qwen2.5 base: generation_config eos 151643 (<|endoftext|>), greedy, 2048 new tokens.
    # SimpleRL-Zoo (assumed here): trained on ChatML, so eos <|im_end|> in both files; the case
    # where an RL checkpoint's eos differs from its base's.
    generation = {"bos_token_id": ENDOFTEXT_ID, "do_sample": False,
                  "eos_token_id": IM_END_ID if rl else ENDOFTEXT_ID, "max_new_tokens": 2048}
    if rl:
        generation["pad_token_id"] = ENDOFTEXT_ID
    (directory / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    write_tokenizer(directory, qwen_tokenizer_dir() / "tokenizer.json",
                    eos_token="<|im_end|>" if rl else "<|endoftext|>")


def add_to_hub_cache(cache: Path, repo_id: str, files: Path) -> Path:
    """Move `files` into the cache as `hf download` lays them out: blobs named by content hash,
    snapshots/<revision>/ of relative symlinks, refs/main naming the revision."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    if repo.exists():
        shutil.rmtree(repo)
    (repo / "blobs").mkdir(parents=True)
    hashes = {}
    for file in sorted(files.iterdir()):
        digest = hashlib.sha256(file.read_bytes()).hexdigest()
        shutil.move(file, repo / "blobs" / digest)
        hashes[file.name] = digest
    revision = hashlib.sha1(json.dumps(hashes, sort_keys=True).encode()).hexdigest()
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    for name, digest in hashes.items():
        (snapshot / name).symlink_to(Path("..") / ".." / "blobs" / digest)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    return snapshot


def build_cache(cache: Path | None = None, force: bool = False) -> Path:
    """Build every stand-in into `cache` (default $RAST_HOME/hub-v3) unless already built."""
    cache = Path(cache or HUB_STANDINS)
    marker = cache / MARKER
    if not force and marker.is_file() and json.loads(marker.read_text()).get("version") == VERSION:
        return cache
    cache.mkdir(parents=True, exist_ok=True)
    marker.unlink(missing_ok=True)
    built = {}
    for index, size in enumerate(SIZES):
        info = MODELS[size]
        base = build_model(size, seed=index)
        rl = build_model(size, seed=100 + index, perturb_from=base)
        for repo_id, model, is_rl in ((info.base_id, base, False), (info.rl_id, rl, True)):
            with tempfile.TemporaryDirectory(dir=cache) as staging:
                write_checkpoint(model, Path(staging), size, is_rl)
                built[repo_id] = str(add_to_hub_cache(cache, repo_id, Path(staging)))
    marker.write_text(json.dumps({"version": VERSION, "snapshots": built}, indent=2) + "\n")
    return cache


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    print(build_cache(Path(argv[0]) if argv else None, force="--force" in argv))


if __name__ == "__main__":
    main([a for a in sys.argv[1:] if a != "--force"] + (["--force"] if "--force" in sys.argv else []))
