"""What `make rehearse` checks after the real commands ran (tests/rehearsal/run.py).

Each check returns (ok, detail) and reads only what the commands left on disk, except the
logits check, which loads three stand-ins itself to compare the engine's combined logits with
a hand-made combination.
"""

import importlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from tests.rehearsal.standins import MARKER
from train.qwen_tokenizer import ENDOFTEXT_ID, IM_END_ID
from transfer.eval.samples import Sample
from transfer.runlog import read_records

STOP_TEXTS = ("<|endoftext|>", "<|im_end|>")
SHARED_VOCAB = 151665


def snapshots(cache: Path) -> dict[str, str]:
    """Hub id -> snapshot directory of every stand-in."""
    return json.loads((cache / MARKER).read_text())["snapshots"]


def load_weights(directory: Path) -> dict[str, torch.Tensor]:
    weights = {}
    for file in sorted(Path(directory).glob("*.safetensors")):
        weights.update(load_file(file))
    return weights


def trained_weights_moved(output_dir: Path, base_snapshot: str) -> tuple[bool, str]:
    """The saved full model against its base: share of entries that changed, and their dtypes.

    At lr 5e-7 a bf16 weight (8 significant bits) rounds nearly every AdamW update away; only
    fp32 master weights, saved as fp32, keep a few steps' movement. Fails until training keeps
    fp32 masters (issue 14, defect 1).
    """
    trained, base = load_weights(output_dir), load_weights(Path(base_snapshot))
    if not trained:
        return False, f"no weights saved in {output_dir}"
    moved = total = 0
    for name, tensor in trained.items():
        reference = base[name.removeprefix("model.") if name not in base else name]
        moved += (tensor.float() != reference.float()).sum().item()
        total += tensor.numel()
    dtypes = sorted({str(t.dtype).removeprefix("torch.") for t in trained.values()})
    share = moved / total
    return share > 0.5, f"{share:.1%} of {total:,} entries moved; saved as {', '.join(dtypes)}"


def lora_adapters_moved(output_dir: Path) -> tuple[bool, str]:
    """LoRA B matrices start at zero (peft), so their non-zero share is the share that moved."""
    adapter = load_weights(output_dir)
    lora_b = [t for name, t in adapter.items() if "lora_B" in name]
    if not lora_b:
        return False, f"no lora_B weights in {output_dir}"
    moved = sum((t != 0).sum().item() for t in lora_b)
    total = sum(t.numel() for t in lora_b)
    dtypes = sorted({str(t.dtype).removeprefix("torch.") for t in adapter.values()})
    ok = moved / total > 0.5 and dtypes == ["float32"]
    return ok, f"{moved / total:.1%} of {total:,} lora_B entries moved; adapter saved as {dtypes}"


def grpo_stops(output_dir: Path) -> tuple[bool, str]:
    """TRL ended some completions at a stop id before max_completion_length (its clipped share
    stays below 1), and a saved full model's generation config lists both 151643 and 151645 (a
    LoRA output holds the adapter alone, without one)."""
    config = output_dir / "generation_config.json"
    eos = json.loads(config.read_text())["eos_token_id"] if config.is_file() else None
    eos = eos if isinstance(eos, list) or eos is None else [eos]
    states = sorted(output_dir.glob("checkpoint-*/trainer_state.json"))
    history = json.loads(states[-1].read_text())["log_history"] if states else []
    clipped = [entry["completions/clipped_ratio"] for entry in history
               if "completions/clipped_ratio" in entry]
    both_stops = eos is None or {ENDOFTEXT_ID, IM_END_ID} <= set(eos)
    ok = both_stops and bool(clipped) and min(clipped) < 1
    return ok, (f"eos ids {eos if eos is not None else '(adapter only)'}; clipped (no stop) share "
                f"per step {clipped}")


LOGP_GAP = "sampling/sampling_logp_difference/mean"
LOGP_GAP_LIMIT = 0.01


