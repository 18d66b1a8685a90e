"""The one grader: the GRPO reward and the benchmark evaluation both call it.

extract_answer() takes the last balanced \\boxed{...} (or \\fbox{...}) of a completion, falling
back to the last plain number (GSM8K style). grade() checks it against the gold answer with
math-verify: both are first rewritten by normalise_answer() (the same rewrite for both), then
wrapped in \\boxed{} and parsed with LatexExtractionConfig only (the default config would fall
back to the last number of a whole completion), then verify(gold, pred), gold first because
verify is asymmetric. The rule, exactly:

- Scientific notation is a number, written out exactly: `4.4e7`, `4.4\\times 10^{7}` and
  `4.4 \\cdot 10^7` become `44000000` (math-verify alone reads `4.4e7` as 4.4 * e * 7 with Euler's
  e, and 58 of Minerva Math's 272 gold answers are written so; and it multiplies `1.16\\times
  10^{2}` in binary floats to 115.99999999999999, not 116). Beyond 10^100 e-notation becomes
  `m\\times 10^{k}` instead.
- A percent sign on ONE side is a unit that may also be read as /100: gold `5` accepts `5\\%`,
  gold `0.05` accepts `5\\%`, gold `5\\%` accepts `5`, `0.05` and `5\\%`; gold `5` rejects `0.05`.
  On both sides the signs cancel (`5\\%` vs `0.05\\%` is wrong).
- Floats agree to math-verify's 6 decimal places, and to 6 significant digits when the gold is
  below 1 in magnitude (6 decimal places would make 1.24e-8 equal 1.3e-8, as both round to 0).
- Everything else is math-verify's: fractions, radicals, sets, intervals, equations, units in
  \\text{}, thousands separators, degrees, matrices. An answer that does not parse is wrong.

Why worker processes, and why CPU time: math-verify is sympy, and some answers never finish
(sympy tries to evaluate 9^{9^{9^{9^9}}} exactly), while a signal cannot interrupt one long C call
such as a big-integer multiplication. math-verify's own timeouts use signal.alarm, which only
works in a main thread with whole seconds. So the sympy work runs in long-lived subprocesses, each
answer with a budget of CPU seconds (timeout_s), not of wall time, so that a grade does not depend
on how loaded the machine is: inside the worker a CPU-time timer (ITIMER_PROF, at 80% of the
budget) stops most runaway work cheaply, and the kernel kills a worker whose CPU time passes the
whole budget (RLIMIT_CPU, rounded up to whole seconds), which no C call can ignore; either way the
grade is "timeout", its own reason. CPU time is what the work costs, not how long it waited for a
core, so a rerun under any load grades alike; only an answer needing within a few percent of the
budget (CPU timing noise) or one a worker's warm sympy cache speeds up (the same expression
graded before) can land on the other side of it. The parent kills and replaces a
worker only when it has not answered within a generous wall time (a stopped or swapping worker)
and retries that answer once on a fresh worker. grade() therefore works from threads, from
DataLoader/TRL worker processes (subprocesses, not multiprocessing children, so daemonic processes
may use it too) and never hangs. The pool is lazy, module-level, shared by all threads, rebuilt
after a fork and shut down at exit; it grows with its callers: a caller that finds every worker
busy for LEASE_PATIENCE_S starts its own. A worker's start (~1-1.6 s on a loaded 2-core machine)
is paid once per process; warm_up() pays it ahead of time. After that an answer costs ~3-15 ms.

Run it on one answer:
    python -m train.grader '\\frac{1}{2}' 'so the answer is \\boxed{0.5}'
"""

from __future__ import annotations

import argparse
import atexit
import logging
import math
import os
import re
import resource
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from decimal import Decimal
from multiprocessing.connection import Connection, wait
from pathlib import Path

logger = logging.getLogger(__name__)

