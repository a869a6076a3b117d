"""Properties of the retry schedule, checked with hypothesis (no sleeping: delays are computed)."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from hybrid import RateLimited, Retry, ServerError

policies = st.builds(
    Retry,
    attempts=st.integers(1, 10),
    base=st.floats(0.0, 5.0),
    cap=st.floats(0.0, 60.0),
    jitter=st.floats(0.0, 1.0),
    retry_after_cap=st.floats(0.0, 120.0),
)


@given(policies, st.integers(1, 30), st.integers(0, 2**32))
def test_backoff_stays_within_bounds(retry: Retry, attempt: int, seed: int) -> None:
    delay = retry.delay(attempt, ServerError("x"), random.Random(seed))
    ceiling = retry.backoff(attempt)
    assert 0.0 <= delay <= ceiling <= retry.cap
    assert delay >= ceiling * (1.0 - retry.jitter) - 1e-12


@given(policies, st.integers(1, 29))
def test_backoff_grows_until_the_cap(retry: Retry, attempt: int) -> None:
    assert retry.backoff(attempt + 1) >= retry.backoff(attempt)
    if retry.base * 2.0 ** (attempt - 1) <= retry.cap:
        assert retry.backoff(attempt) == retry.base * 2.0 ** (attempt - 1)
    else:
        assert retry.backoff(attempt) == retry.cap


@given(policies, st.integers(1, 30), st.floats(0.0, 300.0), st.integers(0, 2**32))
def test_retry_after_takes_precedence_and_is_capped(retry: Retry, attempt: int, after: float, seed: int) -> None:
    delay = retry.delay(attempt, RateLimited("x", retry_after_s=after), random.Random(seed))
    assert (
        delay == retry.retry_after_cap if after > retry.retry_after_cap else after <= delay <= max(after * 1.1, after)
    )
    assert delay <= retry.retry_after_cap


@given(st.floats(0.1, 1.0), st.integers(1, 8))
def test_jitter_spreads_concurrent_retries_instead_of_lockstep(jitter: float, attempt: int) -> None:
    retry = Retry(base=1.0, cap=100.0, jitter=jitter)
    rng = random.Random(0)
    delays = [retry.delay(attempt, ServerError("x"), rng) for _ in range(100)]
    spread = max(delays) - min(delays)
    assert spread > 0.5 * jitter * retry.backoff(attempt)
    assert len(set(delays)) == len(delays)


@given(policies, st.integers(1, 10))
def test_only_retryable_errors_within_attempts_are_retried(retry: Retry, attempt: int) -> None:
    from hybrid import AuthenticationFailed, BadRequest

    assert retry.should_retry(ServerError("x"), attempt) == (attempt < retry.attempts)
    assert not retry.should_retry(BadRequest("x"), attempt)
    assert not retry.should_retry(AuthenticationFailed("x"), attempt)
