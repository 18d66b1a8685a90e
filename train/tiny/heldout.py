"""Held-out accuracy and careful-style share of a tiny model: the before/after numbers of GRPO.

Samples `samples` completions per held-out problem with plain temperature sampling (no top-k or
top-p), grades them with the shared grader, and counts how many use the careful style.

    python -m train.tiny.family --evaluate tiny-s tiny-m tiny-l
    python -c "from train.tiny.heldout import evaluate; print(evaluate('tiny-s'))"
"""

import torch
from tqdm.auto import tqdm

from train.grader import grade_batch
from train.models import load_model, load_tokenizer
from train.tiny.task import is_careful, prompt
from train.tiny.task import problems as task_problems
from train.tiny.tokenizer import build_tokenizer

# The careful solution of a 2-digit x 1-digit product is 35 characters plus eos.
MAX_NEW_TOKENS = 48


def evaluate(model_or_path, problems=None, samples: int = 4, temperature: float = 1.0, seed: int = 0,
             batch_size: int = 240, tokenizer=None, max_new_tokens: int = MAX_NEW_TOKENS,
             progress: bool = True) -> dict:
    """accuracy, careful_share, careful_accuracy and n (= problems x samples) of a tiny model.

    model_or_path: a member name ("tiny-s"), a model directory, or a loaded model (then the
    character tokenizer is used unless `tokenizer` is given). problems: rows with `problem` and
    `answer` (default: the 300 held-out ones). Deterministic for a given seed and batch_size; the
    caller's torch RNG state is left untouched and a training model is put back in training mode.
    temperature 0 = greedy.
    """
    if isinstance(model_or_path, str):
        model, tokenizer = load_model(model_or_path), load_tokenizer(model_or_path)
    else:
        model, tokenizer = model_or_path, tokenizer or build_tokenizer()
    rows = task_problems("test") if problems is None else problems
    prompts = [prompt(row["problem"]) for row in rows for _ in range(samples)]
    golds = [row["answer"] for row in rows for _ in range(samples)]
    sampling = ({"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}
                if temperature > 0 else {"do_sample": False})
    was_training = model.training
    model.eval()
    completions = []
    with torch.random.fork_rng(devices=[]), torch.inference_mode():
        torch.manual_seed(seed)
        for start in tqdm(range(0, len(prompts), batch_size), desc="evaluate", disable=not progress,
                          leave=False):
            batch = tokenizer(prompts[start:start + batch_size], return_tensors="pt", padding=True,
                              add_special_tokens=False).to(model.device)
            output = model.generate(**batch, max_new_tokens=max_new_tokens, **sampling,
                                    eos_token_id=tokenizer.eos_token_id,
                                    pad_token_id=tokenizer.pad_token_id)
            completions += tokenizer.batch_decode(output[:, batch["input_ids"].shape[1]:],
                                                  skip_special_tokens=True)
    model.train(was_training)
    correct = [grade.correct for grade in grade_batch(golds, completions)]
    careful = [is_careful(text) for text in completions]
    n_careful = sum(careful)
    return {
        "accuracy": sum(correct) / len(correct),
        "careful_share": n_careful / len(careful),
        "careful_accuracy": sum(c for c, k in zip(correct, careful) if k) / max(n_careful, 1),
        "n": len(completions),
    }


def print_table(models: list[str], samples: int = 4, temperature: float = 1.0, seed: int = 0) -> None:
    print(f"held-out: {len(task_problems('test'))} problems x {samples} samples, "
          f"temperature {temperature}", flush=True)
    print(f"{'model':<12} {'accuracy':>9} {'careful':>8} {'careful acc':>12}")
    for name in models:
        result = evaluate(name, samples=samples, temperature=temperature, seed=seed)
        print(f"{name:<12} {result['accuracy']:>9.3f} {result['careful_share']:>8.1%} "
              f"{result['careful_accuracy']:>12.3f}", flush=True)
