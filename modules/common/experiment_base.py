"""实验脚本的骨架：命令行参数、随机种子、设备、结果目录、JSON 记录与结论打印。

    exp = Experiment(__file__, description="中文描述（--help 显示）")
    ...  # 跑实验，exp.quick 决定规模
    exp.save_figure(fig, "loss.png")
    exp.save_metrics({"final_loss": 1.23})
    exp.print_table(["model", "loss"], [["rmsnorm", 1.23]], title="final")
    exp.conclude_verdict("RMSNorm 比不归一化收敛更快", compare(loss_rms, loss_none, "less"),
                         evidence=f"{format_mean_std(loss_rms)} vs {format_mean_std(loss_none)}")
    exp.conclude("分词往返无损", holds=decoded == text, evidence="...")   # 没有噪声的确定性事实
    exp.finish()  # 写 results/<脚本名>.json 并打印结论

结论由本次运行的测量算出来（诚实实验）。"A 比 B 好"这类比较一律经 conclude_verdict 走共享的噪声检验
（modules/common/noise.py）：效应超出噪声才 ✅ 成立，噪声以内打印 ❔ 未确立，反向超出噪声打印 ❌ 不成立。
conclude(holds=...) 只留给没有随机性的确定性检查（公式、往返、计数）。
"""
import argparse
import json
import math
import os
import platform
import random
import sys
import time
import unicodedata
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

from modules.common.datasets import DataDownloadError
from modules.common.device import DEVICE_CHOICES, cpu_model, describe_device, get_device
from modules.common.noise import FAILS, HOLDS, NOT_ESTABLISHED, Verdict
from modules.common.visualization import plt  # 经 visualization 导入 pyplot：无显示器时先切到 Agg 后端


