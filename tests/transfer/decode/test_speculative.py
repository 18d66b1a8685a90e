"""Speculative RAST: greedy output is the plain engine's, sampled output follows the exactly
enumerated RAST distribution (for a good and a poor draft), and a row's tokens depend on its seed
only, not on k, the batch or the cache."""

import copy
import math

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import Qwen2Config, Qwen2ForCausalLM

from transfer.decode.decoder import SamplingParams
from transfer.decode.engine import RastEngine
from transfer.decode.loading import RL_ADAPTER
from transfer.decode.rast import combine_logits, warp_logits
from transfer.decode.speculative import DraftSchedule, Ends, inverse_cdf

SHARED = 98
STOP_IDS = [6, 11, 33, 52, 85]  # frequent greedy tokens: rows end at scattered steps


# tiny models decode fastest on one thread (and the same on every machine)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def qwen2(rows: int, seed: int, hidden: int = 32) -> Qwen2ForCausalLM:
    config = Qwen2Config(vocab_size=rows, hidden_size=hidden, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
                         tie_word_embeddings=False)  # tied random models echo their last token
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(config).eval()


@torch.no_grad()
def perturbed(model, scale: float, seed: int, rows: int | None = None):
    """A copy of `model` with Gaussian noise on every weight; rows: a wider embedding and head
    (the extra rows random), as a large model's padding."""
    torch.manual_seed(seed)
    other = copy.deepcopy(model) if rows is None else qwen2(rows, seed, model.config.hidden_size)
    for (name, param), source in zip(other.named_parameters(), model.parameters()):
        param[:source.shape[0]] = source
        param.add_(scale * source.std() * torch.randn_like(param))
    return other


@pytest.fixture(scope="module")
def triple():
    """S_base, S_RL (S_base perturbed) and L (S_RL perturbed, 160 embedding rows): S_RL's drafts
    agree with the RAST target often, not always, so rows accept different numbers."""
    base = qwen2(128, seed=1)
    rl = perturbed(base, 0.3, seed=2)
    return {"large": perturbed(rl, 0.25, seed=3, rows=160), "small_base": base, "small_rl": rl}


@pytest.fixture(scope="module")
def lora_triple(triple):
    """S_base with a random LoRA adapter as S_RL, and L built from the merged adapter as above."""
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"],
                        init_lora_weights=False)
    torch.manual_seed(5)
    peft_model = get_peft_model(copy.deepcopy(triple["small_base"]), config,
                                adapter_name=RL_ADAPTER).eval()
    merged = copy.deepcopy(peft_model).merge_and_unload()
    return {"large": perturbed(merged, 0.25, seed=3, rows=160), "small_base": peft_model,
            "small_rl": RL_ADAPTER}


def rast(large, base, rl, lam: float, **options) -> RastEngine:
    """The engine of one loaded pair at lam (the RL model or the name of its LoRA adapter)."""
    return RastEngine(large, [(base, rl)], [lam], **options)


def prompts(count: int, seed: int = 0) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(1, SHARED, (length,), generator=generator).tolist()
            for length in (3, 9, 1, 12, 6, 4, 10, 7)[:count]]


@pytest.mark.parametrize("cache", ["dynamic", "static"])
@pytest.mark.parametrize("pair", ["full", "lora"])
@pytest.mark.parametrize("lam", [0.0, 1.0, 2.0])
def test_greedy_speculative_output_is_the_plain_engines(triple, lora_triple, lam, pair, cache):
    models = [(triple if pair == "full" else lora_triple)[name]
              for name in ("large", "small_base", "small_rl")]
    plain = rast(*models, lam=lam, vocab_size=SHARED)
    spec = rast(*models, lam=lam, vocab_size=SHARED, cache=cache, speculative=True,
                draft_tokens=4)
    params = SamplingParams(temperature=0, max_new_tokens=40)
    for batch in (1, 8):
        ids = prompts(batch)
        expected = plain.decode(ids, [[0]] * batch, params, STOP_IDS)
        assert spec.decode(ids, [[0]] * batch, params, STOP_IDS) == expected
    lengths = [len(tokens) for tokens, _ in expected]
    assert len(set(lengths)) > 2  # rows left the batch at scattered steps
    assert 0 < spec.speculative.acceptance_rate() < 1
    assert spec.speculative.stats["ragged_rounds"] > 0  # rows of one round kept different counts
    counts = spec.forward_counts()
    assert counts["large"]["decode_calls"] < sum(lengths)  # fewer L forwards than tokens


