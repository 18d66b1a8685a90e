"""The one grader: the GRPO reward and the benchmark evaluation both call it.

extract_answer() takes the last balanced \\boxed{...} (or \\fbox{...}) of a completion, falling
back to the last plain number (GSM8K style). grade() checks it against the gold answer with
math-verify: both are wrapped in \\boxed{} and parsed with LatexExtractionConfig only (the default
config would fall back to the last number of a whole completion), then verify(gold, pred), gold
first because verify is asymmetric.

Why worker processes: math-verify is sympy, and some answers never finish (sympy tries to
evaluate 9^{9^{9^{9^9}}} exactly), while a signal cannot interrupt one long C call such as a
big-integer multiplication. math-verify's own timeouts use signal.alarm, which only works in a
main thread with whole seconds. So the sympy work
runs in long-lived subprocesses: inside them a float SIGALRM timer (setitimer, at 80% of the bound)
stops most runaway work cheaply, and the parent kills and replaces any worker that has not answered
after the full bound. grade() therefore works from threads, from DataLoader/TRL worker processes
(subprocesses, not multiprocessing children, so daemonic processes may use it too) and never
hangs. The pool is lazy, module-level, shared by all threads, rebuilt after a fork and shut down
at exit, so a worker's start (~1-1.6 s on a loaded 2-core machine) is paid once per process;
warm_up() pays it ahead of time. After that an answer costs ~3-15 ms of one core.

Run it on one answer:
    python -m train.grader '\\frac{1}{2}' 'so the answer is \\boxed{0.5}'
"""

from __future__ import annotations

import argparse
import atexit
import logging
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
from multiprocessing.connection import Connection, wait
from pathlib import Path

# The in-worker timer fires at this share of timeout_s, leaving the rest for the reply to arrive
# before the parent's hard kill (a kill costs a ~1 s respawn; a soft timeout costs nothing).
SOFT_TIMEOUT_SHARE = 0.8
# Generous: on a loaded 2-core machine a worker's python start + math-verify warm-up took ~1-4 s.
WORKER_START_TIMEOUT_S = 120.0
# Cap on a worker's address space: 10**10**10 as an exact integer needs ~4 GB; fail fast instead.
WORKER_MEMORY_BYTES = 3 * 2**30

_BOX_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BRACE_RE = re.compile(r"\\.|[{}]", re.DOTALL)  # an escaped character, or a brace
# A plain number: 2,125 / -3.5 / .5; the sign only when not glued to a word ("3-5" ends in 5).
_NUMBER_RE = re.compile(r"(?:(?<![\w.])-)?(?<![\w.,])(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?(?<=\d)")


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


# ---------------------------------------------------------------- worker side (subprocess)


class _SoftTimeout(BaseException):
    """BaseException so that math-verify's and sympy's `except Exception` cannot swallow it."""


def _raise_soft_timeout(signum, frame):
    raise _SoftTimeout


