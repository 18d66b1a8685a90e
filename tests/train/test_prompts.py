import pytest

from train.errors import UserError
from train.prompts import TEMPLATES, render_prompt

QUESTION = "What is $\\frac{1}{2} + {x}$ when x = {3}?"  # braces in the question stay as they are


def test_qwen_boxed_is_the_simplerl_zoo_prompt_with_literal_boxed_braces():
    assert render_prompt("qwen-boxed", QUESTION) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        + QUESTION
        + "\nPlease reason step by step, and put your final answer within \\boxed{}.<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_question_answer_is_byte_identical_to_the_rast_runners_prompt():
    # vllm/tests/RAST_decode/run.py of ozyyshr/RAST, its use_chat = False branch, verbatim
    runner = "Question:\n{input}\nAnswer:\nLet's think step by step.\n"
    assert render_prompt("question-answer", QUESTION) == runner.format(input=QUESTION)


def test_question_answer_template():
    assert render_prompt("question-answer", QUESTION) == (
        "Question:\n" + QUESTION + "\nAnswer:\nLet's think step by step.\n"
    )


def test_tiny_template_matches_the_multiplication_task():
    assert render_prompt("tiny", "47*8") == "Q: 47*8=\nA: "


@pytest.mark.parametrize("template", sorted(TEMPLATES))
def test_every_template_has_one_placeholder_and_keeps_the_question_verbatim(template):
    assert TEMPLATES[template].count("{question}") == 1
    rendered = render_prompt(template, "{question}")  # a question that looks like the placeholder
    assert rendered == TEMPLATES[template]
    assert QUESTION in render_prompt(template, QUESTION)


def test_unknown_template_lists_the_names():
    with pytest.raises(UserError, match="qwen-boxed, question-answer, tiny"):
        render_prompt("chatml", "1+1")