def logp_gaps(output_dir: Path) -> list[float]:
    """TRL's mean |policy - vLLM| log-prob of the sampled tokens, per logged step (vLLM only)."""
    states = sorted(output_dir.glob("checkpoint-*/trainer_state.json"))
    history = json.loads(states[-1].read_text())["log_history"] if states else []
    return [entry[LOGP_GAP] for entry in history if LOGP_GAP in entry]


def vllm_follows_policy(output_dir: Path, steps: int) -> tuple[bool, str]:
    """Generated with vLLM (TRL logs the gap only then), and after every optimizer step vLLM's
    log-probs stay within LOGP_GAP_LIMIT of the policy's: the weights reached vLLM."""
    gaps = logp_gaps(output_dir)
    ok = len(gaps) == steps and max(gaps) < LOGP_GAP_LIMIT
    return ok, f"logp difference per step {[round(g, 5) for g in gaps]} (limit {LOGP_GAP_LIMIT})"


def unsynced_vllm_drifts(output_dir: Path, steps: int) -> tuple[bool, str]:
    """The control: without the sync the gap exceeds the limit once the policy has moved."""
    gaps = logp_gaps(output_dir)
    ok = len(gaps) == steps and gaps[-1] > LOGP_GAP_LIMIT and gaps[-1] > gaps[0]
    return ok, f"logp difference per step {[round(g, 5) for g in gaps]} (must exceed {LOGP_GAP_LIMIT})"


def vllm_cpu_pieces(directory: Path, check: str = "vllm_cpu_check") -> tuple[bool, str]:
    """tests/train/vllm_cpu_check.py's measurements (TRL's sync fails, reload alone leaves the
    tied head stale, reload + re-pack matches the policy, the engine is eager), or
    vllm_server_check.py's (`trl vllm-serve` fails, train.vllm_server serves, vLLM's reload alone
    leaves the tied head stale, the checkpoint sync matches the policy)."""
    module = importlib.import_module(f"tests.train.{check}")
    return module.verdict(json.loads((directory / module.RESULT).read_text()))


def decode_check(directory: Path, check: str) -> tuple[bool, str]:
    """Every verdict of tests/transfer/decode/<check>.py passed: vllm_check (vLLM RAST = HF RAST:
    greedy tokens, stops, sampled log-probabilities, preemption), vllm_spec_check (speculation:
    greedy = HF, T = 1 tokens and log-probs RAST's, vLLM's own CPU expand fails), vllm_tp_check
    (tensor parallelism 2: greedy = HF at three lambdas, sampled log-probs RAST's)."""
    module = importlib.import_module(f"tests.transfer.decode.{check}")
    found = module.verdicts(json.loads((directory / module.RESULT).read_text()))
    failed = [f"{name}: {detail}" for name, (ok, detail) in found.items() if not ok]
    return not failed, "; ".join(failed) or "; ".join(detail for _, detail in found.values())


def engine_recorded(output_dir: Path, engine: str) -> tuple[bool, str]:
    """Every system of the evaluation was decoded by `engine` (systems.json, the resume key)."""
    systems = json.loads((output_dir / "systems.json").read_text())
    engines = sorted({entry.get("engine", "hf") for entry in systems.values()})
    return engines == [engine], f"{len(systems)} systems decoded by {engines}"


def server_answers(directory: Path) -> tuple[bool, str]:
    """tests/transfer/serve_check.py's verdicts: the served RAST gives the HF engine's greedy
    tokens (text, token ids, concurrent, after cancelled requests, chat), the plan's stop ids end
    completions, cancelled requests are aborted."""
    from tests.transfer.serve_check import RESULT, verdict

    return verdict(json.loads((directory / RESULT).read_text()))


def wandb_offline(directory: Path, at_least: int) -> tuple[bool, str]:
    runs = sorted(directory.rglob("offline-run-*"))
    return len(runs) >= at_least, f"{len(runs)} offline W&B runs under {directory}"