# The in-worker CPU timer fires at this share of timeout_s, before the kernel's CPU-limit kill (a
# kill costs a ~1 s respawn; a soft timeout costs nothing).
SOFT_TIMEOUT_SHARE = 0.8
# The parent's wall-clock backstop per answer: WALL_GRACE_S + WALL_SLOWDOWN * timeout_s (130 s for
# the default 5 s). Only a worker getting under 1/20 of a core for its whole budget, i.e. one that
# is stopped or swapping, hits it; that answer is retried once on a fresh worker.
WALL_GRACE_S = 30.0
WALL_SLOWDOWN = 20.0
# A caller that finds every worker busy for this long starts one of its own: about what a start
# costs (~1 s of CPU), so waiting never costs more than twice the better choice (ski rental).
LEASE_PATIENCE_S = 1.0
# Generous: on a loaded 2-core machine a worker's python start + math-verify warm-up took ~1-4 s.
WORKER_START_TIMEOUT_S = 120.0
# Cap on a worker's address space: 10**10**10 as an exact integer needs ~4 GB; fail fast instead.
WORKER_MEMORY_BYTES = 3 * 2**30

_BOX_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BRACE_RE = re.compile(r"\\.|[{}]", re.DOTALL)  # an escaped character, or a brace
# A plain number: 2,125 / -3.5 / .5 / 4.4e7; the sign only when not glued to a word ("3-5" ends
# in 5).
_NUMBER_RE = re.compile(r"(?:(?<![\w.])-)?(?<![\w.,])(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?(?<=\d)"
                        r"(?:[eE][-+]?\d+(?!\w|\.\d))?")
# Scientific notation: a mantissa not glued to a word or to a ^/_ before it ("2^3\times 10^{2}" is
# 2^3 times 100), then e/E and a signed exponent (4.4e7; "2e^{3}" is not one), or \times, \cdot
# or * and 10^{k} or 10^k (math-verify too reads 10^12 as 10^{12}).
_SCIENTIFIC_RE = re.compile(
    r"(?<![\w.\\^_])(\d+(?:\.\d*)?|\.\d+)(?:"
    r"[eE]([-+]?\d+)(?![.\d])"
    r"|\s*(?:\\times|\\cdot|\*)\s*10\s*\^\s*(?:\{\s*([-+]?\d+)\s*\}|([-+]?\d+)(?![.\d])))")
MAX_SPELLED_EXPONENT = 100  # 4.4e7 -> 44000000; a longer number than 10^100 stays m\times 10^{k}
_PERCENT_RE = re.compile(r"\\?%")  # \% or a bare %


@dataclass(frozen=True)
class Grade:
    correct: bool
    extracted: str | None
    reason: str  # "ok", "wrong", "no-answer", "timeout", "parse-error"


def _boxed_contents(text: str) -> list[str]:
    """Contents of every complete \\boxed{...}/\\fbox{...}, in order; \\{ and \\} do not count.

    One pass over the braces (a stack), so a flood of unclosed boxes stays linear in the text.
    """
    openers = [match.end() - 1 for match in _BOX_RE.finditer(text)]  # positions of their "{"
    if not openers:
        return []
    closing, stack = {}, []
    for token in _BRACE_RE.finditer(text, openers[0]):
        if token.group() == "{":
            stack.append(token.start())
        elif token.group() == "}" and stack:
            closing[stack.pop()] = token.start()
    return [text[start + 1 : closing[start]] for start in openers if start in closing]


def extract_answer(text: str) -> str | None:
    """The final answer of a completion, or None.

    The last complete box wins; a truncated last box (no closing brace) falls back to the last
    complete one, and a text whose only box is truncated has no answer (the model was writing
    one). Without any box: the last plain number, thousands separators dropped.

    >>> extract_answer(r"so \\boxed{\\frac{1}{2}} or rather \\boxed{\\frac{1}{3}}")
    '\\\\frac{1}{3}'
    >>> extract_answer("She pays 2,125 dollars.")
    '2125'
    """
    if not text:
        return None
    if _BOX_RE.search(text):
        boxes = _boxed_contents(text)
        return boxes[-1].strip() if boxes else None
    numbers = _NUMBER_RE.findall(text)
    return numbers[-1].replace(",", "") if numbers else None


