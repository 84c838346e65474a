"""The one way fencex retries: exponential backoff with full jitter, built on tenacity.

Every place that waits for a server to come back (Redis, the broker) uses :func:`retrying`,
so each has the same schedule, says in the log what it waits for, and retries only the
errors that a wait can cure (``Unavailable`` by default: a bug is never retried)::

    async for attempt in retrying("loading device state", on_error=lambda e: metrics.store_errors.inc()):
        with attempt:
            states = await store.load_states(ids)

``give_up_after`` bounds the whole wait (seconds); without it, it retries until cancelled.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_delay, stop_never
from tenacity.wait import wait_random_exponential

from fencex.errors import Unavailable

log = logging.getLogger("fencex.retrying")


def retrying(
    what: str,
    errors: tuple[type[BaseException], ...] = (Unavailable,),
    *,
    initial: float = 0.5,
    max_delay: float = 10.0,
    give_up_after: float | None = None,
    on_error: Callable[[BaseException], None] | None = None,
    logger: logging.Logger = log,
) -> AsyncRetrying:
    """An ``async for`` retry loop over ``errors``, waiting up to ``initial * 2**n`` (capped
    at ``max_delay``) with full jitter between attempts, and logging each wait."""

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        if exc is not None and on_error is not None:
            on_error(exc)
        wait = state.next_action.sleep if state.next_action is not None else 0.0
        logger.warning("%s: %s (attempt %d; retrying in %.1f s)", what, exc, state.attempt_number, wait)

    return AsyncRetrying(
        retry=retry_if_exception_type(errors),
        wait=wait_random_exponential(multiplier=initial, max=max_delay),
        stop=stop_never if give_up_after is None else stop_after_delay(give_up_after),
        before_sleep=before_sleep,
        reraise=True,
    )
