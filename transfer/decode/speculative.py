"""Speculative RAST: S_RL drafts, L verifies in one forward, and every token still follows RAST.

The target at each position is RAST's p = warp(softmax(z_L + lam (z_SRL - z_Sbase))), formed by
transfer.decode.rast exactly as in the plain loop. S_RL, already loaded and close to p (RAST
mostly follows the RL model), drafts. A round, for the rows still decoding, each with a pending
token y (emitted, not yet fed to any model):

1. Draft: the draft unit is fed y, then its own drafts d_1..d_k, one step each (k + 1 steps; the
   last gives the small logits of the bonus position k + 1). The draft unit is the small pair
   itself when it is one model (stacked, or a LoRA pair): its step computes S_base's logits
   beside S_RL's at no extra launch, so drafting yields every small logit the target needs and
   S_base needs no verify pass. When the pair runs as two models, S_RL drafts alone and S_base
   verifies with L.
2. Verify: L (and S_base when it is alone) is fed [y, d_1..d_k] in ONE forward: logits at
   positions 1..k+1. With several small pairs the first pair's S_RL drafts and every unit that
   is not the draft unit (other sizes, LoRA pairs) verifies beside L.
3. Accept, position by position, with the standard speculative rule against the warped target:
   d ~ q (the draft's own warped distribution), kept with probability min(1, p(d) / q(d)); at
   the first rejection the token is drawn from normalize(max(0, p - q)), and the round ends.
   All k kept: position k + 1 runs the same rule on a draft drawn there from S_RL's logits.
   Greedy: a draft is kept while it is the target's argmax, and the emitted token is always the
   target's argmax, so greedy output is the plain loop's.
4. Every model's cache keeps, per row, the columns of the tokens emitted and masks the rest
   (rows accept different numbers: ragged). A row finishes at its first stop id or stop string
   among the tokens it emits (transfer.decode.stops.find_stop, the plain loop's rule) or at
   max_new_tokens, and leaves the batch. Once every row has drafted a stop id or reached its
   budget, drafting ends for the round: each row's round ends there, accepted or not.

The random numbers are indexed by (row seed, position): three uniforms per generated position,
drawn up front from the row's seed. A position's token is a function of its target p, its q and
its own three uniforms only, whether its draft came from a draft step or was drawn at the bonus
position, so a row's tokens do not depend on k, on round boundaries or on the other rows of the
batch: the same seed gives the same tokens at any k (up to float rounding of logits computed in
differently shaped forwards), and k = 0, one token per round, is the plain RAST step with this
sampler. That is how speculation switches itself off: the adaptive k (`draft_tokens=None`)
maximises the expected tokens per second, (1 - a^(k+1)) / (1 - a) tokens per (k + 1) draft steps
+ one verify, from the running acceptance rate a (measured at every position, the bonus one
included, so it is known even at k = 0) and the measured times of the draft steps and the
verify; where no k > 0 beats k = 0 it stays at 0 until the acceptance rate or the times change.
"""

import time

import torch

from transfer.decode.decoder import acceptance_rate, since, tokens_per_round
from transfer.decode.rast import align_logits, warp_logits
from transfer.decode.stops import find_stop

MAX_DRAFT = 8  # most drafts per round (adaptive k), and extra cache columns a round may need
FIRST_DRAFT = 4  # adaptive k before anything is measured
SMOOTHING = 0.1  # weight of the newest round in the running step times
MEMORY = 0.9  # the running acceptance rate's counts are multiplied by this each round


