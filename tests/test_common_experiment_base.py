"""modules.common.experiment_base：在子进程里从别的目录运行一个用 Experiment 写的小脚本，检查命令行、JSON 记录和种子。"""
import json
import os
import subprocess
import sys
from datetime import datetime

import numpy as np
import pytest
import torch

from conftest import REPO_ROOT
from modules.common import experiment_base
from modules.common.device import cpu_model
from modules.common.experiment_base import Experiment, to_json_safe
from modules.common.noise import compare

DESCRIPTION = "玩具实验：检查 Experiment 的行为"

SCRIPT = '''
import random
import sys
from pathlib import Path

sys.path.insert(0, {repo!r})
import numpy as np
import torch
from modules.common.experiment_base import Experiment
from modules.common.visualization import plt


def extra(parser):
    parser.add_argument("--width", type=int, default=3, help="向量长度")


exp = Experiment(__file__, description={description!r}, extra_args=extra)
x = torch.randn(exp.args.width)
exp.save_metrics({{"x": x, "numpy": np.random.rand(2), "python": random.random(), "nan": float("nan")}})
exp.save_metrics({{"width": exp.args.width, "mean": x.mean()}})
fig, ax = plt.subplots()
ax.plot(x.tolist())
exp.save_figure(fig, "toy.png")
exp.print_table(["名字", "value"], [["中文名", 1.23456], ["b", 2]], title="summary")
exp.conclude("x has at least one positive entry", holds=np.bool_(bool((x > 0).any())), evidence=f"max={{x.max():.3f}}")
exp.conclude("x sums above a million", holds=x.sum() > 1e6, evidence=f"sum={{x.sum():.3f}}")
exp.finish()
'''


@pytest.fixture(scope="module")
def toy_script(repo_root, tmp_path_factory):
    folder = tmp_path_factory.mktemp("toy") / "experiments"
    folder.mkdir()
    path = folder / "toy_exp.py"
    path.write_text(SCRIPT.format(repo=str(repo_root), description=DESCRIPTION), encoding="utf-8")
    return path


def run(script, cwd, *args, env=None):
    return subprocess.run([sys.executable, str(script), *args], cwd=cwd, capture_output=True, text=True,
                          encoding="utf-8", timeout=120, env={**os.environ, "MPLBACKEND": "Agg", **(env or {})})


def test_help_shows_description(toy_script, tmp_path):
    result = run(toy_script, tmp_path, "--help")
    assert result.returncode == 0, result.stderr
    for text in (DESCRIPTION, "--quick", "--device", "--seed", "--output-dir", "--width"):
        assert text in result.stdout


@pytest.fixture(scope="module")
def runs(toy_script, tmp_path_factory):
    """同一脚本跑三次（都在另一个 cwd）：a 与 b 同种子（b 用默认结果目录），c 换种子。"""
    cwd = tmp_path_factory.mktemp("elsewhere")
    results = {
        "a": run(toy_script, cwd, "--quick", "--device", "cpu", "--seed", "7", "--width", "5", "--output-dir", str(cwd / "a")),
        "b": run(toy_script, cwd, "--device", "cpu", "--seed", "7", "--width", "5"),
        "c": run(toy_script, cwd, "--quick", "--device", "cpu", "--seed", "8", "--width", "5", "--output-dir", str(cwd / "c")),
    }
    for result in results.values():
        assert result.returncode == 0, result.stderr
    paths = {"a": cwd / "a", "b": toy_script.parent / "results", "c": cwd / "c"}
    records = {k: json.loads((paths[k] / "toy_exp.json").read_text(encoding="utf-8")) for k in paths}
    return results, records, paths


