"""
Seeded randomness for the randomized tests and benchmarks.

A randomized test must fail the same way twice.  Every random workload takes
its generator from here: the seed is ``ELECTRIC_TEST_SEED`` when that is set,
otherwise a fresh one (plus, for cheap tests, a few fixed seeds that always
run), and a failing test names its seed and the command that reruns it::

    random seed 1234567 (rerun: ELECTRIC_TEST_SEED=1234567 .venv/bin/trial tests.test_x.C.test_y)

Use `seeded` on a test method that takes the generator as its argument; it
works for plain and Deferred-returning (inlineCallbacks) tests alike::

    @seeded(7, 8)            # seeds 7 and 8, then a fresh one (or only $ELECTRIC_TEST_SEED)
    def test_something(self, rng): ...

Tests that share one module-level seed take it from `choose()` and put
`@reports_seed(SEED)` on their class.

Hypothesis properties do not use this: the suite's Hypothesis profile is
derandomized (`tests.hypothesis_profiles`) and Hypothesis prints its own
reproduction blob.
"""

from __future__ import annotations

import functools
import os
import random
import sys
from typing import Callable, List, Optional

ENV = "ELECTRIC_TEST_SEED"


def env_seed() -> Optional[int]:
    """The seed forced by ``ELECTRIC_TEST_SEED`` (decimal or 0x-hex), or None."""
    text = os.environ.get(ENV, "").strip()
    if not text:
        return None
    try:
        return int(text, 0)
    except ValueError:
        raise ValueError(f"{ENV}={text!r} is not an integer seed") from None


def fresh_seed() -> int:
    return random.SystemRandom().randrange(1, 2 ** 32)


def choose(default: Optional[int] = None) -> int:
    """One seed: ``ELECTRIC_TEST_SEED``, else `default`, else a fresh one."""
    forced = env_seed()
    if forced is not None:
        return forced
    return default if default is not None else fresh_seed()


def seeds(*fixed: int) -> List[int]:
    """The seeds a test runs with: only ``ELECTRIC_TEST_SEED`` when set, else `fixed` and a fresh one."""
    forced = env_seed()
    if forced is not None:
        return [forced]
    return [*fixed, fresh_seed()]


def rerun_hint(seed: int, test_id: Optional[str] = None) -> str:
    where = f" .venv/bin/trial {test_id}" if test_id else ""
    return f"random seed {seed} (rerun: {ENV}={seed}{where})"


def _annotate(exc: BaseException, hint: str) -> None:
    """Put the seed into what the runner reports, whichever runner it is."""
    if isinstance(exc, AssertionError) and exc.args and isinstance(exc.args[0], str):
        if hint not in exc.args[0]:
            exc.args = (f"{exc.args[0]}\n{hint}",) + exc.args[1:]
    elif isinstance(exc, AssertionError) and not exc.args:
        exc.args = (hint,)
    elif hasattr(exc, "add_note"):
        exc.add_note(hint)
    # Also on stderr: pytest shows it with the failure, trial keeps it in test.log.
    print(hint, file=sys.stderr)


def _reporting(test, hint_for):
    """`test` with `hint_for(self)` added to whatever it fails with (plain or Deferred-returning)."""

    @functools.wraps(test)
    def run(self, *args, **kwargs):
        from twisted.internet import defer

        hint = hint_for(self)
        try:
            result = test(self, *args, **kwargs)
        except BaseException as e:
            _annotate(e, hint)
            raise
        if isinstance(result, defer.Deferred):
            def failed(failure):
                _annotate(failure.value, hint)
                return failure

            result.addErrback(failed)
        return result

    return run


def reports_seed(seed: int) -> Callable:
    """
    Class decorator for tests sharing one module-level seed (``SEED = choose()``):
    every test method of the class names the seed when it fails.
    """

    def decorate(cls):
        for name in list(vars(cls)):
            if name.startswith("test") and callable(getattr(cls, name)):
                setattr(cls, name, _reporting(getattr(cls, name), lambda self: rerun_hint(seed, self.id())))
        return cls

    return decorate


def seeded(*fixed: int) -> Callable:
    """Decorator: run the test once per seed of `seeds(*fixed)` with a ``random.Random``."""

    def decorate(test):
        @functools.wraps(test)
        def run(self):
            from twisted.internet import defer

            todo = seeds(*fixed)

            def next_seed(_=None):
                while todo:
                    seed = todo.pop(0)
                    hint = rerun_hint(seed, self.id())
                    try:
                        result = test(self, random.Random(seed))
                    except BaseException as e:
                        _annotate(e, hint)
                        raise
                    if isinstance(result, defer.Deferred):
                        def failed(failure, hint=hint):
                            _annotate(failure.value, hint)
                            return failure

                        result.addErrback(failed)
                        return result.addCallback(next_seed)
                return None

            return next_seed()

        return run

    return decorate

