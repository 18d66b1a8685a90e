"""When a completion stops, and where its text is cut: one rule for every decode loop.

A completion stops at the first token that is a stop id, or whose arrival makes the decoded
completion contain a stop string (vLLM's `stop`; the RAST runner stops on "user", "assistant",
"<|im_end|>", ...). Its text is the decoded completion cut before the stop: without the stop id,
and exactly at the first character of the stop string, even when the token that completed the
string also carries text before it or after it (" user:" straddles "user"). Its token_ids keep
every sampled token up to and including the one that stopped it: what was decoded (and paid
for), so `decode(token_ids)` starts with the text, and re-feeding token_ids reproduces the
model's trajectory. Pure functions of ids and a decode callable; the engine's loop and the
speculative loop both call `find_stop` on the ids they accept.

    >>> decode = lambda ids: "".join(chr(i) for i in ids)
    >>> ids = [ord(c) for c in "2+2=4 user"]
    >>> find_stop(ids, 0, stop_ids=[], stop_strings=["user"], decode=decode)
    (10, 'user')
    >>> completion_text(ids, "user", ["user"], decode)
    '2+2=4 '
"""

from collections.abc import Callable, Sequence

Decode = Callable[[list[int]], str]
StopBy = int | str | None  # a stop id, a stop string, or None: cut at max_new_tokens


def first_stop_string(text: str, stop_strings: Sequence[str]) -> tuple[int, str] | None:
    """(index, string) of the stop string occurring earliest in text (the first listed of those
    starting at that index), or None.

    >>> first_stop_string("a_end user", ["user", "_end"])
    (1, '_end')
    """
    hits = [(text.find(stop), order, stop) for order, stop in enumerate(stop_strings)
            if stop and stop in text]
    if not hits:
        return None
    index, _, stop = min(hits)
    return index, stop


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
    and the stop counts if the whole completion contains one (a window can mis-decode its first
    byte-level token, never its end).
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
            hit = first_stop_string(decode(list(ids[:end])), stop_strings)
            if hit is not None:
                return end, hit[1]
    return None


def completion_text(ids: Sequence[int], stop: StopBy, stop_strings: Sequence[str],
                    decode: Decode) -> str:
    """The text of a completion whose ids ended on `stop`: the decoded ids without a stop id,
    cut before the earliest stop string when a string stopped it."""
    if isinstance(stop, int) and not isinstance(stop, bool):
        return decode(list(ids[:-1]))
    text = decode(list(ids))
    if isinstance(stop, str):
        hit = first_stop_string(text, stop_strings)
        text = text[:hit[0]] if hit else text
    return text
