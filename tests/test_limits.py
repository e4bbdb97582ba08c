"""The per-user limiter: a second request from the same user is refused, other users are not affected."""

import pytest

from alignment.limits import LimitExceeded, UserLimiter


def test_second_request_of_one_user_is_refused_others_go_ahead():
    limiter = UserLimiter(per_user=1)
    with limiter.slot("ann", "generation"):
        with pytest.raises(LimitExceeded, match="1 generation running"):
            with limiter.slot("ann", "generation"):
                pass
        with limiter.slot("bob"):
            assert limiter.running("bob") == 1
    assert limiter.running("ann") == 0


def test_slot_is_released_when_the_work_fails():
    limiter = UserLimiter(per_user=2)
    with pytest.raises(ValueError):
        with limiter.slot("ann"):
            raise ValueError("boom")
    assert limiter.running("ann") == 0
