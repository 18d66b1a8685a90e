"""Speculative RAST on vLLM (S_RL drafts, the composite verifies) against the HF engine, on the
hub-shaped stand-ins of vllm_check.py.

Run apart from pytest (test_vllm_engine.py starts it as a subprocess, `make rehearse` runs it):

    python -m tests.transfer.decode.vllm_spec_check DIR   # writes DIR/vllm_spec_check.json

Three measurements, float32 on CPU, one pair (S, S_RL) at lambda 1, 4 drafts per step:
- greedy: vLLM's speculative RAST tokens against the HF engine's plain greedy RAST;
- T = 1: vLLM's reported log-probabilities of the tokens it drew against a recompute of RAST
  (with speculation vLLM reports the target's), and a goodness-of-fit of the tokens themselves:
  each drawn token's randomized probability integral transform under the exact RAST distribution
  (tokens ordered most likely first: u = P(more likely tokens) + U * p(token)) is uniform on
  [0, 1] exactly when the tokens follow that distribution; a draft-biased sampler piles u near 0.
  Pearson chi-square of u in 10 bins, 9 degrees of freedom, the first token left out (it is
  sampled before any draft exists);
- the same T = 1 run with vLLM's own CPU expand_batch_to_tokens (transfer.decode.vllm_plugin's
  mend undone, engine in this process): the negative control, whose tokens must fail the test.
Both runs record how often a drawn token is the draft's own greedy choice, and vLLM's
acceptance counters.
The toy pair's greedy drafts are never accepted (S_RL's argmax is rarely RAST's), so greedy
acceptance runs once more on a pair the target mostly agrees with: S_RL = L and S = L slightly
perturbed (RAST = 2 z_L - z_S, the draft L): vLLM's tokens against the HF engine's, with some
drafts accepted and some rejected.
"""

import json
import os
import sys
from pathlib import Path

import torch

from tests.transfer.decode.vllm_check import PROMPTS, build_models, rast_logprobs, tokens

RESULT = "vllm_spec_check.json"
NEW_TOKENS = 24
SAMPLES = 16  # per prompt at T = 1: 6 x 16 x 23 = 2208 tokens past the first
BINS = 10


def sampled_run(decoder, models) -> dict:
    """T = 1 samples of every prompt: logprob error, PIT chi-square, draft agreement."""
    from vllm import SamplingParams as VllmParams

    ids = decoder.engine.tokenizer(PROMPTS)["input_ids"]
    outputs = decoder.engine.llm.generate(
        [{"prompt_token_ids": row} for row in ids],
        VllmParams(temperature=1.0, max_tokens=NEW_TOKENS, seed=11, logprobs=0, n=SAMPLES,
                   ignore_eos=True), use_tqdm=False)
    errors, pit, draft_choice, drawn_total = [], [], 0, 0
    generator = torch.Generator().manual_seed(0)
    for output in outputs:
        prompt = list(output.prompt_token_ids)
        for sample in output.outputs:
            drawn = list(sample.token_ids)
            reported = [position[token].logprob for position, token in zip(sample.logprobs, drawn)]
            exact = rast_logprobs(models, [("S", "S_RL", 1.0)], prompt, drawn)
            errors += [abs(a - b) for a, b in zip(reported, exact)]
            probs, draft_top = distributions(models, prompt, drawn)
            for step in range(1, len(drawn)):  # the first token: no draft yet
                p = probs[step]
                above = p[p > p[drawn[step]]].sum().item()
                pit.append(above + torch.rand((), generator=generator).item() * p[drawn[step]].item())
                draft_choice += int(draft_top[step] == drawn[step])
                drawn_total += 1
    counts = torch.histc(torch.tensor(pit), bins=BINS, min=0.0, max=1.0)
    expected = len(pit) / BINS
    chi2 = ((counts - expected) ** 2 / expected).sum().item()
    p_value = torch.special.gammaincc(torch.tensor((BINS - 1) / 2),
                                      torch.tensor(chi2 / 2)).item()
    return {"max_logprob_error": max(errors), "tokens": len(errors), "chi2": chi2,
            "p_value": p_value, "pit_bins": counts.tolist(),
            "draft_choice_share": draft_choice / max(drawn_total, 1),
            "counters": decoder.counters()}


def distributions(models, prompt, drawn):
    """Exact RAST probabilities at each drawn position, and S_RL's greedy choice there."""
    from transfer.decode.rast import combine_pairs

    tokens = torch.tensor([prompt + drawn])
    positions = slice(len(prompt) - 1, len(prompt) + len(drawn) - 1)
    with torch.no_grad():
        large = models["L"](tokens).logits[0, positions].float()
        base = models["S"](tokens).logits[0, positions].float()
        rl = models["S_RL"](tokens).logits[0, positions].float()
    combined = combine_pairs(large, [(base, rl)], [1.0], shared_vocab=151665)
    return combined.softmax(-1), rl.argmax(-1).tolist()


def near_copy(model: str, out: Path, noise: float = 0.02) -> str:
    """`model` with every weight moved by `noise` of its spread: a base whose pair with `model`
    leaves RAST's greedy choice mostly the target's own."""
    from transformers import AutoModelForCausalLM

    from train.qwen_tokenizer import write_tokenizer

    torch.manual_seed(6)
    copy = AutoModelForCausalLM.from_pretrained(model)
    with torch.no_grad():
        for param in copy.parameters():
            param.add_(noise * param.std() * torch.randn_like(param))
    copy.save_pretrained(out)
    write_tokenizer(out, Path(model) / "tokenizer.json")
    return str(out)


