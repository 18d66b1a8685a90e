"""The one grader: the GRPO reward and the benchmark evaluation both call it.

extract_answer() takes the last balanced \\boxed{...} (or \\fbox{...}) of a completion, falling
back to the last plain number (GSM8K style). grade() checks it against the gold answer under a
rule of train/equivalence.py, which states both rules exactly: "default" (this project's: the
GRPO reward and every accuracy) and "paper" (the paper's runner's tolerance: relative 1e-4, and
100 x or 1/100 of a number). grade_batch_by_rule() gives both from one parse of each answer;
unscorable_golds() says which gold answers no equivalent answer can match (train.data warns about
them when a data set loads).

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

Run it on one answer (both rules; `--` before a gold that starts with a minus sign):
    python -m train.grader '\\frac{1}{2}' 'so the answer is \\boxed{0.5}'
    python -m train.grader -- '-1./3' '\\boxed{-0.333333}'
"""

from __future__ import annotations

import argparse
import atexit
import hashlib
import importlib.metadata
import json
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
from multiprocessing.connection import Connection, wait
from pathlib import Path

from train.equivalence import RULES, gold_problem, verdicts

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


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _check_gold(gold: str, _) -> dict[str, tuple[bool, str]]:
    problem = gold_problem(gold)
    return {"gold": (problem is None, problem or "ok")}


# What a worker can be asked: grade (gold, answer) under every rule, or say why a gold is
# unscorable. Each returns {name: (correct, reason)}.
_TASKS = {"grade": verdicts, "gold": _check_gold}


def _check(task: str, gold: str, pred: str, timeout_s: float,
           soft_timeout_s: float) -> dict[str, tuple[bool, str]] | str:
    """One task in the worker's main thread within timeout_s CPU seconds: a timer interrupts it at
    soft_timeout_s, the kernel kills the process at timeout_s. Its outcome, or "timeout"."""
    # The kernel's kill: SIGXCPU once this process's CPU time reaches the (whole-second) limit.
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    limit = math.ceil(_cpu_seconds() + timeout_s)
    resource.setrlimit(resource.RLIMIT_CPU,
                       (limit if hard == resource.RLIM_INFINITY else min(limit, hard), hard))
    signal.setitimer(signal.ITIMER_PROF, soft_timeout_s)
    try:
        return _TASKS[task](gold, pred)
    except _SoftTimeout:
        return "timeout"
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)


def _serve(request_fd: int, result_fd: int) -> None:
    """Worker loop: answer (task, gold, pred, timeout_s, soft_timeout_s) requests until the pipe
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
    _check("grade", "\\frac{1}{2}", "5\\%", 30.0, 30.0)  # warm-up: imports, regex compilation, sympy caches
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
            outcome = "timeout"
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
    tasks: list[tuple[int, str, str, str | None]], timeout_s: float, workers_wanted: int
) -> dict[int, dict[str, tuple[bool, str]] | str]:
    """Send each (index, task, gold, pred) to a leased worker (see _TASKS); for each index the
    task's outcome, or the reason it has none ("timeout", "parse-error" for a crashed worker)."""
    pool = _get_pool()
    workers = pool.lease(min(workers_wanted, len(tasks)), max(workers_wanted, os.cpu_count() or 1))
    pending = deque((*task, False) for task in tasks)  # False: its first try
    outcomes = {}
    in_flight: dict[_Worker, tuple[tuple, float]] = {}  # worker -> (task, wall-clock deadline)
    wall_limit_s = WALL_GRACE_S + WALL_SLOWDOWN * timeout_s
    soft_timeout_s = max(0.01, SOFT_TIMEOUT_SHARE * timeout_s)
    try:
        while pending or in_flight:
            for slot, worker in enumerate(workers):
                if worker.ready and worker not in in_flight and pending:
                    _, task, gold, pred, _ = pending[0]
                    try:
                        worker.requests.send((task, gold, pred, timeout_s, soft_timeout_s))
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
                    outcomes[index] = "timeout" if cpu_limit else "parse-error"
                    workers[workers.index(worker)] = pool.replace(worker)
            now = time.monotonic()
            for worker, (task, deadline) in list(in_flight.items()):
                if now >= deadline:  # no reply in wall time: stopped or starved, not slow work
                    del in_flight[worker]
                    workers[workers.index(worker)] = pool.replace(worker)
                    *task, retried = task
                    logger.warning("grader worker gave no reply in %.0f s of wall time%s",
                                   wall_limit_s, "" if retried else "; retrying on a fresh one")
                    if retried:
                        outcomes[task[0]] = "timeout"
                    else:
                        pending.append((*task, True))
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


def grade_batch_by_rule(golds: list[str], completions: list[str], timeout_s: float = 5.0,
                        workers: int | None = None) -> dict[str, list[Grade]]:
    """{rule: grades} for every rule in RULES ("default", "paper"; see train.equivalence), from one
    extraction and one parse of each answer: as cheap as grade_batch."""
    if len(golds) != len(completions):
        raise ValueError(f"got {len(golds)} gold answers for {len(completions)} completions")
    extracted = [extract_answer(completion) for completion in completions]
    # A gold that already carries a box ("\\boxed{5}") is graded on its content.
    golds = [_unboxed(gold) for gold in golds]
    tasks = [(i, "grade", gold, answer)
             for i, (gold, answer) in enumerate(zip(golds, extracted)) if answer]
    outcomes = _run_checks(tasks, timeout_s, workers or os.cpu_count() or 1) if tasks else {}
    grades = {rule: [] for rule in RULES}
    for i, answer in enumerate(extracted):
        outcome = outcomes.get(i, "no-answer")
        for rule, grades_of_rule in grades.items():
            correct, reason = (False, outcome) if isinstance(outcome, str) else outcome[rule]
            grades_of_rule.append(Grade(correct, answer, reason))
    return grades


