"""Which implementation of the decoder seam (transfer.decode.decoder) decodes, and loading it.

Today one: the Hugging Face engine (transfer.decode.engine.RastEngine), exact, on any device
torch has. A second backend is one more branch here; evaluation, `transfer.generate` and
analysis reach decoding through `open_decoder` and the seam only.

    from transfer.decode.backends import open_decoder
    from transfer.deltas import resolve_delta
    decoder = open_decoder("tiny-l", (resolve_delta("outputs/tiny-s-grpo", lam=1.0),))
"""

from collections.abc import Sequence

from transfer.decode.decoder import Decoder, LoadOptions
from transfer.deltas import Delta


def open_decoder(target: str, deltas: Sequence[Delta] = (),
                 options: LoadOptions | None = None) -> Decoder:
    """Load `target` steered by `deltas` (none: the target alone) for decoding."""
    from transfer.decode.engine import RastEngine  # torch and transformers: loaded when used

    return RastEngine.from_deltas(target, tuple(deltas), options or LoadOptions())
