"""tests/conftest.py 的公共助手：缺外部依赖时 CI 里失败、其他地方跳过（否则大段测试会在 CI 里悄悄消失）。"""
import math

import pytest

import conftest
from conftest import missing, require_shared


@pytest.mark.parametrize("ci, outcome", [("true", pytest.fail.Exception), ("1", pytest.fail.Exception),
                                          ("TRUE", pytest.fail.Exception), ("", pytest.skip.Exception),
                                          ("false", pytest.skip.Exception), ("0", pytest.skip.Exception)])
def test_missing_dependency_fails_in_ci_and_skips_elsewhere(monkeypatch, ci, outcome):
    monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome, match="apt-get install chromium"):
        missing("sudo apt-get install chromium chromium-driver")


def test_missing_dependency_skips_when_ci_is_unset(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception):
        missing("x")


@pytest.mark.parametrize("ci, outcome", [("true", pytest.fail.Exception), (None, pytest.skip.Exception)])
def test_require_shared_fails_in_ci_when_shared_is_absent(monkeypatch, tmp_path, ci, outcome):
    """shared_dir 夹具与各测试文件里的 ../shared 检查都经过 require_shared。"""
    monkeypatch.setattr(conftest, "SHARED_DIR", tmp_path / "no_shared_here")
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome, match="no_shared_here"):
        require_shared()
    with pytest.raises(outcome, match="tokenizer.json"):
        require_shared("fixtures", "minimind_tokenizer", "tokenizer.json")


def test_require_shared_returns_existing_paths(monkeypatch, tmp_path):
    (tmp_path / "fixtures").mkdir()
    (tmp_path / "fixtures" / "a.pt").write_bytes(b"x")
    monkeypatch.setattr(conftest, "SHARED_DIR", tmp_path)
    monkeypatch.setenv("CI", "true")
    assert require_shared() == tmp_path
    assert require_shared("fixtures", "a.pt") == tmp_path / "fixtures" / "a.pt"


def test_char_unigram_entropy_is_the_frequency_only_baseline(char_unigram_entropy):
    """一元熵在 ln 65（均匀猜）之下很多：以它为"学到了东西"的门槛比 ln 65 严格得多。"""
    assert 3.2 < char_unigram_entropy < 3.4
    assert char_unigram_entropy < math.log(65) - 0.8


def test_every_conclusion_must_be_looked_up_or_exempted():
    """结论覆盖规则：没被 find_conclusion 取出、也没被豁免的结论会被列出来；豁免必须写理由、片段必须唯一匹配。"""
    from conftest import assert_all_hold, exempt_conclusions, find_conclusion, unchecked_claims

    def record():
        return {"conclusions": [{"claim": "A 比 B 好", "status": "holds"}, {"claim": "C 比 D 快", "status": "not_established"}]}

    r = record()
    assert unchecked_claims([r]) == ["A 比 B 好", "C 比 D 快"]
    find_conclusion(r, "A 比 B")
    assert unchecked_claims([r]) == ["C 比 D 快"]
    exempt_conclusions(r, {"C 比 D": "计时只测了一次"})
    assert unchecked_claims([r]) == []
    with pytest.raises(AssertionError, match="理由"):
        exempt_conclusions(record(), {"C 比 D": " "})
    with pytest.raises(AssertionError, match="唯一"):
        exempt_conclusions(record(), {"比": "两条都匹配"})
    with pytest.raises(AssertionError, match="没有成立"):
        assert_all_hold(record())
