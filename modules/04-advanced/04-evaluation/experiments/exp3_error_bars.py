"""实验 3：准确率的误差棒——标准误、bootstrap 区间、要多少道题才分得出相差 2 个百分点的两个模型、配对与不配对。

这是一个抽样实验：真实答案（总体准确率）已知，才能检验误差棒说得对不对。
"题库"是 UNIVERSE 道题，模型 A 在题库上恰好答对 60%，模型 B 恰好 62%；两个模型在同一道题上的对错相关
（题有难易：难题两个模型都容易错），相关强度 --corr。一次"评测"= 从题库里独立地抽 n 道题（有放回，
等于从无穷多道题的总体里抽样，这正是 SE 公式的前提）。
  标准误 SE = sqrt(p(1−p)/(n−1))（multiple_choice.accuracy_and_stderr，与 lm-eval 的 acc_stderr 相同）
  bootstrap：把这 n 道题有放回地重抽 B 次，取准确率的 2.5% / 97.5% 分位数（Efron 1979）
  配对比较：逐题差值 d_i = B_i − A_i，就是 modules/common/noise.py 的 compare(…, unit="batches")（|mean d| > 2·SE(d)）
  不配对：两个模型各在一份独立抽出的 n 道题上评测（比如从两篇论文里抄来的分数），
          两边各自的 SE 合起来 sqrt(SE_A² + SE_B²)，同样要求差 > 2 倍
Miller 2024（"Adding error bars to evals"）建议报告 SE、做配对比较、事先按功效算题量——本实验把这几条量出来。
"""
import math
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[4]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402

from modules.common.experiment_base import Experiment, format_mean_std  # noqa: E402
from modules.common.noise import compare, compare_runs, exceeds, noise_multiplier  # noqa: E402
from modules.common.visualization import plt, set_style  # noqa: E402
from trainer.evaluation.multiple_choice import accuracy_and_stderr  # noqa: E402

UNIVERSE = 20000
ACC_A, ACC_B = 0.60, 0.62
SHIPPED_ITEMS = 142  # dataset/samples/eval_mc_zh.jsonl、eval_mc_en.jsonl 各 142 题
Z_POWER_80 = 0.8416  # 标准正态的 80% 分位数：功效 80%
K = noise_multiplier(100)  # 题多时 noise.py 的判定倍数（2）
BOOTSTRAP_MAX_N = 400


def make_universe(rng, corr: float):
    """题库里每道题 A、B 各自的对错（0/1）。对错由"题的难度 + 各自的随机性"决定，A、B 共享难度 → 相关。
    阈值取分位数，使题库上的准确率恰好是 ACC_A、ACC_B。"""
    difficulty = rng.random(UNIVERSE)
    score_a = corr * difficulty + (1 - corr) * rng.random(UNIVERSE)
    score_b = corr * difficulty + (1 - corr) * rng.random(UNIVERSE)
    a = (score_a < np.quantile(score_a, ACC_A)).astype(np.int8)
    b = (score_b < np.quantile(score_b, ACC_B)).astype(np.int8)
    return a, b


def draw(rng, n: int, repeats: int) -> np.ndarray:
    """repeats 次"评测"，每次从题库独立地抽 n 道题：(repeats, n) 的题号。"""
    return rng.integers(0, UNIVERSE, size=(repeats, n))


def bootstrap_ci(correct: np.ndarray, rng, iters: int = 1000, level: float = 0.95) -> tuple[float, float]:
    """有放回地重抽 iters 次，准确率的 (1−level)/2 与 (1+level)/2 分位数。"""
    idx = rng.integers(0, len(correct), size=(iters, len(correct)))
    accs = correct[idx].mean(1)
    return float(np.quantile(accs, (1 - level) / 2)), float(np.quantile(accs, (1 + level) / 2))


def items_needed(var_one_item: float, delta: float) -> int:
    """差 delta 要以 K·SE 判出、功效 80% 时的题数：n = (K + z_0.8)² · var / delta²。"""
    return math.ceil((K + Z_POWER_80) ** 2 * var_one_item / delta ** 2)


def unpaired_says_better(b: np.ndarray, a: np.ndarray) -> bool:
    """不配对：把两边当成两次独立评测，差值要超过 K·sqrt(SE_A² + SE_B²)。"""
    sa, sb = accuracy_and_stderr(a.tolist())["acc_stderr"], accuracy_and_stderr(b.tolist())["acc_stderr"]
    return bool(b.mean() - a.mean() > K * math.sqrt(sa ** 2 + sb ** 2))


def paired_says_better(b: np.ndarray, a: np.ndarray) -> bool:
    """配对：逐题差值交给共享的噪声检验（unit="batches" 的判定就是 |mean d| > K·SE(d)）。"""
    return compare(b.tolist(), a.tolist(), "greater", unit="batches").holds


