"""Character-level tokenizer shared by the tiny model family and the test fixtures.

One token per character of printable ASCII plus newline, so any text round-trips exactly
(the Qwen2 byte-level tokenizer does not: loaded for this vocabulary it drops spaces and
newlines). Build and save one with:

    python -c "from train.tiny.tokenizer import build_tokenizer; build_tokenizer().save_pretrained('out')"
"""

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

EOS = "<|endoftext|>"  # also the pad token, as for Qwen2.5 base models
UNK = "<unk>"
CHARACTERS = "\n" + "".join(chr(c) for c in range(32, 127))
VOCAB = [EOS, UNK, *CHARACTERS]  # 98 tokens


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A fast tokenizer with one id per character; decode(encode(x)) == x for ASCII x."""
    backend = Tokenizer(models.WordLevel({tok: i for i, tok in enumerate(VOCAB)}, unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    backend.add_special_tokens([EOS, UNK])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token=EOS, pad_token=EOS, unk_token=UNK,
        padding_side="left", clean_up_tokenization_spaces=False,
    )