def transfer_outputs(output_dir: Path, max_new_tokens: int) -> tuple[bool, str]:
    """results.md and summary.json written; no completion holds a stop token (the engine cuts
    at the first one and drops it); some stopped early, so the check is not vacuous."""
    missing = [name for name in ("results.md", "summary.json", "samples.jsonl")
               if not (output_dir / name).is_file()]
    if missing:
        return False, f"missing {', '.join(missing)} in {output_dir}"
    records = [json.loads(line) for line in (output_dir / "samples.jsonl").read_text().splitlines()]
    past_stop = [r for r in records if any(stop in r["text"] for stop in STOP_TEXTS)]
    too_long = [r for r in records if r["num_tokens"] > max_new_tokens]
    stopped = [r for r in records if r["finished"] and r["num_tokens"] < max_new_tokens]
    ok = not past_stop and not too_long and bool(stopped)
    return ok, (f"{len(records)} samples, {len(stopped)} stopped early, {len(past_stop)} run past "
                f"a stop, {len(too_long)} over {max_new_tokens} tokens")


def speculative_transfer(output_dir: Path, plain_dir: Path, max_new_tokens: int) -> tuple[bool, str]:
    """`speculative: true` on the Qwen path: its outputs pass transfer_outputs; the systems it
    does not touch (L, S_RL, L_RL) have the plain run's samples exactly, and every RAST sample
    of the plain run on these problems has a speculative counterpart."""
    ok, detail = transfer_outputs(output_dir, max_new_tokens)
    if not ok:
        return False, detail

    def samples(directory: Path) -> dict:
        return {(r.system, r.benchmark, r.problem_id, r.sample_index): (r.token_ids, r.text)
                for r in read_records(directory / "samples.jsonl", Sample)}

    spec, plain = samples(output_dir), samples(plain_dir)
    benchmarks = {key[1] for key in spec}
    plain = {key: value for key, value in plain.items() if key[1] in benchmarks}
    untouched = [key for key in spec if "RAST" not in key[0]]
    same = sum(spec[key] == plain.get(key) for key in untouched)
    rast = {key for key in spec if "RAST" in key[0]}
    ok = bool(untouched) and same == len(untouched) and rast == {k for k in plain if "RAST" in k[0]}
    return ok, (f"{detail}; {same} of {len(untouched)} L/S_RL/L_RL samples as the plain run's, "
                f"{len(rast)} RAST samples")


def hub_rl_pairs_without_pair_file(output_dir: Path, snapshot_dirs: dict[str, str]) -> tuple[bool, str]:
    """The hub RL stand-in has no rast_pair.json, so transfer pairs it through the recipe's
    explicit small_base, and refuses in one line without one."""
    from train.errors import UserError
    from train.pairing import PAIR_FILE, read_pair, resolve_pair

    rl_id, base_id = "hkust-nlp/Qwen-2.5-1.5B-SimpleRL-Zoo", "Qwen/Qwen2.5-1.5B"
    if (Path(snapshot_dirs[rl_id]) / PAIR_FILE).exists():
        return False, f"the {rl_id} stand-in has a {PAIR_FILE}"
    systems = json.loads((output_dir / "systems.json").read_text())
    # each system's deltas (transfer.deltas): the resolved pair and its lambda
    deltas = [d for s in systems.values() for d in s["deltas"] if d["lam"] and d["rl"] == rl_id]
    rast = [s for s in systems.values() if s["role"] == "RAST"
            and any(d["rl"] == rl_id for d in s["deltas"])]
    paired = bool(rast) and bool(deltas) and all(d["base"] == base_id for d in deltas)
    try:
        resolve_pair(rl_id)
        refused = "not refused"
    except UserError as err:
        refused = f"refused: {err}"
    ok = paired and read_pair(rl_id) == {} and refused.startswith("refused")
    return ok, f"{len(rast)} RAST system(s) paired {rl_id} with {base_id}; without small_base {refused}"


PAIR_1_5B = ("Qwen/Qwen2.5-1.5B", "hkust-nlp/Qwen-2.5-1.5B-SimpleRL-Zoo", 1.0)
PAIR_7B = ("Qwen/Qwen2.5-7B", "hkust-nlp/Qwen-2.5-7B-SimpleRL-Zoo", 0.5)