def test_sampled_tokens_depend_on_the_seed_only_not_on_k_batch_cache_or_pair_form(triple):
    """A position's token is a function of its target, its draft distribution and its own
    uniforms: the same at every k (0 included), batch, order, cache and small-pair form."""
    ids, seeds = prompts(8), [[s, s + 100] for s in range(8)]
    params = SamplingParams(temperature=0.9, top_p=0.95, max_new_tokens=30)
    models = (triple["large"], triple["small_base"], triple["small_rl"])
    reference = rast(*models, lam=1.0, vocab_size=SHARED, speculative=True,
                     draft_tokens=3).decode(ids, seeds, params, STOP_IDS)
    variants = {"k=0": {"draft_tokens": 0}, "k=6": {"draft_tokens": 6}, "adaptive": {},
                "static": {"draft_tokens": 3, "cache": "static"},
                "unstacked": {"draft_tokens": 3, "stack_small": False}}
    for name, options in variants.items():
        engine = rast(*models, lam=1.0, vocab_size=SHARED, speculative=True, **options)
        assert engine.decode(ids, seeds, params, STOP_IDS) == reference, name
    engine = rast(*models, lam=1.0, vocab_size=SHARED, speculative=True, draft_tokens=3)
    alone = [row for p in range(8) for row in engine.decode(ids[p:p + 1], seeds[p:p + 1], params,
                                                            STOP_IDS)]
    reversed_rows = engine.decode(ids[::-1], seeds[::-1], params, STOP_IDS)
    assert alone == reference
    assert [row for p in reversed(range(8)) for row in reversed_rows[2 * p:2 * p + 2]] == reference
    assert reference[0] != reference[1]  # two samples of one prompt: two seeds
    plain = rast(*models, lam=1.0, vocab_size=SHARED).decode(ids, seeds, params, STOP_IDS)
    assert plain != reference  # another sampler: same distribution, other tokens


def test_unstacked_pair_drafts_with_s_rl_and_verifies_s_base_beside_l(triple):
    models = (triple["large"], triple["small_base"], triple["small_rl"])
    engine = rast(*models, lam=1.0, vocab_size=SHARED, speculative=True, draft_tokens=4,
                  stack_small=False)
    params = SamplingParams(temperature=0, max_new_tokens=30)
    rows = engine.decode(prompts(8), [[0]] * 8, params, STOP_IDS)
    counts = engine.forward_counts()
    assert counts["small_base"]["decode_calls"] == counts["large"]["decode_calls"]
    assert counts["small_rl"]["decode_calls"] > 2 * counts["large"]["decode_calls"]
    stats = engine.speculative.stats
    assert counts["large"]["decode_calls"] == stats["rounds"]  # one verify forward per round
    assert stats["emitted"] == sum(len(ids) - 1 for ids, _ in rows)  # the first: from prefill


def test_draft_schedule_drafts_where_it_pays_and_switches_off_where_it_does_not():
    schedule = DraftSchedule(None)
    assert schedule.choose(budget=10) == 4  # nothing measured yet
    schedule.update(4, tested=50, accepted=49, draft_s=5 * 0.9e-3, rest_s=1.7e-3)
    assert schedule.choose(budget=10) == 0  # then the cost of k = 0, once
    schedule.update(0, tested=10, accepted=10, draft_s=0.9e-3, rest_s=1.55e-3)
    schedule.tested, schedule.passed = 100, 99
    assert schedule.choose(budget=10) == 8 and schedule.choose(budget=3) == 3
    schedule.update(0, tested=1000, accepted=300, draft_s=0.9e-3, rest_s=1.6e-3)
    assert schedule.acceptance == pytest.approx((0.9 * 99 + 300) / (0.9 * 100 + 1000))
    assert schedule.choose(budget=10) == 0  # acceptance ~0.36: drafting does not pay
    assert DraftSchedule(3).choose(budget=10) == 3 and DraftSchedule(3).choose(budget=1) == 1
    compute_bound = DraftSchedule(None)  # a large batch: the verify costs grow with its width
    compute_bound.draft_step_s, compute_bound.rest_s = 0.5, {1: 1.0, 5: 5.0}
    compute_bound.tested, compute_bound.passed = 100, 99
    assert compute_bound.expected_seconds(8) == pytest.approx(9 * 0.5 + 9.0)
    assert compute_bound.choose(budget=10) == 0