class DraftSchedule:
    """k per round: fixed, or the k in [0, MAX_DRAFT] with the most expected tokens per second."""

    def __init__(self, fixed: int | None):
        self.fixed = fixed
        self.tested, self.passed = 10.0, 8.0  # running counts (a prior of rate 0.8 until measured)
        self.draft_step_s, self.rest_s = None, {}  # seconds per draft step; per verify width

    def choose(self, budget: int) -> int:
        """Drafts for the next round; budget: most tokens a row may still emit, minus one."""
        if self.fixed is not None:
            return max(0, min(self.fixed, budget))
        if self.draft_step_s is None:
            return max(0, min(FIRST_DRAFT, budget))
        if 1 not in self.rest_s:  # measure k = 0 once: the cost drafting has to beat
            return 0
        return max(range(max(0, min(MAX_DRAFT, budget)) + 1),
                   key=lambda k: self.expected_tokens(k) / self.expected_seconds(k))

    @property
    def acceptance(self) -> float:
        """Running share of tested positions whose draft was accepted (recent rounds weigh
        more; a round weighs by its positions, so a batch of 8 learns as fast as 8 rounds)."""
        return self.passed / self.tested

    def expected_tokens(self, k: int) -> float:
        """Tokens a round emits if each position is accepted with the running rate a."""
        a = min(self.acceptance, 1 - 1e-6)
        return (1 - a ** (k + 1)) / (1 - a)

    def expected_seconds(self, k: int) -> float:
        """(k + 1) draft steps + a verify of width k + 1: its measured time, else the line
        through the two measured widths nearest to it (a verify costs more the wider it is once
        the batch is large enough to be compute-bound), never below the narrower one's."""
        width = k + 1
        if width in self.rest_s or len(self.rest_s) == 1:
            verify_s = self.rest_s.get(width, next(iter(self.rest_s.values())))
        else:
            (w1, t1), (w2, t2) = sorted(sorted(self.rest_s.items(),
                                               key=lambda item: abs(item[0] - width))[:2])
            slope = max(0.0, (t2 - t1) / (w2 - w1))
            verify_s = max(t1, t1 + slope * (width - w1))
        return width * self.draft_step_s + verify_s

    def update(self, k: int, tested: int, accepted: int, draft_s: float, rest_s: float) -> None:
        self.tested = MEMORY * self.tested + tested
        self.passed = MEMORY * self.passed + accepted
        if self.fixed is not None:
            return
        step_s = draft_s / (k + 1)
        self.draft_step_s = step_s if self.draft_step_s is None else (
            self.draft_step_s + SMOOTHING * (step_s - self.draft_step_s))
        old = self.rest_s.get(k + 1)
        self.rest_s[k + 1] = rest_s if old is None else old + SMOOTHING * (rest_s - old)


