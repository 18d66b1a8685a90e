"""When a completion stops, and where its text is cut: one rule for every decode loop, vLLM's.

A completion stops at the first token that is a stop id, or whose arrival makes the completion's
text contain a stop string. The text is the one the paper's vLLM decodes: special tokens add no
text (`skip_special_tokens=True`), so "<|im_start|>" never completes the runner's "_start".
When one token completes several stop strings, the first in the list wins (vLLM checks them in
order, each from where the new text could complete it). The text is cut exactly at the first
character of that string, even when the token that completed it also carries text before it or
after it (" user:" straddles "user"); without a stop string it is the decoded completion less
the stop id. token_ids keep every sampled token up to and including the one that stopped it:
what was decoded (and paid for), so `decode(token_ids)` starts with the text, and re-feeding
token_ids reproduces the model's trajectory. Pure functions of ids and a decode callable; the
engine's loop and the speculative loop both call `find_stop` on the ids they accept.

    >>> decode = lambda ids: "".join(chr(i) for i in ids)
    >>> ids = [ord(c) for c in "2+2=4 user"]
    >>> find_stop(ids, 0, stop_ids=[], stop_strings=["user"], decode=decode)
    (10, 'user')
    >>> completion_text(ids, "user", ["user"], decode)
    '2+2=4 '
"""

import os
from collections.abc import Callable, Sequence

Decode = Callable[[list[int]], str]
StopBy = int | str | None  # a stop id, a stop string, or None: cut at max_new_tokens


def new_stop_string(text: str, old_length: int, stop_strings: Sequence[str]
                    ) -> tuple[int, str] | None:
    """(index, string) of the first stop string, in list order, that occurs in text ending past
    its first old_length characters (those were checked before), or None: vLLM's check.

    >>> new_stop_string("a_end user", 5, ["user", "_end"])  # one token brought " user"
    (6, 'user')
    >>> new_stop_string("a_end user", 0, ["user", "_end"])  # one token brought all of it
    (6, 'user')
    """
    for stop in stop_strings:
        index = text.find(stop, max(0, old_length - len(stop) + 1)) if stop else -1
        if index >= 0:
            return index, stop
    return None


def window_tokens(stop_strings: Sequence[str]) -> int:
    """Tokens of a completion's tail that must be decoded to see any stop string that its last
    token completed: a character is at most 4 UTF-8 bytes and a byte-level token at least one
    byte, so a string of m characters spans at most 4m tokens, plus one straddling its start and
    slack for decoders that treat a sequence's first token differently (a leading space)."""
    return 4 * max(map(len, stop_strings), default=0) + 4


def find_stop(ids: Sequence[int], checked: int, stop_ids, stop_strings: Sequence[str],
              decode: Decode | None) -> tuple[int, int | str] | None:
    """The first stop among ids[checked:]: (tokens to keep, the stop id or string), or None.

    ids[:checked] were checked before and did not stop. For each new token the tail window is
    decoded (cheap, bounded); only when it shows a stop string is the whole completion decoded,
    with and without that token, and the strings checked as vLLM does (new_stop_string; a
    window can mis-decode its first byte-level token, never its end).
    """
    stop_ids = stop_ids if isinstance(stop_ids, (set, frozenset)) else set(stop_ids)
    width = window_tokens(stop_strings)
    for end in range(checked + 1, len(ids) + 1):
        if ids[end - 1] in stop_ids:
            return end, ids[end - 1]
        if not stop_strings:
            continue
        window = decode(list(ids[max(0, end - width):end]))
        if any(stop and stop in window for stop in stop_strings):
            text, before = decode(list(ids[:end])), decode(list(ids[:end - 1]))
            # the text the last token did not change (a byte-level token can complete a
            # character that the shorter decode showed as U+FFFD)
            hit = new_stop_string(text, len(os.path.commonprefix([text, before])), stop_strings)
            if hit is not None:
                return end, hit[1]
    return None


def completion_text(ids: Sequence[int], stop: StopBy, stop_strings: Sequence[str],
                    decode: Decode) -> str:
    """The text of a completion whose ids ended on `stop`: the decoded ids without a stop id,
    cut before the stop string when a string stopped it (its only occurrence: an earlier one
    would have stopped the completion earlier)."""
    if isinstance(stop, int) and not isinstance(stop, bool):
        return decode(list(ids[:-1]))
    text = decode(list(ids))
    if isinstance(stop, str) and stop in text:
        text = text[:text.index(stop)]
    return text
