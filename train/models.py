"""Model registry and robust loading.

Short names (`0.5B` ... `32B`, `tiny-s`, `tiny-m`, `tiny-l`) resolve to Qwen2.5 hub ids or to the
tiny family's local directories; any local directory or `org/name` hub id is accepted as is.
`TARGET=32B` in the Makefile resolves through here.

    python -c "from train.models import resolve_model; print(resolve_model('32B'))"
"""

import json
import os
from dataclasses import dataclass
from pathlib import Path

from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

from train.errors import UserError

# Where the tiny family is built and cached (`make tiny-family`); override with RAST_HOME.
RAST_HOME = Path(os.environ.get("RAST_HOME", Path.home() / ".cache" / "rast"))
# Random-weight stand-ins of the hub checkpoints the Qwen recipes name, laid out as a Hugging Face
# cache (tests/rehearsal/standins.py builds it; the rehearsal and the CPU benchmarks read it). Its
# name carries the stand-ins' version, so code of an older version never rebuilds it under a run.
HUB_STANDINS = RAST_HOME / "hub-v3"


def check_rast_home() -> None:
    """RAST_HOME must be a directory (or not exist yet): a file there failed after the tiny
    family had trained for a minute and a half."""
    if RAST_HOME.exists() and not RAST_HOME.is_dir():
        raise UserError(f"RAST_HOME {RAST_HOME} is a file: point RAST_HOME at a directory")
ROUND_TRIP_PROBE = "Q: 47*8=\nA: Let's 7*8+0=56 4*8+5=37 \\boxed{376}\n  x^2 + y_1 = \\frac{1}{2}"


# Qwen2.5's tokenizer: 151643 byte-level BPE tokens + 22 special tokens at 151643-151664.
QWEN_TOKENIZER_LENGTH = 151665


