"""The RAST server (transfer.serve) end to end, through the `openai` client, on hub-shaped stand-ins.

Run apart from pytest (test_serve.py starts it as a subprocess; `make rehearse` runs it too):

    python -m tests.transfer.serve_check DIR     # DIR: scratch; writes DIR/serve_check.json

The models of tests/transfer/decode/vllm_check.py (real Qwen2.5 tokenizer, 152064/151936 rows,
head_dim 128/64): `python -m transfer.serve` serves L + two pairs (lam 1 and 0.5) in float32 on a
free port, as a subprocess; meanwhile the HF engine (the exactness reference, which the offline
vLLM backend matches token for token: vllm_check.py) decodes the same prompts. Then, against the
server: greedy /v1/completions by text and by token ids; the same requests from several threads
at once; a stream closed after two chunks and a request whose client timed out, after which
the server must have aborted both and still answer as before; a forced <|im_end|> (a stop id of
the plan that the target's own generation config does not name) ends a completion, and does not
with ignore_eos; a prompt's log-probabilities as lm-eval's loglikelihood requests them (echo,
logprobs) against RAST's recomputed from full forwards; /v1/chat/completions on the chat
template's prompt.
"""

import json
import re
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.transfer.decode.vllm_check import PROMPTS, build_models, rast_logprobs

RESULT = "serve_check.json"
NEW_TOKENS = 20
LONG = 100  # tokens a cancelled request asks for: several seconds of decoding on 2 CPU cores
IM_END = 151645  # Qwen2.5's <|im_end|>: a plan stop id; the stand-in L's config names 151643 only
MODEL = "rast-check"
CHAT = [{"role": "user", "content": "What is 12 times 7?"}]
PAIRS = [("S", "S_RL", 1.0), ("S2", "S2_RL", 0.5)]  # what the server is launched with
SCORED = PROMPTS[3]  # the longest prompt: its log-probabilities, as lm-eval's loglikelihood asks


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(paths: dict[str, str], port: int, log: Path) -> subprocess.Popen:
    argv = [sys.executable, "-m", "transfer.serve", "--target", paths["L"],
            "--small_rl", *(paths[rl] for _, rl, _ in PAIRS),
            "--small_base", *(paths[base] for base, _, _ in PAIRS),
            "--lam", *(str(lam) for *_, lam in PAIRS), "--dtype", "float32",
            "--max_model_len", "128", "--host", "127.0.0.1", "--port", str(port),
            "--served_model_name", MODEL]
    return subprocess.Popen(argv, stdout=open(log, "w"), stderr=subprocess.STDOUT)


def wait_healthy(base: str, server: subprocess.Popen, log: Path, timeout: float = 600) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited ({server.returncode}):\n"
                               f"{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise RuntimeError(f"no /health within {timeout} s:\n{log.read_text()[-3000:]}")


def metric(base: str, name: str, labels: str = "") -> float:
    """A Prometheus value of the server's /metrics, summed over the series matching `labels`."""
    import httpx

    pattern = re.compile(rf"^{re.escape(name)}\{{[^}}]*{re.escape(labels)}[^}}]*\}} (\S+)$",
                         re.MULTILINE)
    return sum(float(value) for value in pattern.findall(httpx.get(f"{base}/metrics").text))


def hf_reference(paths: dict[str, str], chat_prompt: str, scored_ids: list[int]) -> dict:
    """The HF engine's greedy completions, and the RAST log-probabilities of `scored_ids`
    recomputed from full forwards."""
    from transformers import Qwen2ForCausalLM

    from transfer.decode.backends import open_decoder
    from transfer.decode.decoder import LoadOptions, SamplingParams
    from transfer.deltas import resolve_delta

    deltas = tuple(resolve_delta(paths[rl], paths[base], lam) for base, rl, lam in PAIRS)
    decoder = open_decoder(paths["L"], deltas, LoadOptions(engine="hf", dtype="float32"))
    completions = decoder.generate([*PROMPTS, chat_prompt],
                                   SamplingParams(temperature=0, max_new_tokens=NEW_TOKENS),
                                   progress=False)
    models = {name: Qwen2ForCausalLM.from_pretrained(paths[name]).eval()
              for name in ("L", "S", "S_RL", "S2", "S2_RL")}
    return {"tokens": [c.token_ids for c in completions[:-1]],
            "chat": completions[-1].token_ids, "stops": [c.stop for c in completions],
            "scored": rast_logprobs(models, PAIRS, scored_ids[:1], scored_ids[1:])}


