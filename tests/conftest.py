"""测试公共设置：把仓库根目录放进 sys.path，并提供 ../shared 的定位。"""
import json
import os
import subprocess
import sys
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


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """../shared（参考权重、数据）。学习者的克隆里没有它，相关测试跳过并说明原因。"""
    if not SHARED_DIR.is_dir():
        pytest.skip(f"../shared 不存在（{SHARED_DIR}）：只有 CI/开发机上才有参考 fixture 与数据")
    return SHARED_DIR


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
    return record, proc.stdout


def find_conclusion(record, fragment) -> dict:
    """record 里 claim 含 fragment 的那一条结论（必须恰好一条）。"""
    matches = [c for c in record["conclusions"] if fragment in c["claim"]]
    assert len(matches) == 1, f"找不到唯一包含 {fragment!r} 的结论：{[c['claim'] for c in record['conclusions']]}"
    return matches[0]
