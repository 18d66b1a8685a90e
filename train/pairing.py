"""Which small base an RL checkpoint pairs with: the rast_pair.json a train.grpo output holds.

transfer reads it so a user passes only the RL checkpoint. It also records a fingerprint of the
base's weights: rebuilding a base (e.g. `python -m train.tiny.family --force`) after RL leaves
an RL model whose delta no longer refers to that base, and RAST with such a pair is silently
wrong, so pairing refuses it.

    python -c "from train.pairing import resolve_pair; print(resolve_pair('outputs/tiny-s-grpo'))"
"""

import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import try_to_load_from_cache

from train.errors import UserError
from train.models import resolve_model

PAIR_FILE = "rast_pair.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin")


def weights_fingerprint(name_or_path: str) -> str | None:
    """sha256 over a local model directory's weight files; None for a hub id (pinned by the hub).

    Hashed once per process for as long as the files keep their size and mtime: a 32B base's
    64 GB would otherwise be read again for every system and every check that resolves its pair.
    """
    path = Path(resolve_model(name_or_path))
    files = sorted(p for p in path.glob("*") if p.suffix in WEIGHT_SUFFIXES) if path.is_dir() else []
    if not files:
        return None
    stamps = tuple((str(file.resolve()), file.stat().st_size, file.stat().st_mtime_ns)
                   for file in files)
    return _sha256(stamps)


@functools.lru_cache(maxsize=64)
def _sha256(stamps: tuple[tuple[str, int, int], ...]) -> str:
    files = [Path(name) for name, _, _ in stamps]
    digest = hashlib.sha256()
    for file in files:
        with file.open("rb") as handle:
            while chunk := handle.read(1 << 24):
                digest.update(chunk)
    return digest.hexdigest()


def write_pair(output_dir: str, small_base: str, **fields) -> dict:
    """Write output_dir/rast_pair.json naming the (resolved) base and its weights fingerprint."""
    resolved = resolve_model(small_base)
    if Path(resolved).is_dir():
        resolved = str(Path(resolved).resolve())
    pair = {"small_base": resolved, "small_base_sha256": weights_fingerprint(resolved), **fields}
    (Path(output_dir) / PAIR_FILE).write_text(json.dumps(pair, indent=2) + "\n")
    return pair


def read_pair(small_rl: str) -> dict:
    """The rast_pair.json of an RL checkpoint, or {} when it has none (e.g. a hub RL model)."""
    path = Path(resolve_model(small_rl))  # a missing outputs/... directory is a UserError
    pair_file = path / PAIR_FILE
    if not path.is_dir() or not pair_file.is_file():
        return {}
    try:
        return json.loads(pair_file.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"{pair_file} is not valid JSON ({err}): delete it and pass small_base") from None


@dataclass(frozen=True)
class Pair:
    """A small RL model and the base it pairs with, each resolved once to what from_pretrained
    takes (a local directory or a hub id)."""

    base: str
    rl: str
    lora: bool  # rl is a LoRA adapter of base (it holds adapter_config.json), not full weights
    rl_tokenizer: bool  # rl carries tokenizer files of its own (hub ids always do)


def resolve_pair(small_rl: str, small_base: str | None = None) -> Pair:
    """The pair to decode: small_rl with small_base if given, else with the base its
    rast_pair.json records. Refuses a given base that is not the recorded one, and a base whose
    weights changed since the RL model was trained from them (its delta would be silently wrong).
    """
    rl = resolve_model(small_rl)  # a missing outputs/... directory is a UserError
    pair = read_pair(small_rl)
    recorded = pair.get("small_base")
    base_name = small_base or recorded
    if base_name is None:
        raise UserError(f"cannot tell which small base {small_rl!r} was trained from (no "
                        f"{PAIR_FILE} with 'small_base'): pass small_base")
    try:
        base = resolve_model(base_name)
    except UserError as err:
        if small_base:
            raise
        raise UserError(f"{Path(rl) / PAIR_FILE} names small_base {recorded!r}, which cannot be "
                        f"loaded ({err}): restore it, or pass small_base") from None
    if small_base and recorded and _identity(base) != _identity(resolve_model(recorded)):
        raise UserError(f"small_base {small_base!r} is not the model {small_rl} was trained from "
                        f"({recorded!r}, its {PAIR_FILE}): fix small_base")
    sha = pair.get("small_base_sha256")
    if sha and weights_fingerprint(base) not in (None, sha):
        raise UserError(f"the weights of {base_name!r} changed since {small_rl!r} was trained from "
                        f"them ({PAIR_FILE}): retrain the RL model (delete {small_rl}) or restore "
                        f"the base")
    return Pair(base, rl, _holds(rl, "adapter_config.json"),
                _holds(rl, "tokenizer_config.json") or _holds(rl, "tokenizer.json"))


def _identity(resolved: str) -> str:
    return str(Path(resolved).resolve()) if Path(resolved).is_dir() else resolved


def _holds(resolved: str, filename: str) -> bool:
    """Whether a local model directory, or a hub repository's cached snapshot, has this file.

    A hub id that is not cached is taken to be a full model with its own tokenizer (what hub RL
    checkpoints are); evaluation checks beforehand that every model it needs is cached."""
    if Path(resolved).is_dir():
        return (Path(resolved) / filename).is_file()
    cached = try_to_load_from_cache(resolved, filename)
    if cached is None:  # nothing known about this repository: no adapter, a tokenizer
        return filename != "adapter_config.json"
    return isinstance(cached, str)