def to_json_safe(value):
    """把张量、numpy 数值/数组、Path 等转成 JSON 能写的 Python 对象；NaN/inf 写成 null（JSON 不支持它们）。"""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        return to_json_safe(value.item() if value.dim() == 0 else value.tolist())
    if isinstance(value, np.ndarray):
        return to_json_safe(value.tolist())
    if isinstance(value, np.generic):
        return to_json_safe(value.item())
    if isinstance(value, dict):
        return {str(k): to_json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json_safe(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"无法写进 JSON 的类型 {type(value).__name__}：{value!r}；请先转成数字、字符串或列表")


def _report_missing_data(exc_type, exc, tb, _default_hook=sys.excepthook):
    """数据下载失败是环境问题，不是代码 bug：只打印说明（去哪里放文件、怎么设镜像），不打印 traceback。"""
    if issubclass(exc_type, DataDownloadError):
        print(f"\n实验需要的数据拿不到：\n{exc}", file=sys.stderr)  # 解释器随后以退出码 1 结束
    else:
        _default_hook(exc_type, exc, tb)


def cpu_seconds() -> float:
    """本进程（加上已结束、已回收的子进程，如 parallel.map_seeds 的单线程子进程）用掉的 CPU 时间（user + system）。
    机器被别的任务占着时墙钟会被拖慢，CPU 时间基本不变：README 的耗时表以它和单独运行时的墙钟为准。"""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def mean_std(values) -> tuple[float, float]:
    """多种子结果的均值与（总体）标准差；只有一个值时 std 为 0。NaN 会传播，说明有一次发散。"""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("mean_std 需要至少一个值")
    mean = sum(values) / len(values)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


def format_mean_std(values, digits: int = 4) -> str:
    """'1.234 ± 0.012'（一个值时只显示它本身）。"""
    mean, std = mean_std(values)
    return f"{mean:.{digits}g}" if len(list(values)) == 1 else f"{mean:.{digits}g} ± {std:.2g}"


def _display_width(text: str) -> int:
    """终端显示宽度：全角/宽字符（中文等）占 2 列。"""
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def _format_cell(value) -> str:
    if isinstance(value, torch.Tensor) or isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


# 终端里三态结论的标记；未确立 ≠ 不成立：它说的是"这次的测量分辨不出来"
STATUS_MARKS = {HOLDS: "✅ 成立", NOT_ESTABLISHED: "❔ 未确立（差异在噪声以内）", FAILS: "❌ 本次运行不成立"}


class Experiment:
    def __init__(self, script_file: str, description: str, extra_args=None, full_seeds: int = 3):
        self.script = Path(script_file).resolve()
        self.name = self.script.stem
        parser = argparse.ArgumentParser(
            prog=self.script.name, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        parser.add_argument("--quick", action="store_true", help="快速模式：缩小规模，2 核 CPU 上 1 分钟内跑完")
        parser.add_argument("--device", choices=DEVICE_CHOICES, default="auto", help="计算设备（默认 auto：cuda > mps > cpu）")
        parser.add_argument("--seed", type=int, default=42, help="随机种子（默认 42）")
        parser.add_argument("--output-dir", type=Path, default=None, help="结果目录（默认：脚本旁边的 results/）")
        if extra_args is not None:
            extra_args(parser)
        self.args = parser.parse_args()
        self.quick: bool = self.args.quick
        self.seed: int = self.args.seed
        # 完整模式把每个配置用 full_seeds 个种子（默认 3 个：--seed 起连续的整数）各跑一遍，报告 mean ± std；
        # quick 模式只用 --seed 一个。多于 3 个种子只在事先按测得的种子间散布算过检验力时用（见 DEVELOPERS.md）
        self.seeds: list[int] = [self.seed] if self.quick else [self.seed + i for i in range(full_seeds)]
        try:
            self.device = get_device(self.args.device)
        except ValueError as e:
            parser.error(str(e))  # 打印用法和错误信息，退出码 2

        self.seed_everything(self.seed)

        self.results_dir = (self.args.output_dir or self.script.parent / "results").expanduser().resolve()
        self.results_dir.mkdir(parents=True, exist_ok=True)
        self._started = datetime.now().astimezone()
        self._t0 = time.perf_counter()
        self._cpu0 = cpu_seconds()
        sys.excepthook = _report_missing_data
        self._figures: list[str] = []
        self._metrics: dict = {}
        self._conclusions: list[dict] = []
        mode = "quick" if self.quick else "full"
        print(f"== {self.name} | mode={mode} | device={describe_device(self.device)} | seed={self.seed} ==", flush=True)

    @staticmethod
    def seed_everything(seed: int) -> None:
        """多种子实验里，每次重复之前调用，让这一次从同一个已知状态开始。"""
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)

    def save_figure(self, fig, name: str) -> Path:
        """存到 results_dir/name（tight bbox，dpi 120），关闭图并记进 metadata["figures"]。"""
        path = self.results_dir / name
        fig.savefig(path, dpi=120, bbox_inches="tight")
        plt.close(fig)
        if name not in self._figures:
            self._figures.append(name)
        print(f"图已保存：{path}")
        return path

    def save_metrics(self, metrics: dict) -> None:
        """合并进记录的 metrics（dict.update 语义）。"""
        self._metrics.update(to_json_safe(metrics))

    def print_table(self, headers: list[str], rows: list[list], title: str | None = None) -> None:
        """打印对齐的纯文本表格（中文按 2 列宽计算）；给了 title 就同时存进 metrics["tables"][title]。"""
        for row in rows:
            if len(row) != len(headers):
                raise ValueError(f"表格行 {row!r} 有 {len(row)} 列，表头有 {len(headers)} 列")
        cells = [[str(h) for h in headers]] + [[_format_cell(v) for v in row] for row in rows]
        widths = [max(_display_width(row[i]) for row in cells) for i in range(len(headers))]

        def line(row):
            return "  ".join(c + " " * (w - _display_width(c)) for c, w in zip(row, widths)).rstrip()

        if title:
            print(f"\n{title}")
        print(line(cells[0]))
        print("  ".join("-" * w for w in widths))
        for row in cells[1:]:
            print(line(row))
        if title:
            tables = self._metrics.setdefault("tables", {})
            tables[title] = {"headers": to_json_safe(list(headers)), "rows": to_json_safe([list(r) for r in rows])}

    def conclude(self, claim: str, holds, evidence: str) -> None:
        """记录一条确定性结论。holds 必须是由测量算出的布尔值（bool / numpy.bool_ / 单元素布尔张量）。

        比较两组有噪声的测量（不同配置的 loss、速度……）用 conclude_verdict。"""
        if isinstance(holds, torch.Tensor) and holds.dtype == torch.bool and holds.numel() == 1:
            holds = holds.item()
        if isinstance(holds, np.bool_):
            holds = bool(holds)
        if not isinstance(holds, bool):
            raise TypeError(f"holds 必须是由测量算出的布尔值，收到 {type(holds).__name__}：{holds!r}")
        self._conclusions.append({"claim": claim, "holds": holds, "status": HOLDS if holds else FAILS,
                                  "evidence": evidence})

    def conclude_verdict(self, claim: str, verdict: Verdict, evidence: str, quick_reason: str | None = None) -> None:
        """记录一条经噪声检验（modules/common/noise.py）的比较结论：三态 status 与噪声细节都写进 JSON。

        quick_reason：quick 模式判定不了这条时写明原因（通常是：单种子的评估噪声量不到换种子重新训练的噪声，
        实测 quick 的判定随种子翻转）。quick 模式下它不进结论，只打印测得的值与原因，并记进
        metrics["quick_undecided"]；完整模式照常判定。"""
        if not isinstance(verdict, Verdict):
            raise TypeError(f"verdict 必须是 noise.compare/equivalent/exceeds 的返回值，收到 {type(verdict).__name__}")
        if self.quick and quick_reason:
            measured = f"{evidence}；{verdict.describe()}"
            print(f"quick 模式不判定\"{claim}\"：{measured}。原因：{quick_reason}；判定见完整模式的参考结果")
            self._metrics.setdefault("quick_undecided", []).append(
                {"claim": claim, "evidence": measured, "reason": quick_reason})
            return
        self._conclusions.append({"claim": claim, "holds": verdict.holds, "status": verdict.status,
                                  "evidence": f"{evidence}；{verdict.describe()}", "noise": verdict.to_dict()})

    def finish(self) -> Path:
        """原子写入 results/<脚本名>.json，打印摘要和每条结论，返回 JSON 路径。"""
        record = {
            "metadata": {
                "experiment": self.name,
                "mode": "quick" if self.quick else "full",
                "seed": self.seed,
                "seeds": list(self.seeds),
                "device": str(self.device),
                "torch": torch.__version__,
                "python": platform.python_version(),
                "started": self._started.isoformat(timespec="seconds"),
                "duration_s": round(time.perf_counter() - self._t0, 3),
                "cpu_s": round(cpu_seconds() - self._cpu0, 3),
                "threads": torch.get_num_threads(),
                # 参考结果换一种 CPU 重跑，小数点后 2～3 位会漂移（见 model/device.py 的 cpu_model）
                "cpu_model": cpu_model(),
                # 结束时的 1 分钟平均负载（Windows 没有 → None）：远大于线程数时墙钟被别的任务拖慢了
                "load_avg_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
                "argv": list(sys.argv),
                "figures": list(self._figures),
            },
            "metrics": self._metrics,
            "conclusions": self._conclusions,
        }
        path = self.results_dir / f"{self.name}.json"
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(record, f, ensure_ascii=False, indent=2)
        os.replace(tmp, path)

        meta = record["metadata"]
        print(f"\n== {self.name} 完成，用时 {meta['duration_s']:.1f} s（CPU {meta['cpu_s']:.1f} s，{meta['threads']} 个线程）==")
        for c in self._conclusions:
            mark = STATUS_MARKS[c["status"]]
            print(f"{mark}：{c['claim']}\n    证据：{c['evidence']}")
        if not self._conclusions:
            print("（本实验没有记录结论）")
        print(f"结果记录：{path}")
        return path
