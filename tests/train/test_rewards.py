"""correctness_reward on TRL 1.16's reward-function contract."""

import pytest

from train.rewards import correctness_reward

COMPLETIONS = [
    (r"2 + 2 = 4, so the answer is \boxed{4}.", "4", 1.0),
    (r"I think it is \boxed{5}.", "4", 0.0),
    (r"Half: \boxed{\frac{1}{2}}", "0.5", 1.0),
    ("No box, but the total is 2,125.", "2125", 1.0),
    ("I give up.", "7", 0.0),
    ("", "7", 0.0),
    (r"\boxed{3} at first, but correcting myself: \boxed{6}", "6", 1.0),
]


def trl_kwargs(n):
    """What GRPOTrainer._calculate_rewards passes besides completions and the answer column."""
    return {"prompts": [f"prompt {i}" for i in range(n)], "completion_ids": [[1, 2, 3]] * n,
            "id": [str(i) for i in range(n)], "problem": ["..."] * n, "trainer_state": object(),
            "log_extra": lambda *a, **k: None, "log_metric": lambda *a, **k: None}


def test_plain_string_completions():
    completions, answers, expected = map(list, zip(*COMPLETIONS))
    rewards = correctness_reward(completions, answers, **trl_kwargs(len(answers)))
    assert rewards == expected
    assert all(isinstance(r, float) for r in rewards)


def test_conversational_completions():
    completions, answers, expected = map(list, zip(*COMPLETIONS))
    conversations = [[{"role": "assistant", "content": text}] for text in completions]
    # a tool-using turn: the final assistant message holds the answer
    conversations.append([{"role": "assistant", "content": r"Let me compute. \boxed{1}"},
                          {"role": "tool", "content": "42"},
                          {"role": "assistant", "content": r"So \boxed{42}."}])
    answers.append("42")
    expected.append(1.0)
    rewards = correctness_reward(completions=conversations, answer=answers,
                                 **trl_kwargs(len(answers)))
    assert rewards == expected


@pytest.mark.parametrize("content, reward", [
    ([{"type": "text", "text": r"so \boxed{"}, {"type": "text", "text": "8}"}], 1.0),
    (None, 0.0),
])
def test_content_parts_and_empty_messages(content, reward):
    completion = [{"role": "assistant", "content": content}]
    assert correctness_reward([completion], ["8"]) == [reward]