def test_inverse_cdf_never_draws_a_zero_weight_id():
    weights = torch.tensor([[0.0, 0.5, 0.5, 0.0], [0.2, 0.0, 0.0, 0.8], [1.0, 0.0, 0.0, 0.0]])
    assert inverse_cdf(weights, torch.tensor([0.0, 0.25, 0.999999])).tolist() == [1, 3, 0]
    assert inverse_cdf(weights, torch.tensor([1.0, 0.2, 0.5])).tolist() == [2, 3, 0]


# Exactness: the first tokens' empirical distribution against the exactly enumerated one.

VOCAB = 5  # shared ids; the small models have 6 embedding rows, the large one 7
TOKENS = 3  # enumerated positions: 1 from the prefill, 2 and 3 drafted (k = 2) and verified
SAMPLES = 6000


def small_vocab_triple(poor: bool):
    """Good draft: L is S_RL (padded) plus noise, so q is close to p. Poor draft: S_RL is an
    unrelated sharp model, so most drafts are rejected and tokens come from the residual."""
    base = qwen2(6, seed=11, hidden=16)
    with torch.no_grad():
        base.lm_head.weight.mul_(4)  # sharper distributions: a draft can be badly wrong
    rl = perturbed(base, 0.3, seed=12)
    large = perturbed(rl, 0.2, seed=13, rows=7)
    if poor:
        with torch.no_grad():
            rl.lm_head.weight.mul_(-2)  # S_RL now prefers the tokens L and S_base avoid
    return large, base, rl


@torch.no_grad()
def exact_distribution(models, prompt, lam, params) -> dict[tuple, float]:
    """P(first TOKENS tokens) of RAST, by enumeration with uncached full forwards."""
    def next_probs(sequence):
        z = [model(torch.tensor([sequence])).logits[0, -1:] for model in models]
        combined = combine_logits(*z, lam=lam, shared_vocab=VOCAB)
        return warp_logits(combined, params.temperature, params.top_k,
                           params.top_p).softmax(-1)[0, :VOCAB]

    table = {(): 1.0}
    for _ in range(TOKENS):
        table = {prefix + (token,): mass * p.item()
                 for prefix, mass in table.items() if mass > 0
                 for p_all in [next_probs(prompt + list(prefix))]
                 for token, p in enumerate(p_all)}
    return table


