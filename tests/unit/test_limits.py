"""The per-conversation rate limiter: its limit, its window and its memory bound."""

from connectors.servicenow.limits import RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_key_gets_its_limit_per_window_then_room_again_as_the_window_slides():
    clock = Clock()
    limiter = RateLimiter(3, 60.0, clock=clock)
    assert [limiter.allow("u1") for _ in range(4)] == [True, True, True, False]
    assert limiter.allow("u2")  # keys do not share an allowance
    clock.now += 30
    assert not limiter.allow("u1")  # a refusal is not counted, but the old starts still are
    clock.now += 30.5
    assert limiter.allow("u1")


def test_zero_means_no_limit_and_remembers_nothing():
    limiter = RateLimiter(0)
    assert all(limiter.allow("u1") for _ in range(100))
    assert len(limiter) == 0


def test_memory_is_bounded_by_capacity_and_idle_keys_drain_away():
    clock = Clock()
    limiter = RateLimiter(1, 60.0, capacity=100, clock=clock)
    for n in range(10_000):
        limiter.allow(f"anonymous-{n}")
    assert len(limiter) == 100
    clock.now += 61
    limiter.allow("someone")
    assert len(limiter) == 100 - 8 + 1  # a few expired keys go with each later call
    for _ in range(20):
        limiter.allow("someone")
    assert len(limiter) == 1
