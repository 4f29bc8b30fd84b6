"""What of a client's request decides how an engine draws a segment's tokens: one small value that crosses from
the HTTP ingress through the engine actor into the engine, without importing vLLM on the way (the ingress never
loads it)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Sampling:
    """How a segment's tokens are drawn: what of a client's request reaches the engine (checked at the door; the
    engine checks again, since its callers are not all HTTP)."""

    temperature: float = 0.0
    ignore_eos: bool = True  # replays generate exactly their trace's lengths
    allowed_token_ids: tuple[int, ...] | None = None  # vLLM's extension: only these tokens may be drawn

    def params(self, max_tokens: int, final_only: bool = False):
        """vLLM's parameters; `final_only`: the engine reports the answer once, when it is done, not every step.
        Token ids only: the ingress makes the text (`IncrementalText`), and the engine's detokenizer would do it
        twice, on the engine's cores."""
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.allowed_token_ids is not None and not self.allowed_token_ids:
            raise ValueError("allowed_token_ids must not be empty")
        allowed = list(self.allowed_token_ids) if self.allowed_token_ids is not None else None
        return SamplingParams(temperature=self.temperature, max_tokens=max_tokens, ignore_eos=self.ignore_eos,
                              allowed_token_ids=allowed, detokenize=False,
                              output_kind=RequestOutputKind.FINAL_ONLY if final_only else RequestOutputKind.CUMULATIVE)
