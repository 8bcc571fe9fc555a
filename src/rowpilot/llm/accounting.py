"""What a provider's remaining tokens say of how it counts them: at admission or at usage.

A ``Resource`` under the "learn" rule (rowpilot.llm.limits) feeds an ``Evidence`` what it
sends (``spent``: prompt + max_tokens at admission, the prompt estimate corrected as
answers settle) and what its answers left unused of their max_tokens (``unused``), and
each answer's remaining tokens and limit (``observe``). The rules:

* Between two answers that report the remaining tokens, the admission rule predicts the
  second from the first: plus the refill at the limit, less what was sent since. A provider
  that settles at real usage has also given back the unused max_tokens of the answers
  since: the excess over the prediction, summed over many answers, is that part (the
  timing of each answer cancels out in the sum).
* A step where the provider's bucket may have been full (the refill, or the remaining,
  within a typical call of the most it was seen to hold) tells nothing: a full bucket loses
  both the refill and what it gave back. It is left out.
* After ``EVIDENCE_ANSWERS`` informative answers whose unused max_tokens add up to
  ``MIN_GIVEN_BACK_CALLS`` typical calls (a signal well above the timing noise of the two
  ends of the sum), a verdict: "usage" when the excess is at least half the unused
  max_tokens, "admission" when under a quarter, none in between. After ``MAX_ANSWERS``
  without that much unused, the evidence starts again without a verdict (the rules hardly
  differ then). The resource changes its rule after ``VERDICTS_TO_SWITCH``
  verdicts in a row that agree.

The comparison is in the provider's own numbers, so the resource's headroom, factor and
share do not enter it; other users of the same account only make the excess smaller (the
safe side, "admission").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["EVIDENCE_ANSWERS", "VERDICTS_TO_SWITCH", "Evidence", "Rule", "Verdict"]

Rule = Literal["admission", "usage"]  # the rule in force: "learn" starts as "admission"

EVIDENCE_ANSWERS = 32  # informative answers per verdict on the provider's rule, at least
MAX_ANSWERS = 1024  # ... and at most, when their unused max_tokens add up slowly
VERDICTS_TO_SWITCH = 2  # verdicts in a row that must agree before the rule changes
_USAGE_SHOWS = 0.5  # the provider gave back at least this part of the unused max_tokens
_ADMISSION_SHOWS = 0.25  # ... or less than this part
MIN_GIVEN_BACK_CALLS = 4.0  # unused max_tokens worth this many typical calls, at least


@dataclass(frozen=True)
class Verdict:
    rule: Rule
    answers: int
    excess: float  # the provider's remaining above the admission rule's prediction, in all
    unused: float  # the unused max_tokens of those answers, in all

    def evidence(self) -> str:
        return (
            f"the provider's remaining tokens were on average {self.excess / self.answers:.0f} "
            f"above what charging prompt + max_tokens predicts, over {self.answers} answers "
            f"whose unused max_tokens averaged {self.unused / self.answers:.0f}"
        )


class Evidence:
    """The evidence so far and the verdicts it gives (see the module docstring)."""

    def __init__(self) -> None:
        self.spent = 0.0
        self.unused = 0.0
        self._last: tuple[float, float] | None = None  # (time, remaining)
        self._most = 0.0
        self._answers = 0
        self._excess = 0.0
        self._unused_total = 0.0

    def observe(self, remaining: float, limit: float, now: float, typical: float) -> Verdict | None:
        """One answer's remaining tokens; a verdict after enough informative answers."""
        spent, unused, last = self.spent, self.unused, self._last
        self.spent = self.unused = 0.0
        self._last = (now, remaining)
        most, self._most = self._most, max(self._most, remaining)
        if last is None:
            return None
        refilled = last[1] + max(0.0, now - last[0]) * limit / 60.0
        if refilled >= most - typical or remaining >= most - typical:
            return None  # the provider's bucket may have been full: nothing to learn
        self._excess += remaining - (refilled - spent)
        self._unused_total += unused
        self._answers += 1
        enough = self._unused_total >= MIN_GIVEN_BACK_CALLS * typical
        if self._answers < EVIDENCE_ANSWERS or (not enough and self._answers < MAX_ANSWERS):
            return None
        verdict = self._verdict(typical)
        self._answers, self._excess, self._unused_total = 0, 0.0, 0.0
        return verdict

    def _verdict(self, typical: float) -> Verdict | None:
        excess, unused = self._excess, self._unused_total
        if unused < MIN_GIVEN_BACK_CALLS * typical:
            return None  # the answers used (nearly) all their max_tokens: no difference
        if excess >= _USAGE_SHOWS * unused:
            return Verdict("usage", self._answers, excess, unused)
        if excess < _ADMISSION_SHOWS * unused:
            return Verdict("admission", self._answers, excess, unused)
        return None
