"""GRPO reward functions on TRL 1.16's contract; the grader behind them is train.grader.

TRL calls each reward function as
    reward_func(prompts=..., completions=..., completion_ids=..., <every dataset column>=...,
                trainer_state=..., log_extra=..., log_metric=...)
with one list entry per completion, and wants one float per completion back. A completion is a
string, or for conversational datasets a list of {"role", "content"} messages. The SimpleRL-Zoo
recipe rewards correctness only: 1.0 if train.grader grades the completion correct, else 0.0.
That is math-verify on the last boxed answer after the grader's one normalisation (scientific
notation written out, a percent sign on one side read as a unit or as /100), within 5 s of CPU
time; README.md's "Grading" states the rule in full.

train.grpo gives it to GRPOTrainer (it is not a recipe key: `train.grpo.run(reward_funcs=...)`
takes others from Python). Check it:
    python -c "from train.rewards import correctness_reward as r; print(r(['\\\\boxed{4}'], ['4']))"
"""

from __future__ import annotations

from train.grader import grade_batch


def completion_text(completion: str | list[dict]) -> str:
    """The text to grade: the string itself, or the last assistant message's content."""
    if isinstance(completion, str):
        return completion
    for message in reversed(completion):
        if message.get("role") == "assistant":
            content = message.get("content") or ""
            if isinstance(content, list):  # multimodal-style content parts
                texts = [part.get("text", "") for part in content if part.get("type") == "text"]
                content = "".join(texts)
            return content
    return ""


def correctness_reward(completions: list, answer: list[str], **kwargs) -> list[float]:
    """1.0 where the completion's final answer matches the gold `answer` column, else 0.0.

    Wrong, missing, unparsable and timed-out answers all score 0.0 (see train.grader.Grade).
    """
    grades = grade_batch(list(answer), [completion_text(c) for c in completions])
    return [1.0 if g.correct else 0.0 for g in grades]