class Speculation:
    """The speculative decode loop of a RastEngine, and its counters (see the module doc)."""

    def __init__(self, draft_tokens: int | None = None):
        if draft_tokens is not None and not 0 <= draft_tokens <= 64:
            raise ValueError(f"draft_tokens must be in [0, 64] or None (adaptive), "
                             f"got {draft_tokens}")
        self.draft_tokens = draft_tokens
        self.schedule = DraftSchedule(draft_tokens)
        self.stats = {"rounds": 0, "row_rounds": 0, "drafted": 0, "accepted": 0, "emitted": 0,
                      "ragged_rounds": 0}

    def acceptance_rate(self, before: dict | None = None) -> float:
        """Share of the drafted tokens accepted (bonus positions not counted); before: an earlier
        copy of `stats`, to count only what came after it."""
        return acceptance_rate(since(self.stats, before or {}))

    def mean_emitted(self, before: dict | None = None) -> float:
        """Tokens a row emits per round: its accepted drafts + one corrected or bonus token."""
        return tokens_per_round(since(self.stats, before or {}))

    @torch.inference_mode()
    def decode(self, engine, prompt_ids, seeds, params, stop: set[int], on_step=None):
        """RastEngine.decode's contract, speculatively: (ids, what stopped it) per row, each row
        stopping at a stop id or stop string by the plain loop's rule (find_stop) and leaving
        the batch there; on_step(rows, combined) is called per position of a round with the
        rows that emitted a token there."""
        budget = params.max_new_tokens
        extra = max(MAX_DRAFT, self.draft_tokens or 0) + 1  # a round's columns beyond the budget
        logits, expand = engine.prefill(prompt_ids, seeds, budget + extra)
        device = logits[0].device
        uniforms = None if params.temperature == 0 else torch.stack([
            torch.rand(budget, 3, generator=torch.Generator().manual_seed(s))
            for row_seeds in seeds for s in row_seeds]).to(device)
        sampler = Sampler(params, engine.shared_vocab, uniforms)
        draft, draft_rl = draft_unit(engine)
        ends = Ends(stop, params.stop_strings,
                    engine.text if params.stop_strings else None)
        active = torch.arange(len(expand))  # original row index of each row still decoding
        outputs = [[] for _ in range(len(expand))]

        # Position 1 comes from the prefill: a round with no drafts and nothing fed.
        u = sampler.at(active, torch.zeros(len(expand), dtype=torch.long), 1)
        drafts, q = sampler.draft(logits[1 + engine.slots[0][1]], None if u is None else u[:, 0])
        drafts, q = drafts[:, None], None if q is None else q[:, None]
        target = engine.combine([part[:, None] for part in logits])
        fed, times = 0, (0.0, 0.0)
        while True:
            begin = time.perf_counter()
            tokens, accepted = sampler.accept(target, drafts, q, u)
            kept = accepted[:, :-1].long().cumprod(dim=1).sum(dim=1)  # leading accepted drafts
            continuing, pending, emitted = self.emit(tokens, kept, active, outputs, budget, ends)
            emitted = torch.tensor(emitted, device=kept.device)
            if on_step is not None:
                for i in range(target.shape[1]):
                    here = (kept >= i).cpu()
                    on_step(active[here], target[here.to(target.device), i])
            if fed:
                for unit in engine.models():  # ragged: row i keeps its kept[i] drafts
                    unit.rollback(fed, kept + 1)
                self.measure(fed - 1, kept, accepted, emitted, times, time.perf_counter() - begin)
            if not continuing:
                return [(ids, ends.stopped_by.get(row)) for row, ids in enumerate(outputs)]
            if len(continuing) < len(active):  # finished rows leave every cache
                keep = torch.tensor(continuing)
                for unit in engine.models():
                    unit.keep_rows(keep)
                active = active[keep]
            start = torch.tensor([len(outputs[row]) for row in active.tolist()])
            k = self.schedule.choose(budget - int(start.min()) - 1)
            u = sampler.at(active, start, k + 1)
            ends.start_round(budget - start)
            pending = torch.tensor(pending, device=device)
            target, drafts, q, times = self.round(engine, draft, draft_rl, pending, k, sampler, u,
                                                  ends)
            fed = target.shape[1]  # k + 1, or fewer where every row's round ended sooner
            u = None if u is None else u[:, :fed]

    def round(self, engine, draft, draft_rl, pending, k, sampler, u, ends):
        """Feed each row's pending token and k drafts to the draft unit, one step each (its
        copy draft_rl is S_RL), then the drafts to every other unit in one verify forward:
        -> (target logits [rows, k+1, vocab],
        drafts [rows, k+1] (the last drawn at the bonus position), their draft probabilities
        [rows, k+1, vocab] or None when greedy, (seconds drafting, seconds verifying)).

        Drafting stops early, as if k had been smaller, once every row has drafted a stop id or
        reached its budget (`ends`): its round ends at or before that position whether its
        drafts are accepted or not, so later drafts would only be rolled back."""
        begin = time.perf_counter()
        token, steps, drafts, q = pending, [], [], []
        for i in range(k + 1):
            steps.append(draft.decode(token))  # every copy of the unit: [z_base, z_rl] of a pair
            token, probs = sampler.draft(steps[-1][draft_rl], None if u is None else u[:, i])
            drafts.append(token)
            q.append(probs)
            if i < k and ends.all_ended(token, i):
                break
        draft_s = _clock(pending.device, begin)
        begin = time.perf_counter()
        fed = torch.stack([pending, *drafts[:-1]], dim=1)
        drafted = [torch.stack(copy, dim=1) for copy in zip(*steps)]  # [rows, k+1, vocab] each
        logits = [part for unit in engine.models()
                  for part in (drafted if unit is draft else unit.verify(fed))]
        target = engine.combine(logits)
        q = None if q[0] is None else torch.stack(q, dim=1)
        self.stats["rounds"] += 1
        self.stats["row_rounds"] += len(pending)
        return target, torch.stack(drafts, dim=1), q, (draft_s, time.perf_counter() - begin)

    def emit(self, tokens, kept, active, outputs, budget, ends):
        """Append each row's accepted drafts and its next token to its output, up to its first
        stop (`ends`) or the budget. -> (indices of the rows still decoding, their last tokens,
        tokens each row emitted)."""
        continuing, pending, counts = [], [], []
        for index, (row, row_tokens, n) in enumerate(zip(active.tolist(), tokens.tolist(),
                                                         kept.tolist())):
            checked = len(outputs[row])
            outputs[row] += row_tokens[:n + 1][:budget - checked]
            finished = ends.cut(row, outputs[row], checked)
            counts.append(len(outputs[row]) - checked)
            if not finished and len(outputs[row]) < budget:
                continuing.append(index)
                pending.append(outputs[row][-1])
        return continuing, pending, counts

    def measure(self, k, kept, accepted, emitted, times, accept_s):
        """Count a round's drafts, and feed its acceptance and times to the schedule. A row's
        drafts count up to its first rejection, and not past its stop or its budget."""
        self.stats["emitted"] += int(emitted.sum())
        self.stats["ragged_rounds"] += int(kept.min() != kept.max())
        tested = torch.minimum(torch.minimum(kept + 1, emitted), torch.full_like(kept, k))
        passed = torch.minimum(kept, emitted)
        self.stats["drafted"] += int(tested.sum())
        self.stats["accepted"] += int(passed.sum())
        # the schedule's rate counts the bonus position too (it is tested like a draft)
        bonus = (kept == k) & (emitted == k + 1)
        draft_s, verify_s = times
        self.schedule.update(k, int(tested.sum() + bonus.sum()),
                             int(passed.sum() + (bonus & accepted[:, -1]).sum()),
                             draft_s, verify_s + accept_s)


