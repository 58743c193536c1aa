"""Stop strings of an OpenAI request that runs as several /generate segments.

SGLang checks stop strings on each request's own output tokens, so a destination segment never sees the text
its source produced. Two rules keep a migrated request's text equal to an unmigrated run:

- SGLang's scheduler does not stream a chunk while the output's tail could be the start of a stop string, so
  the router (which moves a request only after a chunk it received) normally never cuts inside a stop string.
- As a guard for workers that stream such a tail anyway, the router holds back (does not send to the client)
  text whose tail is a proper prefix of a stop string (:meth:`StopScanner.held`), and finds any stop string
  that spans a segment boundary itself (:meth:`StopScanner.spanning`): the request then finishes there as
  SGLang would have (``finish_reason`` ``stop``, ``matched_stop``, text cut before the stop string unless
  ``no_stop_trim``). Matches inside one segment are the worker's own (it reports and trims them).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StopMatch:
    start: int  # index of the stop string in the full text
    stop: str


class StopScanner:
    def __init__(self, stops: str | list[str] | None):
        if isinstance(stops, str):
            stops = [stops]
        self.stops = [s for s in (stops or []) if s]

    def held(self, text: str) -> int:
        """Characters at the end of ``text`` that may be the start of a stop string (not sent yet)."""
        best = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(text)), best, -1):
                if text.endswith(s[:k]):
                    best = k
                    break
        return best

    def spanning(self, text: str, boundaries: list[int]) -> StopMatch | None:
        """The earliest stop string in ``text`` that starts before and ends after a segment boundary."""
        found: StopMatch | None = None
        for b in boundaries:
            for s in self.stops:
                i = text.find(s, max(0, b - len(s) + 1))  # any hit from here on that starts before b spans b
                if 0 <= i < b and (found is None or i < found.start):
                    found = StopMatch(i, s)
        return found