def test_record_schema_and_output(runs):
    results, records, paths = runs
    record, out = records["a"], paths["a"]
    assert set(record) == {"metadata", "metrics", "conclusions"}
    meta = record["metadata"]
    assert set(meta) == {"experiment", "mode", "seed", "seeds", "device", "torch", "python", "started", "duration_s",
                         "cpu_s", "threads", "cpu_model", "load_avg_1min", "argv", "figures"}
    assert meta["cpu_s"] >= 0 and meta["threads"] >= 1 and meta["cpu_model"] == cpu_model()
    assert meta["experiment"] == "toy_exp" and meta["mode"] == "quick" and meta["seed"] == 7
    assert meta["seeds"] == [7]  # quick 只用一个种子；完整模式是 [7, 8, 9]
    assert meta["device"] == "cpu" and meta["torch"] == torch.__version__
    assert datetime.fromisoformat(meta["started"]).tzinfo is not None
    assert meta["duration_s"] >= 0 and "--quick" in meta["argv"]
    assert meta["figures"] == ["toy.png"] and (out / "toy.png").stat().st_size > 1000
    metrics = record["metrics"]
    assert len(metrics["x"]) == 5 and metrics["width"] == 5 and metrics["nan"] is None
    assert isinstance(metrics["mean"], float) and len(metrics["numpy"]) == 2
    assert metrics["tables"]["summary"] == {"headers": ["名字", "value"], "rows": [["中文名", 1.23456], ["b", 2]]}
    x = np.array(metrics["x"])
    assert record["conclusions"] == [
        {"claim": "x has at least one positive entry", "holds": bool((x > 0).any()),
         "status": "holds" if (x > 0).any() else "fails", "evidence": f"max={x.max():.3f}"},
        {"claim": "x sums above a million", "holds": False, "status": "fails", "evidence": f"sum={x.sum():.3f}"},
    ]
    stdout = results["a"].stdout
    assert "mode=quick" in stdout.splitlines()[0]
    assert "❌ 本次运行不成立：x sums above a million" in stdout
    assert not list(out.glob("*.tmp"))


def test_output_dir_and_default_results_dir(runs):
    _, records, paths = runs
    assert records["b"]["metadata"]["mode"] == "full"
    assert (paths["b"] / "toy.png").is_file()  # 没给 --output-dir：写到脚本旁边的 results/
    assert (paths["a"] / "toy.png").is_file() and (paths["c"] / "toy.png").is_file()


def test_seed_is_reproducible(runs):
    _, records, _ = runs
    a, b, c = (records[k]["metrics"] for k in "abc")
    for key in ("x", "numpy", "python"):  # torch、numpy、random 三个随机源都被播种
        assert a[key] == b[key]
        assert a[key] != c[key]


def test_unavailable_device_exits_2(toy_script, tmp_path):
    # 子进程里把 GPU 藏起来：有 CUDA 的机器上也测得到"cuda 不可用"的报错
    result = run(toy_script, tmp_path, "--device", "cuda", "--output-dir", str(tmp_path / "out"),
                 env={"CUDA_VISIBLE_DEVICES": ""})
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "cuda" in result.stderr and "不可用" in result.stderr and "--device cpu" in result.stderr
    assert not (tmp_path / "out" / "toy_exp.json").exists()


@pytest.fixture
def in_process_experiment(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["fake_exp.py", "--device", "cpu", "--output-dir", str(tmp_path)])
    return Experiment(str(tmp_path / "fake_exp.py"), description="进程内测试")


def test_conclude_requires_computed_bool(in_process_experiment):
    exp = in_process_experiment
    for bad in ("yes", 1, None, torch.tensor([True, False])):
        with pytest.raises(TypeError, match="布尔"):
            exp.conclude("claim", holds=bad, evidence="-")
    exp.conclude("claim", holds=torch.tensor(True), evidence="tensor bool")
    exp.conclude("claim", holds=np.float64(2.0) > 1.0, evidence="numpy bool")
    record = json.loads(exp.finish().read_text(encoding="utf-8"))
    assert [c["holds"] for c in record["conclusions"]] == [True, True]