class Ends:
    """Where rows stop: the plain loop's rule (transfer.decode.stops.find_stop) on the tokens a
    round emits, and what stopped each row."""

    def __init__(self, stop_ids: set[int], stop_strings, decode):
        self.stop_ids, self.stop_strings, self.decode = stop_ids, stop_strings, decode
        self.stopped_by: dict[int, int | str] = {}
        self.id_tensor = torch.tensor(sorted(stop_ids), dtype=torch.long) if stop_ids else None

    def start_round(self, room: torch.Tensor) -> None:
        """A round begins; room [rows]: tokens each row may still emit (its budget left)."""
        self.room, self.ended = room, torch.zeros(len(room), dtype=torch.bool)

    def all_ended(self, drafts: torch.Tensor, step: int) -> bool:
        """After draft step `step` (0-based; its drafts [rows] sit at round position step + 1):
        whether every row's round now ends at or before this position, accepted or not,
        because the row drafted a stop id here or earlier, or has no budget past it. Checked on
        the host after each step, so only for drafts on a CPU, where it is free: on a GPU the
        sync per step would cost more than the few steps it saves at the end of a row."""
        if drafts.device.type != "cpu":
            return False
        self.ended |= self.room <= step + 1
        if self.id_tensor is not None:
            self.ended |= torch.isin(drafts, self.id_tensor)
        return bool(self.ended.all())

    def cut(self, row: int, ids: list[int], checked: int) -> bool:
        """Cut row's ids (ids[:checked] were checked before) after their first stop, if any;
        -> whether the row stopped."""
        hit = find_stop(ids, checked, self.stop_ids, self.stop_strings, self.decode)
        if hit is None:
            return False
        del ids[hit[0]:]
        self.stopped_by[row] = hit[1]
        return True