def logits_combined_on_shared_ids(snapshot_dirs: dict[str, str],
                                  pairs: tuple = (PAIR_1_5B,)) -> tuple[bool, str]:
    """The engine combines 32B (152064 rows) with small pairs ((base, rl, lam) each: the 1.5B
    pair has 151936 rows, the 7B pair 152064) on ids < 151665: its first step's logits equal
    z_L + sum lam (z_RL - z_S) there, and ids >= 151665 are -inf; pairs of two sizes run as a
    stacked unit each."""
    from transformers import AutoModelForCausalLM

    from train.models import load_tokenizer
    from transfer.decode.decoder import SamplingParams
    from transfer.decode.engine import RastEngine

    def load(name):
        return AutoModelForCausalLM.from_pretrained(snapshot_dirs[name], dtype=torch.float32)

    large = load("Qwen/Qwen2.5-32B")
    models = [(load(base), load(rl), lam) for base, rl, lam in pairs]
    tokenizer = load_tokenizer(snapshot_dirs["Qwen/Qwen2.5-32B"])
    prompt = tokenizer("<|im_start|>user\nWhat is 1+1?<|im_end|>\n<|im_start|>assistant\n")["input_ids"]
    with torch.no_grad():
        def last(model):
            return model(torch.tensor([prompt])).logits[0, -1]

        z_large = last(large)
        expected, rows = z_large[:SHARED_VOCAB].clone(), [z_large.shape[-1]]
        for base, rl, lam in models:
            z_base, z_rl = last(base), last(rl)
            expected += lam * (z_rl[:SHARED_VOCAB] - z_base[:SHARED_VOCAB])
            rows += [z_base.shape[-1], z_rl.shape[-1]]
    # Built directly, not by from_deltas: this checks the maths, not tokenizer pairing.
    engine = RastEngine(large, [(m[0], m[1]) for m in models], [m[2] for m in models],
                        tokenizer=tokenizer, cache="dynamic")
    steps = []
    engine.decode([prompt], [[0]], SamplingParams(temperature=1.0, max_new_tokens=2),
                  on_step=lambda active, logits: steps.append(logits[0].clone()))
    first = steps[0]
    error = (first[:SHARED_VOCAB] - expected).abs().max().item()
    masked = bool(torch.isneginf(first[SHARED_VOCAB:]).all())
    units = [unit.copies for unit in engine.small]
    ok = (first.shape[-1] == 152064 and set(rows) == {151936, 152064} and error < 1e-4 and masked
          and units == [2] * len(pairs))
    return ok, (f"rows {rows}, small units {units}, combined width {first.shape[-1]}, max "
                f"|engine - by hand| on {SHARED_VOCAB} ids {error:.1e}, ids >= {SHARED_VOCAB} "
                f"all -inf: {masked}")


def log_shows_all(logs: list[Path], *needles: str) -> tuple[bool, str]:
    results = [log_shows(log, *needles) for log in logs]
    return bool(results) and all(ok for ok, _ in results), "; ".join(d for _, d in results)


def log_shows(log: Path, *needles: str) -> tuple[bool, str]:
    text = log.read_text() if log.is_file() else ""
    found = [needle for needle in needles if needle in text]
    return len(found) == len(needles), f"{log} shows {found} of {list(needles)}"


