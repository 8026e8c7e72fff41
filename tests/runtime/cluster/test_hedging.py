"""runtime.cluster.hedging: how long a shard call waits before a second is sent beside it (fixed,
never, or adapted to the calls seen), and ``--shard-hedge-after``'s values."""
from __future__ import annotations

import pytest

from runtime.cluster.hedging import HEDGE_FACTOR, HEDGE_MIN_S, HEDGE_MIN_SAMPLES, HedgePolicy, parse_hedge


def test_a_fixed_delay_and_off_ignore_what_was_seen():
    fixed, off = HedgePolicy(1.5), HedgePolicy(0)
    for policy in (fixed, off):
        for _ in range(20):
            policy.record("hits", 0.01)
    assert fixed.delay("hits", 10) == 1.5 and fixed.enabled
    assert off.delay("hits", 10) is None and not off.enabled
    with pytest.raises(ValueError, match="at least 0"):
        HedgePolicy(-1)


def test_the_adaptive_delay_follows_the_90th_percentile_of_each_call_within_its_bounds():
    policy = HedgePolicy()
    assert policy.delay("hits", 8) == 2  # nothing seen: a quarter of the deadline
    for _ in range(HEDGE_MIN_SAMPLES - 1):
        policy.record("hits", 0.3)
    assert policy.delay("hits", 8) == 2  # too few calls to go by
    policy.record("hits", 0.3)
    assert policy.delay("hits", 8) == pytest.approx(HEDGE_FACTOR * 0.3)
    # fewer than a tenth of slow calls does not set it; more than a tenth does
    for seconds in [0.3] * 80 + [5.0] * 6:  # the last 64: 58 quick, 6 slow
        policy.record("hits", seconds)
    assert policy.delay("hits", 8) == pytest.approx(HEDGE_FACTOR * 0.3)
    for _ in range(12):
        policy.record("hits", 5.0)
    assert policy.delay("hits", 8) == 4  # never past half the deadline
    assert policy.delay("rerank", 8) == 2  # each kind of call on its own
    quick = HedgePolicy()
    for _ in range(HEDGE_MIN_SAMPLES):
        quick.record("shortlist", 0.001)
    assert quick.delay("shortlist", 8) == HEDGE_MIN_S


def test_while_a_hedged_call_waits_the_next_follow_at_half_the_delay_but_not_under_the_floor():
    assert HedgePolicy.gap(2.0, 1) == 2.0  # only the first call waiting
    assert HedgePolicy.gap(2.0, 2) == 1.0 and HedgePolicy.gap(2.0, 5) == 1.0
    assert HedgePolicy.gap(0.3, 2) == HEDGE_MIN_S  # half of 0.3 s is under the floor
    assert HedgePolicy.gap(0.05, 3) == 0.05  # a fixed delay under the floor is kept as it is


@pytest.mark.parametrize(("text", "value"), [("auto", None), ("AUTO", None), ("off", 0.0), ("0", 0.0), ("0.0", 0.0),
                                                ("0.5", 0.5), ("1.5", 1.5)])
def test_the_option_reads_auto_off_and_seconds(text, value):
    assert parse_hedge(text) == value


@pytest.mark.parametrize("text", ["soon", "-2", "nan", ""])
def test_the_option_refuses_anything_else(text):
    with pytest.raises(ValueError, match="expected auto, off or seconds"):
        parse_hedge(text)
