"""Which implementation of the decoder seam (transfer.decode.decoder) decodes, and loading it.

Two: the Hugging Face engine (transfer.decode.engine.RastEngine, `engine: hf`), exact, on any
device torch has, the reference; and vLLM (transfer.decode.vllm_engine.VllmDecoder, `engine:
vllm`), paged KV memory, continuous batching and tensor parallelism for the paper's scale.
Evaluation, `transfer.generate` and analysis reach decoding through `open_decoder` and the seam
only.

    from transfer.decode.backends import open_decoder
    from transfer.deltas import resolve_delta
    decoder = open_decoder("tiny-l", (resolve_delta("outputs/tiny-s-grpo", lam=1.0),))
"""

from collections.abc import Sequence

from transfer.decode.decoder import Decoder, LoadOptions
from transfer.deltas import Delta


def open_decoder(target: str, deltas: Sequence[Delta] = (),
                 options: LoadOptions | None = None) -> Decoder:
    """Load `target` steered by `deltas` (none: the target alone) for decoding, on the engine
    options.engine names."""
    options = options or LoadOptions()
    if options.engine == "vllm":
        from transfer.decode.vllm_engine import VllmDecoder

        return VllmDecoder.load(target, tuple(deltas), options)
    from transfer.decode.engine import RastEngine  # torch and transformers: loaded when used

    return RastEngine.from_deltas(target, tuple(deltas), options)