def all_checks(out: Path, logs: dict[str, Path], cache: Path, max_new_tokens: int) -> list:
    """(name, function, args) of every check, in the order they are printed."""
    snapshot_dirs = snapshots(cache)
    transfer_32b = out / "transfer-32B-1.5B"
    return [
        ("GRPO full: weights moved (fp32 masters)", trained_weights_moved,
         (out / "grpo-full", snapshot_dirs["Qwen/Qwen2.5-1.5B"])),
        ("GRPO LoRA: adapters moved, fp32", lora_adapters_moved, (out / "grpo-lora",)),
        ("GRPO full: stops at 151643/151645", grpo_stops, (out / "grpo-full",)),
        ("GRPO LoRA: stops at 151643/151645", grpo_stops, (out / "grpo-lora",)),
        ("GRPO 0.5B: stops at 151643/151645", grpo_stops, (out / "grpo-sync",)),
        ("vLLM on CPU: each piece of train/vllm_cpu.py needed", vllm_cpu_pieces,
         (out / "vllm-cpu-check",)),
        ("GRPO full: vLLM colocate follows the policy", vllm_follows_policy, (out / "grpo-full", 2)),
        ("GRPO LoRA: vLLM colocate follows the merged policy", vllm_follows_policy,
         (out / "grpo-lora", 2)),
        ("GRPO 0.5B lr 1e-3: vLLM follows the policy", vllm_follows_policy, (out / "grpo-sync", 3)),
        ("GRPO 0.5B lr 1e-3, no sync: vLLM drifts (control)", unsynced_vllm_drifts,
         (out / "grpo-no-sync", 3)),
        ("vLLM server on CPU: each server piece of train/vllm_cpu.py needed", vllm_cpu_pieces,
         (out / "vllm-server-check", "vllm_server_check")),
        ("GRPO 0.5B server mode: stops at 151643/151645", grpo_stops, (out / "grpo-server",)),
        ("GRPO 0.5B lr 1e-3, server mode: vLLM follows the policy", vllm_follows_policy,
         (out / "grpo-server", 3)),
        ("GRPO 0.5B lr 1e-3, server mode, no sync: vLLM drifts (control)", unsynced_vllm_drifts,
         (out / "grpo-server-no-sync", 3)),
        ("GRPO: W&B offline runs", wandb_offline, (out / "grpo-full", 1)),
        ("transfer 32B: results, stops", transfer_outputs, (transfer_32b, max_new_tokens)),
        ("transfer 32B: decoded by vLLM (the recipe's engine)", engine_recorded,
         (transfer_32b, "vllm")),
        ("vLLM RAST = HF engine RAST (greedy, stops, log-probs, preemption)", decode_check,
         (out / "vllm-check", "vllm_check")),
        ("speculative vLLM RAST: greedy = HF, T = 1 exact, unmended CPU sampler fails",
         decode_check, (out / "vllm-spec-check", "vllm_spec_check")),
        ("vLLM RAST at tensor parallelism 2: greedy = HF, log-probs RAST's", decode_check,
         (out / "vllm-tp-check", "vllm_tp_check")),
        ("transfer 32B engine hf: results, stops", transfer_outputs,
         (out / "transfer-32B-hf", max_new_tokens)),
        ("transfer 32B speculative: stops, plain run's L samples", speculative_transfer,
         (out / "transfer-32B-speculative", out / "transfer-32B-hf", max_new_tokens)),
        ("transfer 7B: results, stops", transfer_outputs, (out / "transfer-7B-1.5B", max_new_tokens)),
        ("transfer 32B: W&B offline runs", wandb_offline, (transfer_32b, 5)),
        ("hub RL paired without rast_pair.json", hub_rl_pairs_without_pair_file,
         (transfer_32b, snapshot_dirs)),
        ("logits 152064 + 151936 rows on 151665 ids", logits_combined_on_shared_ids,
         (snapshot_dirs,)),
        ("logits of the 1.5B and 7B pairs combined", logits_combined_on_shared_ids,
         (snapshot_dirs, (PAIR_1_5B, PAIR_7B))),
        ("transfer 32B, pairs combined: results, stops", transfer_outputs,
         (out / "transfer-32B-combined", max_new_tokens)),
        ("analysis 32B: report written", log_shows_files, (out / "analyze-32B",)),
        ("server: HF engine's tokens, concurrent, cancelled, chat", server_answers,
         (out / "serve-check",)),
        ("transfer dry-run plan printed", log_shows,
         (logs["plan: make transfer TARGET=32B ARGS=--dry-run"], "systems:", "GB")),
        ("GRPO dry-run plans printed, fit", log_shows_all,
         ([logs[name] for name in logs if name.startswith("plan: make train-small")],
          "training memory plan per GPU", ": fits")),
    ]


def log_shows_files(output_dir: Path) -> tuple[bool, str]:
    missing = [n for n in ("report.md", "summary.json") if not (output_dir / n).is_file()]
    runs = len(list(output_dir.rglob("offline-run-*")))
    return not missing and runs >= 1, f"missing {missing}; {runs} offline W&B run(s)"
