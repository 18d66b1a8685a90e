"""Which small base an RL checkpoint pairs with: the rast_pair.json a train.grpo output holds.

transfer reads it so a user passes only the RL checkpoint. It also records a fingerprint of the
base's weights: rebuilding a base (e.g. `python -m train.tiny.family --force`) after RL leaves
an RL model whose delta no longer refers to that base, and RAST with such a pair is silently
wrong, so pairing refuses it.

    python -c "from train.pairing import paired_base; print(paired_base('outputs/tiny-s-grpo'))"
"""

import hashlib
import json
from pathlib import Path

from train.errors import UserError
from train.models import resolve_model

PAIR_FILE = "rast_pair.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin")


def weights_fingerprint(name_or_path: str) -> str | None:
    """sha256 over a local model directory's weight files; None for a hub id (pinned by the hub)."""
    path = Path(resolve_model(name_or_path))
    files = sorted(p for p in path.glob("*") if p.suffix in WEIGHT_SUFFIXES) if path.is_dir() else []
    if not files:
        return None
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


def paired_base(small_rl: str, small_base: str | None = None) -> str:
    """The base to pair with small_rl: small_base if given, else the recorded one; either way the
    base's weights must still be those the RL model was trained from."""
    pair = read_pair(small_rl)
    base = small_base or pair.get("small_base")
    if base is None:
        raise UserError(f"cannot tell which small base {small_rl!r} was trained from (no "
                        f"{PAIR_FILE} with 'small_base'): pass small_base")
    recorded = pair.get("small_base_sha256")
    if recorded and weights_fingerprint(base) not in (None, recorded):
        raise UserError(f"the weights of {base!r} changed since {small_rl!r} was trained from them "
                        f"({PAIR_FILE}): retrain the RL model (delete {small_rl}) or restore the base")
    return base
