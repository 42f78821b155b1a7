"""The verifier's check names, apart from the verifier itself (which loads its lexicon on import), for the
settings and the evaluation scripts; a test keeps CHECK_NAMES equal to services/cache/verifier.py's."""

from __future__ import annotations

#: The verifier's checks, in the order they run.
CHECK_NAMES = ("numbers", "units", "dates", "negation", "scope", "intent", "roles", "order", "entities", "opposites",
               "content")
#: Checks whose rules read explicit tokens (48213 / 48231, °C / °F, without, enable / disable): the judge, which
#: has been seen to lose exactly those, may never overrule them.
NEVER_OVERRULED = ("numbers", "units", "dates", "negation", "roles", "opposites")
