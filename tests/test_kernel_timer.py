"""kernel/time/timer.py against the intervals a 6.18 kernel (HZ=250) showed between its ARP probes
(1.019 s, then 1.024 s) and SYN-ACK retransmissions (1.013, 2.016, 4.224, 8.192, 16.128 s)."""
from pathtrace.kernel.time.timer import timer_expiry


def test_one_second_timer_is_rounded_up_to_level_one_granule() -> None:
    for n in range(64):                       # every phase of the 8-jiffy granule
        now = 1000.0 + n * 0.004
        fires = timer_expiry(now, 1.0)
        assert 1.0 < fires - now <= 1.032 + 1e-9
        assert round(fires * 250) % 8 == 0   # on a granule boundary


def test_rearmed_from_its_own_expiry_is_1024_ms() -> None:
    t = timer_expiry(1000.0, 1.0)
    assert abs(timer_expiry(t, 1.0) - t - 1.024) < 1e-9


def test_longer_timers_land_in_coarser_levels() -> None:
    t = 1000.0                               # a granule boundary at every level
    assert abs(timer_expiry(t, 4.0) - t - 4.224) < 1e-9    # 1000 jiffies: level 2, 64-jiffy granule
    assert abs(timer_expiry(t, 8.0) - t - 8.192) < 1e-9
    assert abs(timer_expiry(t, 16.0) - t - 16.128) < 1e-9
    assert abs(timer_expiry(t, 0.04) - t - 0.044) < 1e-9   # 10 jiffies: level 0, one jiffy later
