"""Named prompt templates: the exact strings a question is wrapped in before tokenisation.

Plain strings, never a tokenizer chat template: Qwen's template would inject its own system
prompt, and the RL small model and the large base must see the same bytes at decode time.

    python -c "from train.prompts import render_prompt; print(render_prompt('qwen-boxed', '1+1?'))"
"""

from train.errors import UserError

TEMPLATES: dict[str, str] = {
    # SimpleRL-Zoo's prompt, used for its RL checkpoints and the RAST baselines (ChatML by hand;
    # stop on <|im_end|> as well as the base model's <|endoftext|>).
    "qwen-boxed": (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n{question}\n"
        "Please reason step by step, and put your final answer within \\boxed{}.<|im_end|>\n"
        "<|im_start|>assistant\n"
    ),
    # The prompt of the RAST paper's public runner (ozyyshr/RAST, vllm/tests/RAST_decode/run.py,
    # sets use_chat = False, so this, not its ChatML branch, decoded the table): byte for byte
    # "Question:\n{input}\nAnswer:\nLet's think step by step.\n". A base model under it often
    # writes a second "Question:" after its answer: pair it with the runner's stop strings.
    "question-answer": "Question:\n{question}\nAnswer:\nLet's think step by step.\n",
    # The embedded tiny family's multiplication task: the question is e.g. "47*8".
    "tiny": "Q: {question}=\nA: ",
}


def render_prompt(template: str, question: str) -> str:
    """The template named `template` with `question` in place of "{question}".

    str.format would choke on the literal braces of \\boxed{}, so this substitutes the one
    placeholder and leaves every other brace alone.
    """
    if template not in TEMPLATES:
        raise UserError(f"unknown prompt template {template!r}: use one of {', '.join(TEMPLATES)}")
    return TEMPLATES[template].replace("{question}", question)
