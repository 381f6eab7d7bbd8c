"""modules/common/replicates.py：复制训练的种子与 --replicates 的取值。"""
import argparse

import pytest

from modules.common.replicates import (
    REPLICATE_SEED_STRIDE, add_replicates_argument, replicate_seed, resolve_replicates,
)


def test_first_replicate_is_the_seed_itself_and_others_avoid_main_seeds():
    assert replicate_seed(42, 0) == 42  # R = 1 时结果与不复制完全相同
    seeds = {replicate_seed(s, r) for s in (1, 2, 3, 42, 43, 44) for r in range(1, 5)}
    assert len(seeds) == 24 and not seeds & {1, 2, 3, 5, 7, 42, 43, 44}
    assert replicate_seed(43, 2) == 43 + 2 * REPLICATE_SEED_STRIDE


def test_defaults_follow_the_mode_and_explicit_values_win():
    parser = argparse.ArgumentParser()
    add_replicates_argument(parser, quick_default=1, full_default=4, what="换批次顺序")
    assert "quick 1 / 完整 4" in parser.format_help()
    unset = parser.parse_args([]).replicates
    assert resolve_replicates(unset, quick=True, quick_default=1, full_default=4) == 1
    assert resolve_replicates(unset, quick=False, quick_default=1, full_default=4) == 4
    assert resolve_replicates(3, quick=True, quick_default=1, full_default=4) == 3


def test_fewer_than_one_replicate_is_one_clear_line():
    with pytest.raises(SystemExit, match="--replicates 必须 >= 1（收到 0）"):
        resolve_replicates(0, quick=False, quick_default=1, full_default=2)