def chi_square_critical(df: int, z: float = 3.090) -> float:
    """The 0.999 quantile of chi-square(df) (z: the normal's), by Wilson-Hilferty (within ~1%
    at df >= 10)."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


@pytest.mark.parametrize("poor", [False, True], ids=["good-draft", "poor-draft"])
def test_sampled_speculative_tokens_follow_the_exact_rast_distribution(poor):
    """Chi-square goodness of fit at significance 0.001 (fixed seeds: deterministic), over the
    outcomes of the first three tokens, cells of expected count < 5 pooled. The poor draft
    (warped with temperature and top-k, so p and q even differ in support) is rejected most of
    the time, so nearly every token comes from the residual normalize(max(0, p - q))."""
    large, base, rl = small_vocab_triple(poor)
    lam = 0.1 if poor else 1.0  # a small lam: the target stays near L, far from S_RL
    params = (SamplingParams(temperature=0.8, top_k=3, max_new_tokens=TOKENS + 1) if poor
              else SamplingParams(temperature=1.0, max_new_tokens=TOKENS + 1))
    prompt = [1, 3, 2]
    engine = rast(large, base, rl, lam=lam, vocab_size=VOCAB, speculative=True,
                  draft_tokens=TOKENS)
    rows = engine.decode([prompt], [list(range(SAMPLES))], params, stop_ids=[])
    counts = {}
    for ids, _ in rows:
        counts[tuple(ids[:TOKENS])] = counts.get(tuple(ids[:TOKENS]), 0) + 1
    exact = exact_distribution((large, base, rl), prompt, lam, params)
    assert set(counts) <= {key for key, mass in exact.items() if mass > 0}
    statistic, pooled_expected, pooled_count, cells = 0.0, 0.0, 0, 0
    for key, mass in exact.items():
        expected = SAMPLES * mass
        if expected < 5:
            pooled_expected, pooled_count = pooled_expected + expected, pooled_count + counts.get(key, 0)
            continue
        statistic += (counts.get(key, 0) - expected) ** 2 / expected
        cells += 1
    if pooled_expected > 0:
        statistic += (pooled_count - pooled_expected) ** 2 / pooled_expected
        cells += 1
    assert cells > 10  # the test has power: many outcomes are likely
    assert statistic < chi_square_critical(cells - 1), (statistic, cells)
    rate = engine.speculative.acceptance_rate()
    assert (rate < 0.4) if poor else (rate > 0.6), rate



def test_cli_and_transfer_recipes_turn_speculation_on(tiny_models, tmp_path):
    import json

    from transfer.deltas import resolve_delta
    from transfer.eval.evaluate import System, TransferConfig, load_decoder
    from transfer.generate import main

    names = (tiny_models["large"], tiny_models["small_base"], tiny_models["small_rl"])
    source = tmp_path / "prompts.jsonl"
    source.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ("Q: 4*7=", "Q: 12*3=")))
    rows = {}
    for flags in ([], ["--speculative"], ["--speculative", "--draft-tokens", "2"]):
        output = tmp_path / f"{len(flags)}.jsonl"
        main(["--large", names[0], "--small-base", names[1], "--small-rl", names[2], "--input",
              str(source), "--output", str(output), "--temperature", "0", "--max-new-tokens", "12",
              *flags])
        rows[len(flags)] = [json.loads(line)["token_ids"] for line in output.read_text().splitlines()]
    assert rows[0] == rows[1] == rows[3]  # greedy: speculation changes the speed only
    with pytest.raises(SystemExit) as exit_info:
        main(["--large", names[0], "--input", str(source), "--output", str(tmp_path / "x"),
              "--draft-tokens", "2"])
    assert exit_info.value.code == 2

    config = TransferConfig(target=names[0], small_base=names[1], small_rl=names[2],
                            speculative=True)
    delta = resolve_delta(names[2], names[1], 1.0)
    rast = load_decoder(System("RAST", names[0], (delta,)), config)
    alone = load_decoder(System("L", names[0]), config)
    assert rast.speculative is not None and alone.speculative is None


def test_drafting_ends_at_a_drafted_stop_id_and_output_stays_the_plain_engines(triple):
    """At batch 1 a round whose draft is a stop id ends there whether it is accepted or not,
    so that draft is never fed to the draft unit (the steps after it would only be rolled
    back); the output is unchanged."""
    models = (triple["large"], triple["small_base"], triple["small_rl"])
    plain = rast(*models, lam=1.0, vocab_size=SHARED)
    spec = rast(*models, lam=1.0, vocab_size=SHARED, speculative=True, draft_tokens=6)
    fed = []
    decode = spec.small[0].decode
    spec.small[0].decode = lambda tokens: fed.append(tokens.item()) or decode(tokens)
    params = SamplingParams(temperature=0, max_new_tokens=40)
    stopped = 0
    for prompt in prompts(8):
        expected = plain.decode([prompt], [[0]], params, STOP_IDS)
        assert spec.decode([prompt], [[0]], params, STOP_IDS) == expected
        stopped += expected[0][1] in STOP_IDS
    assert stopped >= 4  # most rows end on a stop id
    assert not set(fed) & set(STOP_IDS), "a drafted stop id was fed to the draft unit"


def test_a_round_ends_once_every_row_has_drafted_a_stop_id_or_reached_its_budget():
    """Rows end at different draft steps: a row that drafted a stop id (or whose budget ends)
    emits nothing past that position, so drafting ends once every row got there, not only when
    all rows draft a stop id at the same step."""
    ends = Ends({6, 11}, (), None)
    ends.start_round(torch.tensor([9, 9, 9]))
    assert not ends.all_ended(torch.tensor([6, 2, 3]), 0)
    assert not ends.all_ended(torch.tensor([4, 11, 3]), 1)  # row 0 drafted a stop at step 0
    assert ends.all_ended(torch.tensor([4, 5, 6]), 2)
    ends.start_round(torch.tensor([9, 2, 3]))  # rows 1 and 2 may emit 2 and 3 more tokens
    assert not ends.all_ended(torch.tensor([11, 2, 3]), 0)
    assert not ends.all_ended(torch.tensor([1, 2, 3]), 1)  # row 2 may still emit position 3
    assert ends.all_ended(torch.tensor([1, 2, 3]), 2)


@pytest.mark.slow
def test_compiled_verify_runs_every_width_in_one_graph(triple):
    """compile=True: verify forwards of widths 1..9 share a dynamic-shape graph (the width is
    read from the tokens tensor). Passed as a number, it recompiled per width until dynamo's
    recompile limit (8) sent the other widths back to eager, slower than not speculating.
    Greedy output stays the plain eager loop's."""
    from torch._dynamo.eval_frame import _debug_get_cache_entry_list

    from transfer.decode.static_cache import verify_step

    models = (triple["large"], triple["small_base"], triple["small_rl"])
    params = SamplingParams(temperature=0, max_new_tokens=30)
    ids = prompts(8)
    expected = rast(*models, lam=1.0, vocab_size=SHARED).decode(ids, [[0]] * 8, params,
                                                                STOP_IDS)
    for k in range(9):
        spec = rast(*models, lam=1.0, vocab_size=SHARED, compile=True, speculative=True,
                    draft_tokens=k)
        assert spec.decode(ids, [[0]] * 8, params, STOP_IDS) == expected, k
    assert len(_debug_get_cache_entry_list(verify_step.__code__)) <= 4