def main():
    def extra_args(parser):
        parser.add_argument("--corr", type=float, default=0.8, help="两个模型对错的相关强度（0–1，默认 0.8）")
        parser.add_argument("--repeats", type=int, default=None, help="每个题量重复评测的次数（默认 quick 400，完整 1000）")

    exp = Experiment(__file__, description=(
        "评测实验 3：准确率的标准误与 bootstrap 区间对不对？要多少题才分得出差 2 个百分点的两个模型？配对比较省多少题？"),
        extra_args=extra_args)
    if not 0 <= exp.args.corr < 1:
        raise SystemExit(f"错误：--corr 应在 [0, 1) 内，收到 {exp.args.corr}")
    repeats = exp.args.repeats or (400 if exp.quick else 1000)
    sizes = [50, 142, 400, 1000, 2000] if exp.quick else [50, 100, 142, 200, 400, 1000, 2000, 4000]
    delta = ACC_B - ACC_A

    runs = []
    for seed in exp.seeds:
        rng = np.random.default_rng(seed)
        a, b = make_universe(rng, exp.args.corr)
        d = b.astype(float) - a
        var = {"unpaired": ACC_A * (1 - ACC_A) + ACC_B * (1 - ACC_B), "paired": float(d.var())}
        need = {k: items_needed(v, delta) for k, v in var.items()}
        run = {"corr_items": float(np.corrcoef(a, b)[0, 1]), "var_per_item": var, "items_needed": need, "by_n": {}}
        for n in sizes + sorted(set(need.values())):
            idx, other = draw(rng, n, repeats), draw(rng, n, repeats)  # other：不配对时 B 用的另一份题
            acc_a = a[idx].mean(1)
            se_a = np.sqrt(acc_a * (1 - acc_a) / (n - 1))
            entry = {"sd_of_acc": float(acc_a.std(ddof=1)), "mean_se": float(se_a.mean()),
                     "normal_cover": float(np.mean(np.abs(acc_a - ACC_A) <= 1.96 * se_a)),
                     "paired_power": [int(paired_says_better(b[i], a[i])) for i in idx],
                     "unpaired_power": [int(unpaired_says_better(b[j], a[i])) for i, j in zip(idx, other)]}
            if n <= BOOTSTRAP_MAX_N:  # bootstrap 只在较小的题量上做（每次评测重抽 1000 次）
                cis = [bootstrap_ci(a[i].astype(float), rng) for i in idx]
                entry["bootstrap_cover"] = [int(lo <= ACC_A <= hi) for lo, hi in cis]
                entry["bootstrap_width"] = float(np.mean([hi - lo for lo, hi in cis]))
            run["by_n"][n] = entry
        runs.append(run)
        print(f"种子 {seed}：逐题相关 {run['corr_items']:.2f}，功效 80% 所需题数 不配对 {need['unpaired']}、配对 {need['paired']}")

    def stat(n, key):
        return [float(np.mean(r["by_n"][n][key])) for r in runs]

    rows = []
    for n in sizes:
        boot = format_mean_std(stat(n, "bootstrap_cover"), 3) if "bootstrap_cover" in runs[0]["by_n"][n] else "-"
        rows.append([n, format_mean_std(stat(n, "sd_of_acc"), 3), format_mean_std(stat(n, "mean_se"), 3),
                     format_mean_std(stat(n, "normal_cover"), 3), boot,
                     format_mean_std(stat(n, "paired_power"), 3), format_mean_std(stat(n, "unpaired_power"), 3)])
    exp.print_table(["items n", "real SD of acc", "mean SE formula", "±1.96SE covers", "bootstrap covers",
                     "paired: B>A found", "unpaired (separate items): B>A found"], rows,
                    title=f"Model A {ACC_A:.0%} vs B {ACC_B:.0%} ({repeats} evals per n)")
    need = {k: [r["items_needed"][k] for r in runs] for k in ("unpaired", "paired")}
    exp.print_table(["comparison", "items for 80% power (formula)", "simulated power there"], [
        [k, format_mean_std(need[k], 4),
         format_mean_std([float(np.mean(r["by_n"][r["items_needed"][k]][f"{k}_power"])) for r in runs], 3)]
        for k in ("unpaired", "paired")], title=f"How many items to tell {delta:.0%} apart?")
    se_shipped = accuracy_and_stderr([1] * 36 + [0] * (SHIPPED_ITEMS - 36))["acc_stderr"]  # 准确率 ≈ 1/4 时
    mdd = (K + Z_POWER_80) * math.sqrt(2 * 0.25 * 0.75 / SHIPPED_ITEMS)
    print(f"\n仓库自带的 {SHIPPED_ITEMS} 题选择题：准确率 ≈ 0.25 时 SE = {se_shipped:.3f}；"
          f"不配对、功效 80% 时能分出的最小差距 ≈ {mdd:.3f}")

    set_style()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    axes[0].plot(sizes, [np.mean(stat(n, "sd_of_acc")) for n in sizes], "o-", label="real SD over re-drawn benchmarks")
    axes[0].plot(sizes, [np.mean(stat(n, "mean_se")) for n in sizes], "x--", label="SE formula sqrt(p(1-p)/(n-1))")
    axes[0].axhline(delta, color="gray", linestyle=":", label=f"the gap to detect ({delta:.0%})")
    axes[0].set(xscale="log", yscale="log", xlabel="number of items n", ylabel="standard error of accuracy",
                title="Error bars shrink like 1/sqrt(n)")
    axes[0].legend(fontsize=8)
    all_n = sorted(set.intersection(*(set(r["by_n"]) for r in runs)))  # 所需题数每个种子略有不同，只画共同的题量
    for k, style in (("paired", "o-"), ("unpaired", "s--")):
        axes[1].plot(all_n, [np.mean(stat(n, f"{k}_power")) for n in all_n], style, label=f"{k} comparison")
    axes[1].axhline(0.8, color="gray", linestyle=":", label="80% power")
    axes[1].set(xscale="log", xlabel="number of items n", ylabel="share of evals that find B > A", ylim=(0, 1),
                title=f"Telling {ACC_A:.0%} from {ACC_B:.0%} (corr {exp.args.corr:g})")
    axes[1].legend(fontsize=8)
    exp.save_figure(fig, "exp3_error_bars.png")

    exp.save_metrics({
        "config": {"universe": UNIVERSE, "acc_a": ACC_A, "acc_b": ACC_B, "corr": exp.args.corr, "repeats": repeats,
                   "sizes": sizes, "k": K},
        "runs": [{"corr_items": r["corr_items"], "var_per_item": r["var_per_item"], "items_needed": r["items_needed"],
                  "by_n": {str(n): {key: (float(np.mean(v)) if isinstance(v, list) else v) for key, v in e.items()}
                           for n, e in r["by_n"].items()}} for r in runs],
        "shipped_set": {"items": SHIPPED_ITEMS, "se_at_quarter": se_shipped, "min_detectable_gap": mdd},
    })

    ratios = [e["mean_se"] / e["sd_of_acc"] for r in runs for e in r["by_n"].values()]
    exp.conclude("SE 公式 sqrt(p(1−p)/(n−1)) 与重复抽题的实际标准差一致（每个题量相差不到 10%）",
                 holds=all(abs(x - 1) < 0.1 for x in ratios),
                 evidence=f"SE / 实际 SD 在 {min(ratios):.3f}–{max(ratios):.3f} 之间（{len(ratios)} 个题量 × 种子）")
    single = len(runs) == 1
    n_mid = 142
    cover = stat(n_mid, "bootstrap_cover")
    exp.conclude_verdict(
        f"{n_mid} 题时 bootstrap 95% 区间盖住真实准确率的比例超过 90%",
        exceeds(cover, 0.9, unit="seeds") if not single else exceeds(runs[0]["by_n"][n_mid]["bootstrap_cover"], 0.9,
                                                                     unit="batches"),
        evidence=f"覆盖率 {format_mean_std(cover, 3)}；±1.96·SE 的覆盖率 {format_mean_std(stat(n_mid, 'normal_cover'), 3)}；"
                 f"bootstrap 区间平均宽 {np.mean([r['by_n'][n_mid]['bootstrap_width'] for r in runs]):.3f}")
    exp.conclude_verdict(
        f"{SHIPPED_ITEMS} 道题分不出相差 {delta:.0%} 的两个模型：配对检验判出 B 更好的比例不到 20%",
        exceeds(stat(n_mid, "paired_power"), 0.2, "less", unit="seeds") if not single else
        exceeds(runs[0]["by_n"][n_mid]["paired_power"], 0.2, "less", unit="batches"),
        evidence=f"功效 {format_mean_std(stat(n_mid, 'paired_power'), 3)}；准确率 ≈ 0.25 时 SE = {se_shipped:.3f}，"
                 f"80% 功效下能分出的最小差距约 {mdd:.2f}")
    n_paired = runs[0]["items_needed"]["paired"]
    exp.conclude_verdict(
        f"题量相同（配对检验功效 80% 所需的题数）时，配对比较比不配对更常分出 {delta:.0%} 的差距",
        compare_runs([float(np.mean(r["by_n"][r["items_needed"]["paired"]]["paired_power"])) for r in runs],
                     [float(np.mean(r["by_n"][r["items_needed"]["paired"]]["unpaired_power"])) for r in runs], "greater",
                     runs[0]["by_n"][n_paired]["paired_power"] if single else None,
                     runs[0]["by_n"][n_paired]["unpaired_power"] if single else None),
        evidence=f"功效 配对 {format_mean_std([np.mean(r['by_n'][r['items_needed']['paired']]['paired_power']) for r in runs], 3)}"
                 f" vs 不配对 {format_mean_std([np.mean(r['by_n'][r['items_needed']['paired']]['unpaired_power']) for r in runs], 3)}；"
                 f"80% 功效所需题数 配对 {format_mean_std(need['paired'], 4)}、不配对 {format_mean_std(need['unpaired'], 4)}")
    exp.finish()


if __name__ == "__main__":
    main()