def grade_batch(golds: list[str], completions: list[str], timeout_s: float = 5.0,
                workers: int | None = None, rule: str = "default") -> list[Grade]:
    """Grade completions[i] against golds[i] under `rule` ("default", or "paper": the paper's
    runner's tolerance), in parallel over `workers` processes (default: all cores). Each answer
    gets at most timeout_s seconds of CPU time (not wall time: the grade does not depend on the
    machine's load); a wrong, unparsable or timed-out answer is Grade(False, extracted, reason),
    never an exception. (RuntimeError only if a worker cannot start at all: a broken environment,
    where silently scoring 0 would corrupt training.)"""
    if rule not in RULES:
        raise ValueError(f"unknown grading rule {rule!r}: use one of {', '.join(RULES)}")
    return grade_batch_by_rule(golds, completions, timeout_s, workers)[rule]


def grade(gold: str, completion: str, timeout_s: float = 5.0, rule: str = "default") -> Grade:
    """Grade one completion against its gold answer; safe from any thread or process."""
    return grade_batch([gold], [completion], timeout_s=timeout_s, workers=1, rule=rule)[0]


def _unboxed(gold: str) -> str:
    return (_boxed_contents(gold) or [gold])[-1].strip()


# Golds that are plain numbers (-3, 2,125, 0.5, 4.4e7, 62.5\%) are scorable by construction; the
# gold check (tests/train/test_grader_gold.py) grades every one of them against its forms.
_PLAIN_NUMBER_RE = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?(?:\s*\\?%)?")


def _gold_check_cache() -> Path:
    """Where gold checks are kept between runs: one file per version of the rules and of
    math-verify (parsing the training set's 3,243 non-numeric golds costs ~10-25 s of CPU)."""
    rules = Path(__file__).with_name("equivalence.py").read_bytes()
    key = hashlib.sha256(rules + importlib.metadata.version("math-verify").encode()).hexdigest()
    home = Path(os.environ.get("RAST_HOME") or Path.home() / ".cache" / "rast")  # train.models'
    return home / f"gold-check-{key[:16]}.json"


def unscorable_golds(golds: list[str], timeout_s: float = 5.0,
                     workers: int | None = None) -> dict[int, str]:
    """{index: why} of every gold that no answer can grade right against under the default rule:
    math-verify cannot parse it or keeps it as text (then only the same string matches it), it is
    an equation between two numbers, or it does not grade right against itself. Plain numbers are
    skipped; each other distinct gold costs a parse (~3-10 ms) once, kept in _gold_check_cache()."""
    golds = [_unboxed(gold) for gold in golds]
    cache = _gold_check_cache()
    known = json.loads(cache.read_text()) if cache.is_file() else {}
    unknown = sorted({gold for gold in golds
                      if gold not in known and not _PLAIN_NUMBER_RE.fullmatch(gold)})
    if unknown:
        tasks = [(i, "gold", gold, None) for i, gold in enumerate(unknown)]
        outcomes = _run_checks(tasks, timeout_s, workers or os.cpu_count() or 1)
        checked = {gold: None if outcome["gold"][0] else outcome["gold"][1]
                   for gold, outcome in zip(unknown, map(outcomes.get, range(len(unknown))))
                   if not isinstance(outcome, str)}
        known |= checked
        try:  # a cache it cannot write only costs the next load the same parses
            cache.parent.mkdir(parents=True, exist_ok=True)
            partial = cache.with_suffix(f".{os.getpid()}.tmp")  # concurrent writers: last wins
            partial.write_text(json.dumps(known))
            partial.replace(cache)
        except OSError:
            pass
        # Not kept: a check that timed out (or crashed its worker) may pass another time.
        known |= {gold: f"its check gave no verdict ({outcomes[i]})"
                  for i, gold in enumerate(unknown) if gold not in checked}
    return {i: known[gold] for i, gold in enumerate(golds) if known.get(gold) is not None}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Grade one completion against a gold answer under every rule.")
    parser.add_argument("gold")
    parser.add_argument("completion")
    parser.add_argument("--timeout_s", type=float, default=5.0, help="CPU seconds per answer")
    args = parser.parse_args(argv)
    if not 0 < args.timeout_s < 3600:  # inf or nan never ended a grading that hangs
        parser.error(f"--timeout_s must be a number of seconds in (0, 3600), got {args.timeout_s}")
    by_rule = grade_batch_by_rule([args.gold], [args.completion], args.timeout_s, workers=1)
    for rule, (grade_of_rule,) in by_rule.items():
        print(f"{rule:<8} {grade_of_rule}")
    problem = unscorable_golds([args.gold], args.timeout_s, workers=1).get(0)
    if problem:
        print(f"gold     unscorable: {problem}")


if __name__ == "__main__":
    main()