def normalise_answer(answer: str) -> tuple[str, bool]:
    """(answer with scientific notation written out and percent signs removed, whether it had one).

    The grader applies it to the gold and the prediction alike; see the module docstring for
    how a percent sign is then read.

    >>> normalise_answer("4.4e7")
    ('44000000', False)
    >>> normalise_answer("1.2 \\\\times 10^{-5} \\\\%")
    ('0.000012', True)
    """
    spelled = _SCIENTIFIC_RE.sub(_spell_out, answer)
    without_percent = _PERCENT_RE.sub("", spelled)
    return without_percent.strip(), without_percent != spelled


def _spell_out(match: re.Match) -> str:
    """A scientific-notation match as an exact decimal (sympy would multiply a binary float:
    1.16 * 10^2 is 115.99999999999999, not the gold 116)."""
    mantissa, exponent = match.group(1), int(next(g for g in match.groups()[1:] if g))
    before = match.string[:match.start()].rstrip()
    if match.group(2) is None and before.endswith(("/", "\\div")):
        return match.group(0)  # 6/3\times 10^{2} is (6/3) times 100, not 6/300
    if abs(exponent) <= MAX_SPELLED_EXPONENT:
        return f"{Decimal(mantissa).scaleb(exponent):f}"
    return f"{mantissa}\\times 10^{{{exponent}}}" if match.group(2) else match.group(0)


def _readings(gold: str, pred: str) -> list[tuple[str, str]]:
    """The (gold, prediction) pairs to verify, in order; one of them matching is correct."""
    (gold, gold_percent), (pred, pred_percent) = normalise_answer(gold), normalise_answer(pred)
    pairs = [(gold, pred)]
    if gold_percent and not pred_percent:  # gold 5% also accepts 0.05
        pairs.append((f"\\frac{{{gold}}}{{100}}", pred))
    if pred_percent and not gold_percent:  # gold 0.05 also accepts 5%
        pairs.append((gold, f"\\frac{{{pred}}}{{100}}"))
    return pairs


# ---------------------------------------------------------------- worker side (subprocess)


class _SoftTimeout(BaseException):
    """BaseException so that math-verify's and sympy's `except Exception` cannot swallow it."""


def _raise_soft_timeout(signum, frame):
    raise _SoftTimeout


def _float_rounding(gold) -> int:
    """Decimal places for math-verify's float comparison: its default 6, or 6 significant digits
    for a gold number below 1 in magnitude (1.24e-8 -> 13 places)."""
    try:
        value = abs(float(gold))
    except Exception:  # noqa: BLE001 - not a number: a set, a matrix, a symbol, a string ...
        return 6
    if value == 0 or not math.isfinite(value):
        return 6
    return max(6, 5 - math.floor(math.log10(value)))


def _verify(gold: str, pred: str) -> bool | None:
    """Whether pred equals gold under math-verify; None when either does not parse."""
    from math_verify import LatexExtractionConfig, parse, verify

    # boxed_match_priority=0: the \boxed{} we wrap around the answer is the thing to read.
    config = [LatexExtractionConfig(boxed_match_priority=0)]
    try:
        # None disables math-verify's own alarm (whole seconds only, and it would cancel ours).
        gold_parsed = parse(f"\\boxed{{{gold}}}", config, parsing_timeout=None)
        pred_parsed = parse(f"\\boxed{{{pred}}}", config, parsing_timeout=None)
        if not gold_parsed or not pred_parsed:
            return None
        return verify(gold_parsed, pred_parsed, float_rounding=_float_rounding(gold_parsed[0]),
                      timeout_seconds=None)
    except Exception:  # noqa: BLE001 - sympy/latex2sympy raise anything on odd answers
        return None


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _check(gold: str, pred: str, timeout_s: float, soft_timeout_s: float) -> tuple[bool, str]:
    """Every reading of (gold, pred), in the worker's main thread, within timeout_s CPU seconds:
    a timer interrupts it at soft_timeout_s, the kernel kills the process at timeout_s."""
    # The kernel's kill: SIGXCPU once this process's CPU time reaches the (whole-second) limit.
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    limit = math.ceil(_cpu_seconds() + timeout_s)
    resource.setrlimit(resource.RLIMIT_CPU,
                       (limit if hard == resource.RLIM_INFINITY else min(limit, hard), hard))
    signal.setitimer(signal.ITIMER_PROF, soft_timeout_s)
    try:
        outcomes = []
        for gold_reading, pred_reading in _readings(gold, pred):
            outcomes.append(_verify(gold_reading, pred_reading))
            if outcomes[-1]:
                return True, "ok"
        return False, "parse-error" if outcomes[0] is None else "wrong"
    except _SoftTimeout:
        return False, "timeout"
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)