def exercise(base: str) -> dict:
    """Every request of the check against a healthy server; what it answered."""
    from openai import APITimeoutError, OpenAI

    client = OpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0, timeout=300)
    greedy = {"model": MODEL, "max_tokens": NEW_TOKENS, "temperature": 0,
              "extra_body": {"return_token_ids": True}}

    def complete(prompt) -> list[int]:
        return client.completions.create(prompt=prompt, **greedy).choices[0].token_ids

    found, timings = {}, {}
    start = time.monotonic()
    first = client.completions.create(prompt=PROMPTS, **greedy)  # a batch of text prompts
    found["text"] = [c.token_ids for c in sorted(first.choices, key=lambda c: c.index)]
    found["prompt_ids"] = [c.prompt_token_ids for c in sorted(first.choices, key=lambda c: c.index)]
    by_ids = client.completions.create(prompt=found["prompt_ids"], **greedy)
    found["token_ids"] = [c.token_ids for c in sorted(by_ids.choices, key=lambda c: c.index)]
    timings["two batch requests"] = time.monotonic() - start

    start = time.monotonic()
    with ThreadPoolExecutor(len(PROMPTS) * 2) as pool:  # each prompt twice, all at once
        found["concurrent"] = list(pool.map(complete, PROMPTS * 2))
    timings[f"{len(PROMPTS) * 2} concurrent requests"] = time.monotonic() - start

    # cancelled: a stream closed after two chunks, and a request whose client gave up
    tokens_before = metric(base, "vllm:generation_tokens_total")
    long = {"model": MODEL, "prompt": "Hi", "max_tokens": LONG, "temperature": 0,
            "extra_body": {"ignore_eos": True}}
    stream = client.completions.create(stream=True, **long)
    found["stream_chunks_read"] = sum(1 for _, _ in zip(range(2), stream))
    stream.close()
    try:
        client.with_options(timeout=0.5).completions.create(**long)
        found["client_timed_out"] = False
    except APITimeoutError:
        found["client_timed_out"] = True
    deadline, start = time.monotonic() + 60, time.monotonic()
    while time.monotonic() < deadline and (metric(base, "vllm:num_requests_running")
                                           + metric(base, "vllm:num_requests_waiting")):
        time.sleep(0.2)
    found["idle_after_cancel_s"] = time.monotonic() - start
    found["requests_left"] = (metric(base, "vllm:num_requests_running")
                              + metric(base, "vllm:num_requests_waiting"))
    found["cancelled_tokens"] = metric(base, "vllm:generation_tokens_total") - tokens_before
    found["after_cancel"] = [complete(prompt) for prompt in PROMPTS]

    # stop ids: <|im_end|> forced by a logit bias ends the completion, unless ignore_eos
    forced = {"model": MODEL, "prompt": "Hi", "max_tokens": 4, "temperature": 0,
              "logit_bias": {str(IM_END): 100}}
    stopped = client.completions.create(extra_body={"return_token_ids": True}, **forced).choices[0]
    ignored = client.completions.create(extra_body={"return_token_ids": True,
                                                    "ignore_eos": True}, **forced).choices[0]
    found["forced_stop"] = [stopped.finish_reason, stopped.stop_reason, stopped.token_ids]
    found["forced_ignore_eos"] = [ignored.finish_reason, ignored.token_ids]

    # lm-eval local-completions' loglikelihood request: the prompt echoed with its log-probs
    echoed = client.completions.create(model=MODEL, prompt=SCORED, max_tokens=1, temperature=0,
                                       logprobs=1, echo=True).choices[0]
    found["scored"] = echoed.logprobs.token_logprobs

    chat = client.chat.completions.create(messages=CHAT, **greedy)
    found["chat"] = chat.choices[0].token_ids
    found["chat_prompt_ids"] = chat.prompt_token_ids
    found["chat_text"] = chat.choices[0].message.content
    found["models"] = [model.id for model in client.models.list().data]
    found["timings"] = timings
    return found


