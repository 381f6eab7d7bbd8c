"""modules/common/timing.py：交替计时与"谁更快"的噪声检验。用 sleep 造出已知的快慢，不依赖机器速度。"""
import time

import pytest

from modules.common.noise import FAILS, HOLDS, NOT_ESTABLISHED
from modules.common.timing import alternating_timings, compare_speed, speed_ratio


def test_alternating_timings_rotate_the_order_and_time_every_window():
    calls = []
    fns = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b"), "c": lambda: calls.append("c")}
    times = alternating_timings(fns, windows=3, calls_per_window=2, warmup=1)
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3, "c": 3}
    assert calls[:3] == ["a", "b", "c"]  # 热身
    windows = [calls[3 + 6 * w: 3 + 6 * (w + 1)] for w in range(3)]
    assert [w[0] for w in windows] == ["a", "b", "c"]  # 每个窗口换一个先测的
    assert all(t >= 0 for ts in times.values() for t in ts)


def test_a_clearly_faster_function_holds_and_a_tie_is_not_established():
    def sleeper(seconds):
        return lambda: time.sleep(seconds)
    times = alternating_timings({"fast": sleeper(0.002), "slow": sleeper(0.012)}, windows=6)
    verdict = compare_speed(times["fast"], times["slow"])
    assert verdict.status == HOLDS and verdict.unit == "windows" and speed_ratio(times["fast"], times["slow"]) > 2
    reverse = compare_speed(times["slow"], times["fast"])
    assert reverse.status == FAILS
    tie = compare_speed([1.0, 1.1, 0.9, 1.0], [1.05, 1.0, 0.95, 1.0])
    assert tie.status == NOT_ESTABLISHED


def test_bad_window_count_is_refused():
    with pytest.raises(ValueError, match="windows"):
        alternating_timings({"a": lambda: None}, windows=1)