def _serve(request_fd: int, result_fd: int) -> None:
    """Worker loop: answer (gold, pred, timeout_s, soft_timeout_s) requests until the pipe
    closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    signal.signal(signal.SIGPROF, _raise_soft_timeout)
    # SIGXCPU's default action dumps core: a killed worker must not leave a 100 MB file behind.
    resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))
    # math-verify warns on every timeout and on timeout_seconds=None; the parent reports reasons.
    for name in ("math_verify", "latex2sympy2_extended"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    requests = Connection(request_fd, writable=False)
    results = Connection(result_fd, readable=False)
    _check("\\frac{1}{2}", "5\\%", 30.0, 30.0)  # warm-up: imports, regex compilation, sympy caches
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard == resource.RLIM_INFINITY or hard > WORKER_MEMORY_BYTES:
        resource.setrlimit(resource.RLIMIT_AS, (WORKER_MEMORY_BYTES, hard))
    results.send("ready")
    while True:
        try:
            request = requests.recv()
        except EOFError:  # the parent closed the pipe or exited
            os._exit(0)  # skip interpreter teardown of sympy's caches (~0.5 s per worker)
        try:
            outcome = _check(*request)
        except _SoftTimeout:  # the timer fired between the work and its cancellation
            outcome = (False, "timeout")
        results.send(outcome)


# ---------------------------------------------------------------- parent side (pool)

_WORKER_BOOT = (
    "import sys; from train.grader import _serve; _serve(int(sys.argv[1]), int(sys.argv[2]))"
)
_REPO_ROOT = str(Path(__file__).resolve().parents[1])
_NOT_STARTED = f"a grader worker did not start within {WORKER_START_TIMEOUT_S:.0f} s (overloaded?)"


class _Worker:
    """One grading subprocess and its two pipes; at most one request in flight."""

    def __init__(self):
        request_read, request_write = os.pipe()
        result_read, result_write = os.pipe()
        # The worker imports this very file, also when the project is not installed.
        python_path = [_REPO_ROOT, os.environ.get("PYTHONPATH", "")]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, python_path)))
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-c", _WORKER_BOOT, str(request_read), str(result_write)],
                pass_fds=(request_read, result_write),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                env=env,
            )
        except BaseException:
            os.close(request_write)
            os.close(result_read)
            raise
        finally:
            os.close(request_read)
            os.close(result_write)
        self.requests = Connection(request_write, readable=False)
        self.results = Connection(result_read, writable=False)
        self.ready = False
        self.started = time.monotonic()

    def await_ready(self) -> None:
        try:
            message = self.results.recv()
        except (EOFError, OSError):
            message = None
        if message != "ready":
            self.close(kill=True)
            raise RuntimeError(
                "a grader worker exited while starting (see its traceback above); "
                f"check that `{sys.executable} -c 'import math_verify'` works"
            )
        self.ready = True

    def close(self, kill: bool) -> None:
        if not self.requests.closed:
            self.requests.close()  # EOF: an idle worker exits on its own
        if kill:
            self.process.kill()
        try:
            self.process.wait(timeout=None if kill else 2.0)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.results.close()


class _Pool:
    """Idle workers shared by every thread of this process; callers lease some for one batch."""

    def __init__(self):
        self.pid = os.getpid()
        self.changed = threading.Condition()
        self.idle: list[_Worker] = []
        self.alive: set[_Worker] = set()  # idle + leased

    def lease(self, wanted: int, cap: int) -> list[_Worker]:
        """Between 1 and `wanted` workers, starting new ones while fewer than `cap` are alive.

        A caller that finds every worker busy for LEASE_PATIENCE_S starts one more even past
        `cap`, so the pool grows to the number of concurrent callers and none waits for another's
        slow answers. It never shrinks: idle workers cost memory (~70 MB each), not CPU.
        """
        give_up_waiting = time.monotonic() + LEASE_PATIENCE_S
        with self.changed:
            while True:
                self.idle.sort(key=lambda worker: not worker.ready)
                taken, self.idle = self.idle[:wanted], self.idle[wanted:]
                room = cap - len(self.alive)
                if not taken and room <= 0 and time.monotonic() >= give_up_waiting:
                    room = 1
                to_start = min(wanted - len(taken), max(0, room))
                if taken or to_start:
                    break
                self.changed.wait(max(0.0, give_up_waiting - time.monotonic()))
            try:
                for _ in range(to_start):  # Popen returns at once; the worker warms up alone
                    taken.append(_Worker())
                    self.alive.add(taken[-1])
            except BaseException:
                self.idle.extend(taken)
                raise
        return taken

    def give_back(self, workers: list[_Worker]) -> None:
        with self.changed:
            for worker in workers:
                if worker.requests.closed or worker.process.poll() is not None:
                    worker.close(kill=True)
                    self.alive.discard(worker)
                else:
                    self.idle.append(worker)
            self.changed.notify_all()

    def replace(self, worker: _Worker) -> _Worker:
        """Kill a worker (stuck, dead or in an unknown state) and start its successor."""
        worker.close(kill=True)
        with self.changed:
            self.alive.discard(worker)
            self.changed.notify_all()
            successor = _Worker()
            self.alive.add(successor)
        return successor

    def shutdown(self) -> None:
        with self.changed:
            idle, self.idle = self.idle, []
            self.alive.difference_update(idle)
        for worker in idle:
            worker.requests.close()  # all of them first, so they exit in parallel
        for worker in idle:
            worker.close(kill=False)


_pool: _Pool | None = None
_pool_lock = threading.Lock()


def _get_pool() -> _Pool:
    global _pool
    with _pool_lock:
        if _pool is None or _pool.pid != os.getpid():
            _pool = _Pool()
        return _pool


def _forget_pool_after_fork() -> None:
    # The child must not talk to its parent's workers (their replies would interleave), and the
    # lock may have been held by another thread at fork time. Drop both; the child starts its own.
    global _pool, _pool_lock
    _pool, _pool_lock = None, threading.Lock()


def _shutdown_pool() -> None:
    if _pool is not None and _pool.pid == os.getpid():
        _pool.shutdown()


os.register_at_fork(after_in_child=_forget_pool_after_fork)
atexit.register(_shutdown_pool)


def _killed_by_cpu_limit(worker: _Worker) -> bool:
    try:
        return worker.process.wait(timeout=10.0) == -signal.SIGXCPU
    except subprocess.TimeoutExpired:  # its pipe closed but it lives on: not the kernel's kill
        return False


def _run_checks(
    tasks: list[tuple[int, str, str]], timeout_s: float, workers_wanted: int
) -> dict[int, tuple[bool, str]]:
    """Send each (index, gold, pred) to a leased worker; (correct, reason) for each index."""
    pool = _get_pool()
    workers = pool.lease(min(workers_wanted, len(tasks)), max(workers_wanted, os.cpu_count() or 1))
    pending = deque((index, gold, pred, False) for index, gold, pred in tasks)  # False: 1st try
    outcomes = {}
    in_flight: dict[_Worker, tuple[tuple, float]] = {}  # worker -> (task, wall-clock deadline)
    wall_limit_s = WALL_GRACE_S + WALL_SLOWDOWN * timeout_s
    soft_timeout_s = max(0.01, SOFT_TIMEOUT_SHARE * timeout_s)
    try:
        while pending or in_flight:
            for slot, worker in enumerate(workers):
                if worker.ready and worker not in in_flight and pending:
                    _, gold, pred, _ = pending[0]
                    try:
                        worker.requests.send((gold, pred, timeout_s, soft_timeout_s))
                    except OSError:  # it died while idle (OOM killer?): start another, retry
                        workers[slot] = pool.replace(worker)
                        continue
                    in_flight[worker] = (pending.popleft(), time.monotonic() + wall_limit_s)
            deadlines = [deadline for _, deadline in in_flight.values()]
            deadlines += [w.started + WORKER_START_TIMEOUT_S for w in workers if not w.ready]
            waiting = {w.results: w for w in workers if w in in_flight or not w.ready}
            for connection in wait(list(waiting), max(0.0, min(deadlines) - time.monotonic())):
                worker = waiting[connection]
                if not worker.ready:
                    worker.await_ready()
                    continue
                (index, *_), _ = in_flight.pop(worker)
                try:
                    outcomes[index] = connection.recv()
                except (EOFError, OSError):  # killed at its CPU limit, or crashed (segfault)
                    cpu_limit = _killed_by_cpu_limit(worker)
                    outcomes[index] = (False, "timeout" if cpu_limit else "parse-error")
                    workers[workers.index(worker)] = pool.replace(worker)
            now = time.monotonic()
            for worker, (task, deadline) in list(in_flight.items()):
                if now >= deadline:  # no reply in wall time: stopped or starved, not slow work
                    del in_flight[worker]
                    workers[workers.index(worker)] = pool.replace(worker)
                    index, gold, pred, retried = task
                    logger.warning("grader worker gave no reply in %.0f s of wall time%s",
                                   wall_limit_s, "" if retried else "; retrying on a fresh one")
                    if retried:
                        outcomes[index] = (False, "timeout")
                    else:
                        pending.append((index, gold, pred, True))
            if any(not w.ready and now - w.started > WORKER_START_TIMEOUT_S for w in workers):
                raise RuntimeError(_NOT_STARTED)
    finally:
        # A worker with a request in flight would hand its stale reply to the next caller.
        for worker in in_flight:
            worker.close(kill=True)
        pool.give_back(workers)
    return outcomes


def warm_up(workers: int | None = None) -> None:
    """Start up to `workers` grading processes (default: one per core) and wait until they are
    ready, so that later calls do not pay the ~1 s start (e.g. before a training loop)."""
    wanted = workers or os.cpu_count() or 1
    pool = _get_pool()
    leased = pool.lease(wanted, max(wanted, os.cpu_count() or 1))
    try:
        deadline = time.monotonic() + WORKER_START_TIMEOUT_S
        while waiting := {w.results: w for w in leased if not w.ready}:
            ready = wait(list(waiting), max(0.0, deadline - time.monotonic()))
            if not ready:
                raise RuntimeError(_NOT_STARTED)
            for connection in ready:
                waiting[connection].await_ready()
    finally:
        pool.give_back(leased)


def grade_batch(
    golds: list[str], completions: list[str], timeout_s: float = 5.0, workers: int | None = None
) -> list[Grade]:
    """Grade completions[i] against golds[i], in parallel over `workers` processes (default: all
    cores). Each answer gets at most timeout_s seconds of CPU time (not wall time: the grade does
    not depend on the machine's load); a wrong, unparsable or timed-out answer is
    Grade(False, extracted, reason), never an exception. (RuntimeError only if a worker cannot
    start at all: a broken environment, where silently scoring 0 would corrupt training.)"""
    if len(golds) != len(completions):
        raise ValueError(f"got {len(golds)} gold answers for {len(completions)} completions")
    extracted = [extract_answer(completion) for completion in completions]
    # A gold that already carries a box ("\\boxed{5}") is graded on its content.
    golds = [(_boxed_contents(gold) or [gold])[-1].strip() for gold in golds]
    tasks = [(i, gold, answer) for i, (gold, answer) in enumerate(zip(golds, extracted)) if answer]
    outcomes = _run_checks(tasks, timeout_s, workers or os.cpu_count() or 1) if tasks else {}
    grades = []
    for i, answer in enumerate(extracted):
        correct, reason = outcomes.get(i, (False, "no-answer"))
        grades.append(Grade(correct, answer, reason))
    return grades


def grade(gold: str, completion: str, timeout_s: float = 5.0) -> Grade:
    """Grade one completion against its gold answer; safe from any thread or process."""
    return grade_batch([gold], [completion], timeout_s=timeout_s, workers=1)[0]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Grade one completion against a gold answer.")
    parser.add_argument("gold")
    parser.add_argument("completion")
    parser.add_argument("--timeout_s", type=float, default=5.0, help="CPU seconds per answer")
    args = parser.parse_args(argv)
    print(grade(args.gold, args.completion, args.timeout_s))


if __name__ == "__main__":
    main()