def main(directory: str) -> None:
    from transformers import AutoTokenizer

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    paths = build_models(out / "models")
    tokenizer = AutoTokenizer.from_pretrained(paths["L"])
    chat_prompt = tokenizer.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    port, log = free_port(), out / "server.log"
    base = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    server = start_server(paths, port, log)
    result = {"timings": {}}
    try:
        result["reference"] = hf_reference(  # while the server starts
            paths, chat_prompt, tokenizer(SCORED)["input_ids"])
        result["timings"]["HF reference"] = time.monotonic() - started
        wait_healthy(base, server, log)
        result["timings"]["server start (to /health)"] = time.monotonic() - started
        start = time.monotonic()
        result["server"] = exercise(base)
        result["timings"]["requests"] = time.monotonic() - start
        result["timings"].update(result["server"].pop("timings"))
        result["expected_prompt_ids"] = tokenizer(PROMPTS)["input_ids"]
        result["expected_chat_prompt_ids"] = tokenizer(chat_prompt)["input_ids"]
    finally:
        server.terminate()
        try:
            result["server_exit"] = server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            result["server_exit"] = "killed"
    result["timings"]["total"] = time.monotonic() - started
    (out / RESULT).write_text(json.dumps(result, indent=1))


def verdicts(result: dict) -> dict[str, tuple[bool, str]]:
    """Per check: (passed, what was seen)."""
    reference, served = result["reference"]["tokens"], result["server"]

    def same(name: str, answers: list, expected: list = reference) -> tuple[bool, str]:
        equal = sum(a == b for a, b in zip(answers, expected))
        return (equal == len(expected) == len(answers) and equal > 0,
                f"{equal}/{len(expected)} completions token-identical to the HF engine ({name})")

    found = {
        "greedy, text prompts": same("one request, text prompts", served["text"]),
        "greedy, token-id prompts": same("one request, prompt token ids", served["token_ids"]),
        "prompt tokens": (served["prompt_ids"] == result["expected_prompt_ids"],
                          "the server's prompt tokens are the tokenizer's"),
        "concurrent requests": same(f"{len(served['concurrent'])} threads at once",
                                    served["concurrent"], reference * 2),
    }
    cancelled = (served["stream_chunks_read"] == 2 and served["client_timed_out"]
                 and served["requests_left"] == 0 and served["cancelled_tokens"] < 2 * LONG)
    found["cancelled requests aborted"] = (
        cancelled, (f"a stream closed after {served['stream_chunks_read']} chunks, a client "
                    f"timeout {'hit' if served['client_timed_out'] else 'NOT hit'}: "
                    f"{served['cancelled_tokens']:.0f} of {2 * LONG} tokens decoded, "
                    f"{served['requests_left']:.0f} requests left after "
                    f"{served['idle_after_cancel_s']:.1f} s"))
    found["answers after the cancels"] = same("after the cancelled requests",
                                              served["after_cancel"])
    stop_reason, stop_tokens = served["forced_stop"][1:]
    found["plan stop ids end completions"] = (
        served["forced_stop"][0] == "stop" and stop_reason == IM_END and stop_tokens == [IM_END]
        and served["forced_ignore_eos"] == ["length", [IM_END] * 4],
        (f"forced <|im_end|>: {served['forced_stop']}; with ignore_eos: "
         f"{served['forced_ignore_eos']}"))
    found["chat completions"] = (
        served["chat"] == result["reference"]["chat"]
        and served["chat_prompt_ids"] == result["expected_chat_prompt_ids"],
        (f"chat answer {served['chat_text']!r} "
         f"{'equals' if served['chat'] == result['reference']['chat'] else 'DIFFERS from'} "
         f"the HF engine's on the chat template's prompt"))
    scored, exact = served["scored"], result["reference"]["scored"]
    errors = [abs(a - b) for a, b in zip(scored[1:len(exact) + 1], exact)]
    found["prompt log-probabilities"] = (
        scored[0] is None and len(errors) == len(exact) > 30 and max(errors) < 1e-4,
        (f"echo + logprobs (lm-eval's loglikelihood request): max |served - recomputed RAST| "
         f"{max(errors, default=float('nan')):.2e} over {len(errors)} prompt tokens"))
    found["served model name"] = (served["models"] == [MODEL], f"/v1/models: {served['models']}")
    found["clean shutdown"] = (result["server_exit"] == 0,
                               f"server exit after SIGTERM: {result['server_exit']}")
    return found


def verdict(result: dict) -> tuple[bool, str]:
    """All checks at once, for `make rehearse`: (ok, the failed ones or the timings)."""
    failed = {name: detail for name, (ok, detail) in verdicts(result).items() if not ok}
    timings = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in result["timings"].items())
    return not failed, "; ".join(failed.values()) if failed else f"all passed; {timings}"


if __name__ == "__main__":
    main(sys.argv[1])