@dataclass(frozen=True)
class Architecture:
    """The shape of a Qwen2 decoder, as its config.json states it."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    ffn: int  # intermediate_size
    embedding_rows: int  # vocab_size: 151936 vs 152064, small Qwen2.5 models pad it differently
    tied_embeddings: bool

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def kv_bytes_per_token(self, dtype_bytes: int = 2) -> int:
        """KV cache bytes per token of one sequence: K and V of every layer (bf16: 2 bytes)."""
        return self.layers * self.kv_heads * self.head_dim * 2 * dtype_bytes

    @property
    def params(self) -> int:
        """Parameter count: q/k/v carry biases in Qwen2, o and the MLP do not; two RMSNorms a layer."""
        kv_width = self.kv_heads * self.head_dim
        attention = 2 * self.hidden * self.hidden + 2 * self.hidden * kv_width + self.hidden + 2 * kv_width
        layer = attention + 3 * self.hidden * self.ffn + 2 * self.hidden
        embeddings = self.embedding_rows * self.hidden * (1 if self.tied_embeddings else 2)
        return embeddings + self.layers * layer + self.hidden

    def lora_params(self, rank: int) -> int:
        """Adapter parameters of LoRA rank r on every linear layer of the decoder (all-linear:
        q, k, v, o, gate, up, down; the LM head is excluded): r x (in + out) per layer."""
        kv_width = self.kv_heads * self.head_dim
        in_out = (2 * (self.hidden + self.hidden) + 2 * (self.hidden + kv_width)
                  + 3 * (self.hidden + self.ffn))
        return self.layers * rank * in_out

    @classmethod
    def from_config(cls, config: dict) -> "Architecture":
        """From a Qwen2-style config.json."""
        heads = config["num_attention_heads"]
        return cls(config["hidden_size"], config["num_hidden_layers"], heads,
                   config.get("num_key_value_heads") or heads, config["intermediate_size"],
                   config["vocab_size"], bool(config.get("tie_word_embeddings", False)))


@dataclass(frozen=True)
class ModelInfo:
    name: str
    base_id: str  # hub id, or the local directory of a tiny-family member
    rl_id: str | None  # same-size RL reference (SimpleRL-Zoo) for recovery rate, if one exists
    params_b: float  # parameters, billions
    weight_gb: float  # bf16 weight bytes read per decode step, GB
    architecture: Architecture | None  # None: read the checkpoint's config.json instead

    @property
    def embedding_rows(self) -> int | None:
        return self.architecture.embedding_rows if self.architecture else None


def _qwen(size: str, params_b: float, weight_gb: float, *shape) -> ModelInfo:
    return ModelInfo(size, f"Qwen/Qwen2.5-{size}", f"hkust-nlp/Qwen-2.5-{size}-SimpleRL-Zoo",
                     params_b, weight_gb, Architecture(*shape))


def _tiny(member: str, params_b: float) -> ModelInfo:
    return ModelInfo(member, str(RAST_HOME / "tiny" / member), None, params_b, params_b * 2, None)


# Qwen2.5 sizes: parameters and bf16 bytes as published on each model card; the architecture
# columns (hidden, layers, heads, kv_heads, ffn, embedding rows, tied) are the hub's config.json of
# Qwen/Qwen2.5-<size>. The tiny family's shapes live in train/tiny/family.py.
MODELS: dict[str, ModelInfo] = {
    info.name: info
    for info in [
        _qwen("0.5B", 0.49, 0.99, 896, 24, 14, 2, 4864, 151936, True),
        _qwen("1.5B", 1.54, 3.09, 1536, 28, 12, 2, 8960, 151936, True),
        _qwen("3B", 3.09, 6.17, 2048, 36, 16, 2, 11008, 151936, True),
        _qwen("7B", 7.62, 14.1, 3584, 28, 28, 4, 18944, 152064, False),
        _qwen("14B", 14.8, 28.0, 5120, 48, 40, 8, 13824, 152064, False),
        _qwen("32B", 32.8, 64.0, 5120, 64, 40, 8, 27648, 152064, False),
        _tiny("tiny-s", 48e-6),
        _tiny("tiny-m", 82e-6),
        _tiny("tiny-l", 608e-6),
    ]
}


def registry_entry(name_or_id: str) -> ModelInfo | None:
    """The registry entry a short name, or a Qwen2.5 / SimpleRL-Zoo hub id, stands for."""
    return next((info for info in MODELS.values()
                 if name_or_id in (info.name, info.base_id, info.rl_id)), None)


def architecture_of(name_or_path: str) -> Architecture | None:
    """The shape of a registry name, a Qwen2.5 / SimpleRL-Zoo hub id or a local model directory
    (its config.json); None when none of them says. Reads no weights, asks no hub."""
    info = registry_entry(name_or_path)
    if info is not None and info.architecture is not None:
        return info.architecture
    path = MODELS[name_or_path].base_id if name_or_path in MODELS else name_or_path
    config_file = Path(path) / "config.json"
    if not config_file.is_file():
        return None
    return Architecture.from_config(json.loads(config_file.read_text()))


def qwen2_config(architecture: Architecture, **overrides):
    """A transformers Qwen2Config of this shape (rope and context as Qwen2.5's config.json)."""
    a = architecture
    return Qwen2Config(hidden_size=a.hidden, num_hidden_layers=a.layers, num_attention_heads=a.heads,
                       num_key_value_heads=a.kv_heads, intermediate_size=a.ffn,
                       vocab_size=a.embedding_rows, tie_word_embeddings=a.tied_embeddings,
                       max_position_embeddings=32768, rope_theta=1e6, **overrides)


def resolve_model(name_or_path: str) -> str:
    """A registry name, local directory or hub id -> what from_pretrained should be given."""
    if name_or_path in MODELS:
        path = MODELS[name_or_path].base_id
        if name_or_path.startswith("tiny-") and not Path(path).is_dir():
            raise UserError(f"tiny model {name_or_path} is not built at {path}: run `make tiny-family`")
        return _model_directory(path) if Path(path).is_dir() else path
    if Path(name_or_path).is_dir():
        return _model_directory(name_or_path)
    if Path(name_or_path).exists():
        raise UserError(f"{name_or_path} is a file, not a model: give the directory that "
                        f"save_pretrained wrote (with config.json), a registry name or a hub id")
    hub_id_shaped = name_or_path.count("/") == 1 and not name_or_path.startswith((".", "/"))
    if hub_id_shaped and not Path(name_or_path).parent.is_dir():
        return name_or_path  # e.g. hkust-nlp/Qwen-2.5-1.5B-SimpleRL-Zoo
    if "/" in name_or_path:  # a path, including outputs/tiny-s-grpo (shaped like a hub id)
        raise UserError(f"{name_or_path} does not exist: train it first (`make train-small` "
                        f"writes outputs/tiny-s-grpo, `make train-family` tiny-m/tiny-l) or fix "
                        f"the path")
    raise UserError(f"unknown model {name_or_path!r}: use a local directory, an org/name hub id "
                    f"or one of {', '.join(MODELS)}")


def _model_directory(path: str) -> str:
    """path, if it holds a model (config.json) or a LoRA adapter (adapter_config.json)."""
    if not any((Path(path) / name).is_file() for name in ("config.json", "adapter_config.json")):
        raise UserError(f"{path} is a directory without config.json or adapter_config.json, so "
                        f"not a model: give the directory that save_pretrained wrote (a "
                        f"train.grpo output_dir once it finished)")
    return path


def embedding_rows(name_or_path: str) -> int | None:
    """Rows of a model's token embedding (config vocab_size) from its config alone; None for a
    LoRA adapter (it has its base's)."""
    path = resolve_model(name_or_path)
    if (Path(path) / "adapter_config.json").is_file():
        return None
    config = _from_pretrained(AutoConfig.from_pretrained, path)
    return getattr(config.get_text_config(), "vocab_size", None)


def _from_pretrained(loader, name_or_path: str, **kwargs):
    try:
        return loader(name_or_path, **kwargs)
    except OSError as err:  # not cached and the hub is unreachable, or not a model directory
        raise UserError(f"cannot load {name_or_path!r}: not a local model directory and not in "
                        f"the Hugging Face cache (hub offline?); download it first "
                        f"({type(err).__name__})") from None


def load_tokenizer(name_or_path: str):
    """Load a tokenizer and prove decode(encode(x)) == x.

    Trap: AutoTokenizer on a directory whose config says qwen2 returns Qwen2's byte-level
    tokenizer even when the saved tokenizer is our character-level one, and that drops spaces
    and newlines; a saved generic `TokenizersBackend` class is therefore loaded as itself.
    """
    path = resolve_model(name_or_path)
    config_file = Path(path) / "tokenizer_config.json"
    saved_class = json.loads(config_file.read_text()).get("tokenizer_class") if config_file.is_file() else None
    loader = PreTrainedTokenizerFast if saved_class in ("TokenizersBackend", "PreTrainedTokenizerFast") else AutoTokenizer
    tokenizer = _from_pretrained(loader.from_pretrained, path)
    ids = tokenizer(ROUND_TRIP_PROBE, add_special_tokens=False)["input_ids"]
    if tokenizer.decode(ids) != ROUND_TRIP_PROBE:
        raise UserError(f"tokenizer of {name_or_path!r} does not round-trip text "
                        f"({type(tokenizer).__name__}); check its tokenizer_config.json")
    return tokenizer


def stop_token_ids(tokenizer, generation_config=None) -> list[int]:
    """Ids that end a completion: the tokenizer's eos, the model's generation_config eos, and
    <|endoftext|> / <|im_end|> where the vocabulary has them.

    Qwen2.5 base models declare only <|endoftext|> (151643), but under the ChatML prompt of the
    qwen-boxed template they close their answer with <|im_end|> (151645) and would otherwise
    ramble on to the token limit. GRPO, the RAST engine and evaluation all stop on this list.
    """
    ids = {tokenizer.eos_token_id} - {None}
    eos = generation_config.eos_token_id if generation_config is not None else None
    ids.update(eos if isinstance(eos, list) else [] if eos is None else [eos])
    vocab = tokenizer.get_vocab()
    ids.update(vocab[token] for token in ("<|endoftext|>", "<|im_end|>") if token in vocab)
    return sorted(ids)


def load_model(name_or_path: str, dtype=None, device_map=None, **kwargs):
    """Load a causal LM from a registry name, local directory or hub id."""
    return _from_pretrained(AutoModelForCausalLM.from_pretrained, resolve_model(name_or_path),
                            dtype=dtype, device_map=device_map, **kwargs)