def draft_unit(engine):
    """(the unit that drafts, which of its copies is S_RL): the unit holding the first pair's
    S_RL. It is the small pair when the pair is one model (its steps give S_base's logits with
    S_RL's, and those of every other model stacked with them), else S_RL alone; every other
    unit (L, an unstacked S_base, other pairs' units) verifies."""
    rl, first = engine.slots[0][1], 0
    for unit in engine.small:
        if rl < first + unit.copies:
            return unit, rl - first
        first += unit.copies
    raise ValueError("the engine has no small unit holding its first pair's RL model")


def _clock(device: torch.device, begin: float) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # the draft steps were only launched
    return time.perf_counter() - begin


class Sampler:
    """Draft draws and the accept/correct rule, from each row's uniforms at each position."""

    def __init__(self, params, shared_vocab: int, uniforms: torch.Tensor | None):
        self.params, self.shared_vocab = params, shared_vocab
        self.uniforms = uniforms  # [all rows, budget, 3]: draft, accept, correct; None = greedy

    def at(self, active: torch.Tensor, start: torch.Tensor, width: int) -> torch.Tensor | None:
        """Uniforms of positions start..start+width-1 of these rows [rows, width, 3] (None when
        greedy)."""
        if self.uniforms is None:
            return None
        positions = (start[:, None] + torch.arange(width)).clamp(max=self.uniforms.shape[1] - 1)
        return self.uniforms[active[:, None].to(self.uniforms.device),
                             positions.to(self.uniforms.device)]

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        """softmax(warp(logits)) over the last dim, any leading shape."""
        p = self.params
        flat = warp_logits(logits.reshape(-1, logits.shape[-1]), p.temperature, p.top_k, p.top_p)
        return flat.softmax(dim=-1).view(logits.shape)

    def draft(self, z_rl: torch.Tensor, u: torch.Tensor | None
              ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One draft per row from S_RL's logits [rows, vocab]: its argmax when greedy (u None),
        else a draw from q = warp(softmax(z_rl)) with the position's uniforms u [rows, 3].
        -> (tokens [rows], q [rows, shared vocab] or None)."""
        aligned = align_logits(z_rl, self.shared_vocab).float()
        if u is None:
            return aligned.argmax(dim=-1), None
        q = self.probs(aligned)
        return inverse_cdf(q, u[:, 0]), q

    def accept(self, target, drafts, q, u) -> tuple[torch.Tensor, torch.Tensor]:
        """Per position of a round (target logits [rows, m, vocab], drafts [rows, m], draft
        probabilities q [rows, m, shared vocab]): -> (the token emitted there if the round gets
        that far [rows, m], whether its draft is accepted [rows, m]); u: the positions'
        uniforms [rows, m, 3], None when greedy."""
        if u is None:
            best = target.argmax(dim=-1)
            return best, best == drafts.to(best.device)
        p = self.probs(target)[..., :self.shared_vocab]
        drafts = drafts.to(p.device)
        p_draft = p.gather(-1, drafts[..., None])[..., 0]
        q_draft = q.gather(-1, drafts[..., None])[..., 0]
        accepted = u[..., 1] * q_draft < p_draft  # probability min(1, p/q)
        residual = (p - q).clamp(min=0)
        empty = residual.sum(dim=-1, keepdim=True) <= 0  # p == q to the last bit: never rejected
        residual = torch.where(empty, p, residual)
        corrected = inverse_cdf(residual.flatten(0, 1), u[..., 2].flatten()).view(drafts.shape)
        return torch.where(accepted, drafts, corrected), accepted


def inverse_cdf(weights: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """A draw per row from unnormalised weights [rows, vocab] with a uniform in [0, 1) per row:
    the first id whose cumulative weight exceeds u * total. That id always has weight > 0 (the
    cumulative sum only rises at such ids; u * total is kept below the total, which float
    rounding could otherwise reach)."""
    cdf = weights.cumsum(dim=-1)
    total = cdf[:, -1:]
    target = torch.minimum(u[:, None] * total, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cdf, target, right=True)[:, 0]
