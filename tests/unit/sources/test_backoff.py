import random

import pytest

from streamcap.sources.backoff import Backoff


def test_base_delay_doubles_from_initial_until_the_cap():
    backoff = Backoff(initial_s=0.1, factor=2.0, cap_s=1.0, jitter=0.0)
    assert [backoff.base_s(n) for n in range(6)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])


def test_delay_never_exceeds_cap_even_after_many_attempts():
    backoff = Backoff(initial_s=0.1, cap_s=1.5, jitter=0.5)
    rng = random.Random(0)
    assert all(backoff.delay_s(n, rng) <= 1.5 for n in (0, 5, 50, 10_000))


def test_jitter_stays_within_band_below_base():
    backoff = Backoff(initial_s=0.5, factor=2.0, cap_s=4.0, jitter=0.25)
    rng = random.Random(1)
    delays = [backoff.delay_s(2, rng) for _ in range(500)]
    assert min(delays) >= 2.0 * 0.75
    assert max(delays) <= 2.0
    assert len({round(d, 6) for d in delays}) > 100  # actually jittered


def test_same_seed_gives_same_delays():
    backoff = Backoff()
    a = [backoff.delay_s(n, random.Random(7)) for n in range(8)]
    b = [backoff.delay_s(n, random.Random(7)) for n in range(8)]
    assert a == b


def test_zero_jitter_gives_exact_base():
    backoff = Backoff(initial_s=0.3, cap_s=1.0, jitter=0.0)
    assert backoff.delay_s(1, random.Random(3)) == pytest.approx(0.6)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"initial_s": 0.0},
        {"cap_s": -1.0},
        {"initial_s": 2.0, "cap_s": 1.0},
        {"factor": 0.5},
        {"jitter": 1.5},
    ],
)
def test_invalid_parameters_are_rejected(kwargs):
    with pytest.raises(ValueError):
        Backoff(**kwargs)


def test_negative_attempt_is_rejected():
    with pytest.raises(ValueError):
        Backoff().base_s(-1)
