"""Hypothesis budgets: the `fast` profile (default, CI) and `thorough` (HYPOTHESIS_PROFILE=thorough, `make
test-thorough`). A test that sets its own `max_examples` takes it through `budget(n)`, so the thorough profile
raises every test's budget, not only those on the profile's default.

Neither profile is derandomized: the examples change from commit to commit (tests/conftest.py seeds hypothesis from
the commit, or from $CNODE_TEST_SEED, and prints the seed in the session header, so a red run reproduces with
`CNODE_TEST_SEED=<seed> make test` or `pytest --hypothesis-seed=<seed>`)."""

import os

from hypothesis import HealthCheck, settings

PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "fast")
THOROUGH_FACTOR = 20

settings.register_profile(
    "fast", max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("thorough", max_examples=25 * THOROUGH_FACTOR, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(PROFILE)


def budget(n: int) -> int:
    """A test's own example count: n under `fast`, THOROUGH_FACTOR x n under `thorough`."""
    return n * THOROUGH_FACTOR if PROFILE == "thorough" else n
