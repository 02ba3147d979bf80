"""The API pool's reconnection policy."""

from __future__ import annotations


def test_the_pools_reconnection_delay_is_capped():
    """psycopg_pool alone doubles its delay without bound (16 s after a 40 s outage)."""
    from pgclip.db.pool import RECONNECT_MAX_DELAY, _CappedAttempt

    attempt = _CappedAttempt(timeout=300)
    delays = []
    for step in range(12):
        attempt.update_delay(now=float(step))
        delays.append(attempt.delay)
    assert max(delays) <= RECONNECT_MAX_DELAY
    assert delays[0] > 0