def _check(gold: str, pred: str, soft_timeout_s: float) -> tuple[bool, str]:
    """parse + verify in the worker's main thread, bounded by a float SIGALRM timer."""
    from math_verify import LatexExtractionConfig, parse, verify

    # boxed_match_priority=0: the \boxed{} we wrap around the answer is the thing to read.
    config = [LatexExtractionConfig(boxed_match_priority=0)]
    signal.setitimer(signal.ITIMER_REAL, soft_timeout_s)
    try:
        # None disables math-verify's own alarm (whole seconds only, and it would cancel ours).
        gold_parsed = parse(f"\\boxed{{{gold}}}", config, parsing_timeout=None)
        pred_parsed = parse(f"\\boxed{{{pred}}}", config, parsing_timeout=None)
        if not gold_parsed or not pred_parsed:
            return False, "parse-error"
        correct = verify(gold_parsed, pred_parsed, timeout_seconds=None)
        return correct, "ok" if correct else "wrong"
    except _SoftTimeout:
        return False, "timeout"
    except Exception:  # noqa: BLE001 - sympy/latex2sympy raise anything on odd answers
        return False, "parse-error"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def _serve(request_fd: int, result_fd: int) -> None:
    """Worker loop: answer (gold, pred, soft_timeout_s) requests until the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    signal.signal(signal.SIGALRM, _raise_soft_timeout)
    # math-verify warns on every timeout and on timeout_seconds=None; the parent reports reasons.
    for name in ("math_verify", "latex2sympy2_extended"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    requests = Connection(request_fd, writable=False)
    results = Connection(result_fd, readable=False)
    _check("\\frac{1}{2}", "0.5", 30.0)  # warm-up: imports, regex compilation, sympy caches
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard == resource.RLIM_INFINITY or hard > WORKER_MEMORY_BYTES:
        resource.setrlimit(resource.RLIMIT_AS, (WORKER_MEMORY_BYTES, hard))
    results.send("ready")
    while True:
        try:
            gold, pred, soft_timeout_s = requests.recv()
        except EOFError:  # the parent closed the pipe or exited
            os._exit(0)  # skip interpreter teardown of sympy's caches (~0.5 s per worker)
        try:
            outcome = _check(gold, pred, soft_timeout_s)
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
        """Between 1 and `wanted` workers, starting new ones while fewer than `cap` are alive."""
        with self.changed:
            while True:
                self.idle.sort(key=lambda worker: not worker.ready)
                taken, self.idle = self.idle[:wanted], self.idle[wanted:]
                to_start = min(wanted - len(taken), max(0, cap - len(self.alive)))
                if taken or to_start:
                    break
                self.changed.wait()
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


def _run_checks(
    tasks: list[tuple[int, str, str]], timeout_s: float, workers_wanted: int
) -> dict[int, tuple[bool, str]]:
    """Send each (index, gold, pred) to a leased worker; kill any that overruns timeout_s."""
    pool = _get_pool()
    # Concurrent callers (threads) share the pool: it may grow to one worker per core even when
    # each caller leases a single worker.
    cap = max(workers_wanted, os.cpu_count() or 1)
    workers = pool.lease(min(workers_wanted, len(tasks)), cap)
    pending, outcomes = deque(tasks), {}
    in_flight: dict[_Worker, tuple[int, float]] = {}  # worker -> (task index, deadline)
    soft_timeout_s = max(0.01, SOFT_TIMEOUT_SHARE * timeout_s)
    try:
        while pending or in_flight:
            for worker in workers:
                if worker.ready and worker not in in_flight and pending:
                    index, gold, pred = pending[0]
                    try:
                        worker.requests.send((gold, pred, soft_timeout_s))
                    except OSError:  # it died while idle (OOM killer?): start another, retry
                        workers[workers.index(worker)] = pool.replace(worker)
                        continue
                    pending.popleft()
                    in_flight[worker] = (index, time.monotonic() + timeout_s)
            deadlines = [deadline for _, deadline in in_flight.values()]
            deadlines += [w.started + WORKER_START_TIMEOUT_S for w in workers if not w.ready]
            waiting = {w.results: w for w in workers if w in in_flight or not w.ready}
            for connection in wait(list(waiting), max(0.0, min(deadlines) - time.monotonic())):
                worker = waiting[connection]
                if not worker.ready:
                    worker.await_ready()
                    continue
                try:
                    outcomes[in_flight[worker][0]] = connection.recv()
                except (EOFError, OSError):  # the worker died (segfault, out of memory)
                    outcomes[in_flight[worker][0]] = (False, "parse-error")
                    workers[workers.index(worker)] = pool.replace(worker)
                del in_flight[worker]
            now = time.monotonic()
            for worker, (index, deadline) in list(in_flight.items()):
                if now >= deadline:
                    del in_flight[worker]
                    outcomes[index] = (False, "timeout")
                    workers[workers.index(worker)] = pool.replace(worker)
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
    cores). Each answer gets at most timeout_s of checking; a wrong, unparsable or timed-out answer
    is Grade(False, extracted, reason), never an exception. (RuntimeError only if a worker cannot
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
    parser.add_argument("--timeout_s", type=float, default=5.0)
    args = parser.parse_args(argv)
    print(grade(args.gold, args.completion, args.timeout_s))


if __name__ == "__main__":
    main()