def greedy_run(paths: dict, delta, options, greedy) -> tuple[dict, object]:
    """The HF engine's greedy RAST and vLLM's speculative one (vLLM's counters too), and the
    vLLM decoder, still open."""
    from transfer.decode.backends import open_decoder
    from transfer.decode.decoder import LoadOptions

    reference = open_decoder(paths["L"], (delta,), LoadOptions(engine="hf", dtype="float32"))
    result = {"hf": tokens(reference.generate(PROMPTS, greedy, progress=False))}
    del reference
    decoder = open_decoder(paths["L"], (delta,), options)
    result["vllm"] = tokens(decoder.generate(PROMPTS, greedy, progress=False))
    result["counters"] = decoder.counters()
    return result, decoder


def main(directory: str) -> None:
    out = Path(directory)
    os.environ.setdefault("RAST_HOME", str(out / "home"))  # the padded draft's cache
    from transformers import Qwen2ForCausalLM
    from vllm.v1.sample import rejection_sampler

    from transfer.decode.backends import open_decoder
    from transfer.decode.decoder import LoadOptions, SamplingParams
    from transfer.deltas import resolve_delta

    vllms_expand = rejection_sampler.expand_batch_to_tokens  # before any plugin mends it
    paths = build_models(out / "models")
    one = resolve_delta(paths["S_RL"], paths["S"], lam=1.0)
    speculative = LoadOptions(engine="vllm", dtype="float32", max_model_len=128,
                              speculative=True, draft_tokens=4,
                              vllm_args={"disable_log_stats": False})
    greedy = SamplingParams(temperature=0, max_new_tokens=NEW_TOKENS)
    result = {}
    result["greedy"], decoder = greedy_run(paths, one, speculative, greedy)
    models = {name: Qwen2ForCausalLM.from_pretrained(paths[name]).eval()
              for name in ("L", "S", "S_RL")}
    result["sampled"] = sampled_run(decoder, models)
    (out / RESULT).write_text(json.dumps(result, indent=1))  # what follows may not start
    decoder.engine.llm.llm_engine.engine_core.shutdown()
    del decoder

    near = resolve_delta(paths["L"], near_copy(paths["L"], out / "models" / "L_near"), lam=1.0)
    result["near"], decoder = greedy_run(paths, near, speculative, greedy)
    (out / RESULT).write_text(json.dumps(result, indent=1))
    decoder.engine.llm.llm_engine.engine_core.shutdown()
    del decoder

    # negative control: vLLM's own expand, in this process so that undoing the mend reaches it
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    control = open_decoder(paths["L"], (one,), speculative)
    rejection_sampler.expand_batch_to_tokens = vllms_expand
    result["control"] = sampled_run(control, models)
    (out / RESULT).write_text(json.dumps(result, indent=1))


def verdicts(result: dict) -> dict[str, tuple[bool, str]]:
    greedy, sampled, control = result["greedy"], result["sampled"], result["control"]
    same = sum(a == b for a, b in zip(greedy["hf"], greedy["vllm"]))
    drafted = greedy["counters"].get("drafted", 0)
    near = result["near"]
    near_same = sum(a == b for a, b in zip(near["hf"], near["vllm"]))
    near_drafted, near_accepted = (near["counters"].get(key, 0) for key in ("drafted", "accepted"))
    accepted = sampled["counters"].get("accepted", 0) / max(sampled["counters"].get("drafted",
                                                                                    0), 1)
    return {
        "greedy speculative = HF greedy RAST": (
            same == len(greedy["hf"]) > 0 and drafted > 0,
            (f"{same}/{len(greedy['hf'])} completions token-identical, {drafted} tokens drafted, "
            f"acceptance {greedy['counters'].get('accepted', 0) / max(drafted, 1):.3f}")),
        "greedy, drafts accepted and rejected = HF greedy RAST": (
            near_same == len(near["hf"]) > 0 and 0 < near_accepted < near_drafted,
            (f"S_RL = L, S = L perturbed: {near_same}/{len(near['hf'])} completions "
             f"token-identical, {near_accepted} of {near_drafted} drafted tokens accepted")),
        "T = 1: reported log-probabilities are RAST's": (
            sampled["max_logprob_error"] < 1e-4 and sampled["tokens"] > 1000,
            (f"max |vLLM - recomputed RAST| {sampled['max_logprob_error']:.2e} over "
            f"{sampled['tokens']} tokens")),
        "T = 1: tokens follow RAST (PIT chi-square)": (
            sampled["p_value"] > 0.001,
            (f"chi2 {sampled['chi2']:.1f}, 9 df, p = {sampled['p_value']:.3g}; draft's choice "
            f"{sampled['draft_choice_share']:.3f}; acceptance (cumulative) {accepted:.3f}")),
        "control: vLLM's own CPU expand samples garbage": (
            control["p_value"] < 1e-6,
            (f"chi2 {control['chi2']:.1f}, p = {control['p_value']:.3g}; draft's choice "
            f"{control['draft_choice_share']:.3f}")),
    }


if __name__ == "__main__":
    main(sys.argv[1])
    for name, (ok, detail) in verdicts(json.loads((Path(sys.argv[1]) / RESULT).read_text())
                                       ).items():
        print(f"{'ok ' if ok else 'FAIL'} {name}: {detail}")