@pytest.mark.parametrize("quick", [True, False])
def test_quick_reason_prints_instead_of_judging_in_quick_only(tmp_path, monkeypatch, capsys, quick):
    monkeypatch.setattr(sys, "argv", ["fake_exp.py", "--device", "cpu", "--output-dir", str(tmp_path)]
                        + (["--quick"] if quick else []))
    exp = Experiment(str(tmp_path / "fake_exp.py"), description="进程内测试")
    verdict = compare([1.1, 1.2, 1.15, 1.12], [1.0, 1.0, 1.0, 1.0], "greater", unit="batches")
    exp.conclude_verdict("A 好于 B", verdict, "A 1.0 vs B 1.1", quick_reason="单种子量不到训练噪声")
    exp.conclude_verdict("C 好于 D", verdict, "C vs D")
    record = json.loads(exp.finish().read_text(encoding="utf-8"))
    claims = [c["claim"] for c in record["conclusions"]]
    if quick:  # quick：不进结论，只打印与记录测得的值和原因
        assert claims == ["C 好于 D"]
        [undecided] = record["metrics"]["quick_undecided"]
        assert undecided["claim"] == "A 好于 B" and undecided["reason"] == "单种子量不到训练噪声"
        assert "A 1.0 vs B 1.1" in undecided["evidence"] and "Δ=" in undecided["evidence"]
        assert 'quick 模式不判定"A 好于 B"' in capsys.readouterr().out
    else:  # 完整模式照常判定
        assert claims == ["A 好于 B", "C 好于 D"] and "quick_undecided" not in record["metrics"]


def test_print_table_aligns_cjk(in_process_experiment, capsys):
    in_process_experiment.print_table(["name", "loss"], [["归一化", 0.5], ["none", 12.25]])
    lines = capsys.readouterr().out.strip().splitlines()
    header, rule, *rows = lines
    widths = [experiment_base._display_width(line[: line.rindex(" ") + 1]) for line in (header, *rows)]
    assert len(set(widths)) == 1  # 第一列按显示宽度补齐：中文占 2 列
    assert rows[0].endswith("0.5") and rows[1].endswith("12.25")
    with pytest.raises(ValueError, match="列"):
        in_process_experiment.print_table(["a", "b"], [[1]])


def test_to_json_safe():
    value = {1: torch.tensor([1.5, 2.0]), "n": np.int64(3), "inf": float("inf"), "nested": (np.bool_(True),)}
    assert to_json_safe(value) == {"1": [1.5, 2.0], "n": 3, "inf": None, "nested": [True]}
    with pytest.raises(TypeError, match="JSON"):
        to_json_safe({"bad": object()})


def test_mean_std_helpers():
    from modules.common.experiment_base import format_mean_std, mean_std

    assert mean_std([1.0, 3.0]) == (2.0, 1.0)
    assert mean_std([5.0]) == (5.0, 0.0)
    assert format_mean_std([1.0, 3.0]) == "2 ± 1"
    assert format_mean_std([2.5]) == "2.5"
    with pytest.raises(ValueError):
        mean_std([])


def test_missing_data_gives_clear_message_not_traceback(tmp_path):
    from loopback_http import unused_port_url

    script = tmp_path / "needs_data.py"
    script.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(REPO_ROOT)!r})\n"
        "from modules.common.experiment_base import Experiment\n"
        "from modules.common.datasets import get_experiment_data\n"
        "exp = Experiment(__file__, description='needs data')\n"
        "get_experiment_data('shakespeare')\n", encoding="utf-8")
    env = dict(os.environ, MINIMIND_DATA_MIRROR=unused_port_url(), MINIMIND_DATA_DIR=str(tmp_path / "cache"))
    proc = subprocess.run([sys.executable, str(script), "--quick"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, encoding="utf-8", timeout=120)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr and "input.txt" in proc.stderr and "MINIMIND_DATA_MIRROR" in proc.stderr