@pytest.fixture(scope="module")
def qwen_shaped(qwen_tokenizer):
    """The Qwen path's shapes with the real tokenizer: a 1.5B-shaped pair (151936 rows, tied)
    and a 32B-shaped L (152064 rows, untied head) made from the RL model plus noise, so that
    drafts are accepted often but not always (hidden 32 and 2 layers, as the hub stand-ins)."""
    from dataclasses import replace

    from transformers import AutoTokenizer

    from tests.rehearsal.standins import shrunk_architecture
    from train.models import qwen2_config

    def build(size: str, seed: int, hidden: int = 32):
        torch.manual_seed(seed)
        architecture = replace(shrunk_architecture(size), hidden=hidden, ffn=2 * hidden)
        return Qwen2ForCausalLM(qwen2_config(architecture)).eval()

    base = build("1.5B", seed=0)
    rl = perturbed(base, 0.3, seed=1)
    large = build("32B", seed=2)
    sources = dict(rl.named_parameters())
    sources["lm_head.weight"] = rl.lm_head.weight  # the pair's head is its tied embedding
    with torch.no_grad():
        for name, param in large.named_parameters():
            param[:sources[name].shape[0]] = sources[name]
            param.add_(0.4 * sources[name].std() * torch.randn_like(param))
    assert (base.config.vocab_size, large.config.vocab_size) == (151936, 152064)
    assert base.config.tie_word_embeddings and not large.config.tie_word_embeddings
    return (large, base, rl), AutoTokenizer.from_pretrained(qwen_tokenizer)


@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_greedy_speculative_on_the_qwen_path_is_the_plain_engines(qwen_shaped, cache):
    """152064- against 151936-row models on the 151665 shared ids, byte-level BPE text, chat and
    plain prompts, the Qwen recipes' stop ids and stop strings, and two strings these random
    models write, one inside a token and one across two: the plain loop's completions, token
    for token, whether the stacked pair or S_RL alone drafts."""
    models, tokenizer = qwen_shaped
    chat = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
    texts = [chat.format("What is 12*7?"), "Question:\nFind x if 2x+3=11.\nAnswer:\n",
             chat.format("How many primes are below 20?"), "Question:\nWhat is $\\frac{1}{2}$?\nAnswer:\n"]
    stops = ("</s>", "<|im_end|>", "<|endoftext|>", "assistant", "user", "_end", "_start",
             "sso", "rollc")  # greedy random models repeat "asso" / "croll": mid-token, across two
    params = SamplingParams(temperature=0, max_new_tokens=24, stop_strings=stops)
    plain = rast(*models, lam=1.0, tokenizer=tokenizer)
    expected = plain.generate(texts, params, stop_ids=[151645, 151643], progress=False)
    for stack in (True, False):
        spec = rast(*models, lam=1.0, tokenizer=tokenizer, cache=cache, speculative=True,
                    draft_tokens=4, stack_small=stack)
        completions = spec.generate(texts, params, stop_ids=[151645, 151643], progress=False)
        assert [(c.token_ids, c.text, c.stop) for c in completions] == [
            (c.token_ids, c.text, c.stop) for c in expected]
        assert 0 < spec.speculative.acceptance_rate() < 1
    assert spec.shared_vocab == 151665
    assert [c.stop for c in expected] == [None, "sso", None, "rollc"]
    assert expected[1].text.endswith(":\na") and expected[3].text == ":\nc"  # cut mid-token
