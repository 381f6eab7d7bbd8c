"""测试公共设置：把仓库根目录放进 sys.path；../shared 的定位与 missing()（缺外部依赖时 CI 里失败、其他地方跳过）；
字符一元熵基线；各模块测试共用的 run_quick_experiment / find_conclusion。"""
import json
import math
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = REPO_ROOT.parent / "shared"

if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

# 测试里画图一律用无界面后端
os.environ.setdefault("MPLBACKEND", "Agg")

# pytest-xdist 并行时每个 worker（及它启动的实验子进程）只用一个线程：
# 两个 worker 各开两个 OpenMP 线程挤在 2 个核上会互相空转等待，整体反而慢好几倍
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


def ci_is_set() -> bool:
    """环境变量 CI 为真（GitHub Actions 等都会设 CI=true）。"""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def missing(reason: str):
    """缺少外部依赖（../shared、Chromium、npm 包……）：CI 里必须失败——否则大段测试会悄悄消失；
    其他地方（学习者的克隆）跳过并说明原因与补救办法。"""
    if ci_is_set():
        pytest.fail(f"CI 环境缺少测试依赖：{reason}")
    pytest.skip(reason)


def require_shared(*parts: str) -> Path:
    """../shared 下的一个文件或目录；不存在时按 missing() 处理（CI 失败，其他地方跳过）。"""
    path = SHARED_DIR.joinpath(*parts)
    if not path.exists():
        missing(f"缺少 {path}：../shared（参考 fixture、分词器与数据）只在 CI/开发机上有，说明见 ../shared/README.md")
    return path


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """../shared（参考权重、数据）。学习者的克隆里没有它：跳过并说明原因；CI 里没有它：失败。"""
    return require_shared()


@pytest.fixture(scope="session")
def char_unigram_entropy() -> float:
    """TinyShakespeare 的字符一元熵 H = −Σ p_c·ln p_c（nats，约 3.31）：只学会字符频率、没学到任何上下文的模型，
    验证 loss 停在这附近（略高：验证段的分布与全文稍有不同，约 3.35）。"学到了东西"的断言要低于它，
    而不是低于均匀分布的 ln 65 ≈ 4.17。在测试里从原始文本独立计算，不用实验自己报的数。"""
    text = require_shared("data", "tinyshakespeare", "input.txt").read_text(encoding="utf-8")
    counts = Counter(text)
    return -sum(c / len(text) * math.log(c / len(text)) for c in counts.values())


@pytest.fixture
def one_thread():
    """测试期间 PyTorch 只用 1 个线程。给只有几十微秒算子的小模型用：2 核机器上有别的程序时，
    两个线程互相等待会慢十几倍。用法：模块里写 pytestmark = pytest.mark.usefixtures("one_thread")。"""
    import torch  # 放在这里：conftest 不让只测文档的测试也付导入 torch 的时间

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def experiment_env(shared_dir, tmp_path_factory):
    """给实验子进程用的环境变量：数据从回环 HTTP 服务器（提供 ../shared/data）经镜像设置下载，
    缓存到本次测试会话的临时目录——走的是真实的下载代码，但不碰外网。"""
    from loopback_http import serve_directory

    cache = tmp_path_factory.mktemp("data_cache")
    with serve_directory(shared_dir / "data") as base_url:
        env = dict(os.environ, MINIMIND_DATA_MIRROR=base_url, MINIMIND_DATA_DIR=str(cache), MPLBACKEND="Agg")
        yield env


def run_quick_experiment(script: Path, tmp_path: Path, env=None, extra_args=()):
    """在临时工作目录里以 --quick 运行一个实验脚本（与学习者的用法相同），检查退出码、JSON 记录和图，
    返回 (record, stdout)。各模块的测试都用它，再对 record 里测得的数值做断言。"""
    out_dir = tmp_path / "results"
    proc = subprocess.run([sys.executable, str(script), "--quick", "--output-dir", str(out_dir), *extra_args],
                          cwd=tmp_path, env=env, capture_output=True, text=True, encoding="utf-8", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((out_dir / f"{script.stem}.json").read_text(encoding="utf-8"))
    assert record["metadata"]["mode"] == "quick"
    assert record["metadata"]["figures"], "实验没有保存图"
    for fig in record["metadata"]["figures"]:
        assert (out_dir / fig).stat().st_size > 1000
    assert record["conclusions"], "实验没有给出任何结论"
    _QUICK_RECORDS.append(record)
    return record, proc.stdout


def load_experiment_module(experiments_dir: Path, name: str):
    """按路径导入实验目录里的模块（模块目录名带连字符，不能当包导入），用来测实验里的小工具函数。
    实验目录先放进 sys.path：实验脚本会 import 同目录的共用文件（如 lora_lab、tiled_attention）。"""
    import importlib.util

    if str(experiments_dir) not in sys.path:
        sys.path.insert(0, str(experiments_dir))
    spec = importlib.util.spec_from_file_location(name, experiments_dir / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def find_conclusion(record, fragment) -> dict:
    """record 里 claim 含 fragment 的那一条结论（必须恰好一条）。"""
    matches = [c for c in record["conclusions"] if fragment in c["claim"]]
    assert len(matches) == 1, f"找不到唯一包含 {fragment!r} 的结论：{[c['claim'] for c in record['conclusions']]}"
    matches[0]["_checked_by_test"] = "looked up"
    return matches[0]


def exempt_conclusions(record, reasons: dict) -> None:
    """把 record 里不做断言的结论登记为豁免：{claim 片段: 为什么这个测试不检查它}（理由必须写出来）。
    每个片段必须恰好匹配一条结论——结论改了措辞，豁免清单也要跟着改。"""
    for fragment, reason in reasons.items():
        assert reason and reason.strip(), f"豁免 {fragment!r} 必须写明理由"
        find_conclusion(record, fragment)["_checked_by_test"] = f"exempt: {reason}"


def assert_all_hold(record) -> None:
    """断言 record 的每一条结论都成立（status == holds），并把它们都记为已检查。"""
    not_holding = [(c["claim"], c["status"]) for c in record["conclusions"] if c["status"] != "holds"]
    assert not not_holding, f"这些结论没有成立：{not_holding}"
    for c in record["conclusions"]:
        c["_checked_by_test"] = "asserted holds"


def unchecked_claims(records) -> list:
    """records 里既没被 find_conclusion 取出、也没被豁免的结论。"""
    return [c["claim"] for record in records for c in record["conclusions"] if "_checked_by_test" not in c]


# 本测试里 run_quick_experiment 产生的记录；测试通过后逐条核对：每条结论要么被 find_conclusion 取出来断言过，
# 要么在 exempt_conclusions 里写明了不检查的理由。否则脚本写个 holds=True，测试照样是绿的（issue 19）。
_QUICK_RECORDS: list = []


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"report_{report.when}", report)


@pytest.fixture(autouse=True)
def every_conclusion_checked(request):
    """测试通过后，确认它跑出的每条实验结论都被检查过或被明确豁免；没有的话让测试失败并列出这些结论。"""
    _QUICK_RECORDS.clear()
    yield
    call_report = getattr(request.node, "report_call", None)
    if call_report is None or not call_report.passed:
        return
    unchecked = unchecked_claims(_QUICK_RECORDS)
    _QUICK_RECORDS.clear()
    if unchecked:
        pytest.fail("这些结论既没有被 find_conclusion 取出来断言，也不在 exempt_conclusions 的豁免清单里：\n  "
                    + "\n  ".join(unchecked), pytrace=False)
