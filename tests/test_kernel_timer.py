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
    # 4, 8 and 16 s (1000-4000 jiffies) are level 2: a 64-jiffy (256 ms) granule, as the 4.224 and
    # 8.192 s SYN-ACK intervals show; 40 ms (10 jiffies) is level 0: one jiffy late
    for delay in (4.0, 8.0, 16.0):
        for n in range(64):
            now = 1000.0 + n * 0.004
            fires = timer_expiry(now, delay)
            assert delay < fires - now <= delay + 0.256 + 1e-9
            assert round(fires * 250) % 64 == 0
    assert abs(timer_expiry(1000.0, 0.04) - 1000.0 - 0.044) < 1e-9
