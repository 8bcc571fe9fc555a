"""Prompt-token counts without a tokenizer: an estimate that learns, and a hard upper bound.

A tokenizer library would download its encodings at run time (tiktoken does), which fails
offline, so prompts are measured in characters:

* ``TokenEstimator.estimate`` is ``ceil(chars / chars_per_token * 1.02)`` plus
  ``per_message`` tokens per message. The ratio starts at ``chars_per_token`` and is then
  fitted to the prompt tokens the provider reports (``observe``): the ratio of the
  decayed totals of characters and of content tokens (reported minus the per-message
  overhead), so recent observations weigh more and a change of prompt style is followed.
  The 2 % margin makes the estimate err slightly high: it paces a tokens-per-minute limiter,
  where an estimate too low costs 429s and one too high only a little throughput.
* ``upper_bound_tokens`` never under-counts for byte-level BPE tokenizers (OpenAI's, and
  close enough for the others): every token covers at least one UTF-8 byte, and a message
  adds a few tokens of framing. Reserve it when a budget must never be exceeded.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["TokenEstimator", "upper_bound_tokens"]

MIN_CHARS_PER_TOKEN = 0.5
MAX_CHARS_PER_TOKEN = 10.0
# Each observation's weight in the totals decays by this much per later observation: the
# fit follows roughly the last 20 requests.
_DECAY = 0.95
# Estimates are this much above the fitted ratio, so they err high (see the docstring).
_MARGIN = 1.02
# OpenAI chat framing: 3-4 tokens per message, plus 3 priming the reply; 8 is above both.
_PER_TEXT_OVERHEAD = 8
_REPLY_PRIMING = 3


def _clamp_ratio(ratio: float) -> float:
    return min(MAX_CHARS_PER_TOKEN, max(MIN_CHARS_PER_TOKEN, ratio))


class TokenEstimator:
    """Prompt-token estimates from character counts, calibrated on the usage providers report."""

    def __init__(self, chars_per_token: float = 3.0, per_message: int = 4) -> None:
        if not math.isfinite(chars_per_token) or chars_per_token <= 0:
            raise ValueError(f"chars_per_token must be positive, not {chars_per_token!r}")
        if per_message < 0:
            raise ValueError(f"per_message must be at least 0, not {per_message!r}")
        self._initial = _clamp_ratio(chars_per_token)
        self.per_message = per_message
        self._chars = 0.0  # decayed totals of the observations that say something of the ratio
        self._tokens = 0.0

    @property
    def chars_per_token(self) -> float:
        """The fitted ratio (the initial one until a usable observation)."""
        if self._tokens <= 0 or self._chars <= 0:
            return self._initial
        return _clamp_ratio(self._chars / self._tokens)

    def estimate(self, chars: int, messages: int = 1) -> int:
        """The likely prompt tokens of ``chars`` characters in ``messages`` messages."""
        content = math.ceil(max(0, chars) / self.chars_per_token * _MARGIN)
        return content + self.per_message * max(0, messages)

    def observe(self, chars: int, messages: int, tokens: int) -> None:
        """Learn from a request of ``chars`` characters that the provider counted as ``tokens``."""
        if tokens <= 0 or chars <= 0 or messages < 0:
            return  # no usage reported (some servers send 0), or nothing to learn from
        content = tokens - self.per_message * messages
        if content <= 0:
            return  # the framing is all of it: a tiny prompt says nothing of the ratio
        self._chars = self._chars * _DECAY + chars
        self._tokens = self._tokens * _DECAY + content


def upper_bound_tokens(texts: Sequence[str]) -> int:
    """At least the prompt tokens of ``texts`` (one message each) for byte-level BPE."""
    # A lone surrogate has no strict UTF-8 form; surrogatepass counts it as 3 bytes, as many
    # as the replacement character it would be sent as.
    content = sum(len(text.encode("utf-8", "surrogatepass")) for text in texts)
    return content + _PER_TEXT_OVERHEAD * len(texts) + _REPLY_PRIMING
