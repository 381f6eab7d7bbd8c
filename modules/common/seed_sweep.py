"""换种子重跑 quick 模式：每条结论在开发用的种子之外是否也成立（维护者工具，issue 19 的验收方法）。

quick 模式只有一个种子，阈值和设置很容易不知不觉地贴合了开发时用的种子 42。这个工具把选中的实验
在几个别的种子上各跑一遍 `--quick --seed S`，按结论逐条列出每个种子上的状态，标出随种子变化的结论：

    python -m modules.common.seed_sweep --seeds 42 1 7                     # 全部实验（CPU 上约 1–2 小时）
    python -m modules.common.seed_sweep --seeds 1 7 --only 03-attention    # 只跑路径里含 03-attention 的实验
    python -m modules.common.seed_sweep --seeds 1 7 --only exp2_lr --report /tmp/sweep.md

每次运行都是独立的子进程（与学习者的用法相同），单线程（OMP_NUM_THREADS=1，可用 --threads 改），
输出写到临时目录；报告（--report，Markdown）和同名 .json 记录每个实验、每个种子的状态与用时。
有结论随种子变化时退出码为 1（--allow-flips 改为 0），实验脚本失败时退出码为 2。
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
SYMBOLS = {"holds": "✅", "not_established": "❔", "fails": "❌", None: "—"}


def find_experiments(only: list[str]) -> list[Path]:
    """modules/<层>/<模块>/experiments/exp*.py，按路径排序；only 非空时只留路径里含其中任一子串的。"""
    scripts = sorted(REPO_ROOT.glob("modules/*/*/experiments/exp*.py"))
    if only:
        scripts = [s for s in scripts if any(o in str(s.relative_to(REPO_ROOT)) for o in only)]
    return scripts


def conclusion_status(conclusion: dict) -> str:
    """三态状态；旧式结论只有 holds 布尔值时，True → holds，False → fails。"""
    if "status" in conclusion:
        return conclusion["status"]
    return "holds" if conclusion.get("holds") else "fails"


def run_quick(script: Path, seed: int, out_dir: Path, threads: int, timeout: float) -> dict:
    """以 --quick --seed 运行一个实验，返回 {"seconds", "returncode", "conclusions": [(claim, status)], "error"}。"""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), MPLBACKEND="Agg")
    start = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, str(script), "--quick", "--seed", str(seed), "--output-dir", str(out_dir)],
                              cwd=out_dir, env=env, capture_output=True, text=True, encoding="utf-8", timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"seconds": time.perf_counter() - start, "returncode": None, "conclusions": [],
                "error": f"超时（{timeout:g} s）"}
    seconds = time.perf_counter() - start
    record_path = out_dir / f"{script.stem}.json"
    if proc.returncode != 0 or not record_path.exists():
        last_line = (proc.stderr.strip().splitlines() or ["（无输出）"])[-1]
        return {"seconds": seconds, "returncode": proc.returncode, "conclusions": [], "error": last_line}
    record = json.loads(record_path.read_text(encoding="utf-8"))
    return {"seconds": seconds, "returncode": 0, "error": None,
            "conclusions": [(c["claim"], conclusion_status(c)) for c in record["conclusions"]]}


def sweep_table(script_name: str, seeds: list[int], runs: dict) -> tuple[list[str], int]:
    """一个实验的 Markdown 表格行（按结论的序号对齐各种子）与随种子变化的结论条数。"""
    rows, flips = [], 0
    n_claims = max((len(runs[s]["conclusions"]) for s in seeds), default=0)
    for i in range(n_claims):
        claims = [runs[s]["conclusions"][i] if i < len(runs[s]["conclusions"]) else (None, None) for s in seeds]
        statuses = [status for _, status in claims]
        claim = next(c for c, _ in claims if c is not None)
        changed = len(set(statuses)) > 1
        flips += changed
        cells = [SYMBOLS.get(status, status) for status in statuses]
        rows.append(f"| {script_name} | {claim[:90]} | " + " | ".join(cells) + f" | {'⚠ 随种子变化' if changed else ''} |")
    return rows, flips


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="换种子重跑各实验的 quick 模式，列出每条结论在每个种子上的状态")
    parser.add_argument("--seeds", type=int, nargs="+", required=True, help="要跑的种子，例如 42 1 7")
    parser.add_argument("--only", nargs="*", default=[], help="只跑路径里含这些子串之一的实验（默认全部）")
    parser.add_argument("--threads", type=int, default=1, help="每个实验进程的线程数（默认 1）")
    parser.add_argument("--timeout", type=float, default=900, help="单次运行的超时秒数（默认 900）")
    parser.add_argument("--report", type=Path, default=None, help="Markdown 报告的路径（另写一份同名 .json）")
    parser.add_argument("--allow-flips", action="store_true", help="有结论随种子变化时也以 0 退出")
    args = parser.parse_args(argv)
    if args.threads < 1 or args.timeout <= 0:
        parser.error("--threads 至少为 1，--timeout 必须为正")
    scripts = find_experiments(args.only)
    if not scripts:
        parser.error(f"没有实验的路径含 {args.only}：实验在 modules/<层>/<模块>/experiments/exp*.py")

    lines = ["| 实验 | 结论 | " + " | ".join(f"种子 {s}" for s in args.seeds) + " | |",
             "|---|---|" + "---|" * len(args.seeds) + "---|"]
    record, total_flips, errors = {}, 0, 0
    with tempfile.TemporaryDirectory(prefix="seed_sweep_") as tmp:
        for script in scripts:
            name = str(script.relative_to(REPO_ROOT / "modules"))
            runs = {}
            for seed in args.seeds:
                out_dir = Path(tmp) / script.stem / str(seed)
                out_dir.mkdir(parents=True)
                runs[seed] = run_quick(script, seed, out_dir, args.threads, args.timeout)
                status = runs[seed]["error"] or " ".join(SYMBOLS.get(s, s) for _, s in runs[seed]["conclusions"])
                print(f"{name} seed={seed}: {runs[seed]['seconds']:.0f} s  {status}", flush=True)
                errors += runs[seed]["error"] is not None
            rows, flips = sweep_table(name, args.seeds, runs)
            lines += rows
            total_flips += flips
            record[name] = {str(s): r for s, r in runs.items()}
    summary = (f"{len(scripts)} 个实验 × 种子 {args.seeds}：{total_flips} 条结论随种子变化，"
               f"{errors} 次运行失败")
    print("\n" + "\n".join(lines) + "\n\n" + summary)
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text("\n".join(lines) + "\n\n" + summary + "\n", encoding="utf-8")
        args.report.with_suffix(".json").write_text(
            json.dumps({"seeds": args.seeds, "experiments": record}, ensure_ascii=False, indent=2), encoding="utf-8")
    if errors:
        return 2
    return 0 if total_flips == 0 or args.allow_flips else 1


if __name__ == "__main__":
    sys.exit(main())
