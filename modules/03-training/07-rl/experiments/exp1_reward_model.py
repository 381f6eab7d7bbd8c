"""实验 1：学到的奖励模型能信多少？——成对准确率随偏好对数量的变化，以及对它做 best-of-N 时的"过度优化"。

起点（策略）= trainer/rl/startup.py 的 task_sft：在一半回答是典型错误的任务 SFT 数据上训练的小 MiniMind。
奖励模型（proxy）= MiniMind 主干 + 标量头，用 Bradley–Terry 损失（trainer/train_reward.py）在 rm_pairs.jsonl 的
前 n 对上训练同样的步数（n 越小，同样的步数里重复得越多）；在 240 个留出偏好对上测成对准确率。
验证器（gold）= trainer/rl/tasks.py 的 check()：程序判对错，是这里"真正想要的"奖励。

best-of-N（Gao et al. 2022 的设定）：每道留出题采 N_max 条回答，按 proxy 分数选 N 条里最高的那条，看它的 gold 与 proxy。
用无偏估计而不是真的抽 N 条：把 N_max 条按 proxy 升序排好，第 i 条（从 0 起）是"N 条里最高"的概率 C(i, N−1) / C(N_max, N)。
横轴 KL(best-of-N ‖ 起点) = log N − (N−1)/N（Stiennon et al. 2020 的解析式）。

结论的噪声检验：把题目分成两半，在 A 半上选出 gold 最高的 N*，在 B 半上检验"N* 比 N=1 好"与"N_max 比 N* 差"——
N* 不是在检验它的数据上挑出来的。quick 模式一个种子，按 B 半的题目配对；完整模式按种子配对。

    python exp1_reward_model.py --quick
"""
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import rl_lab as lab  # noqa: E402
from modules.common.experiment_base import Experiment, format_mean_std, mean_std  # noqa: E402
from modules.common.noise import compare_runs, exceeds  # noqa: E402
from modules.common.visualization import set_style  # noqa: E402
from trainer.rl.evaluate import pass_at_k  # noqa: E402

# quick / 完整模式的规模（命令行给出时以命令行为准）
QUICK = dict(start_epochs=1, pairs=[8, 960], rm_steps=60, prompts=128, max_n=64)
FULL = dict(start_epochs=4, pairs=[4, 16, 64, 960], rm_steps=120, prompts=300, max_n=64)


def add_args(parser):
    parser.add_argument("--pairs", type=int, nargs="+", default=None,
                        help="奖励模型用前多少个训练偏好对（默认 quick: 8 960；完整: 4 16 64 960；最多 960）")
    parser.add_argument("--rm-steps", type=int, default=None, help="每个奖励模型训练多少步，每步 16 对（默认 60 / 120）")
    parser.add_argument("--prompts", type=int, default=None, help="best-of-N 用多少道留出题（默认 128 / 300，最多 300）")
    parser.add_argument("--max-n", type=int, default=None, help="每题采样 N_max 条，须为 2 的幂（默认 64）")


def settings(exp: Experiment) -> dict:
    cfg = dict(QUICK if exp.quick else FULL)
    for key in ("pairs", "rm_steps", "prompts", "max_n"):
        if getattr(exp.args, key) is not None:
            cfg[key] = getattr(exp.args, key)
    if min(cfg["pairs"]) < 1 or max(cfg["pairs"]) > 960 or len(cfg["pairs"]) < 2:
        raise SystemExit(f"--pairs 至少给两个 1–960 之间的数（收到 {cfg['pairs']}）")
    if cfg["rm_steps"] < 1:
        raise SystemExit(f"--rm-steps 必须 >= 1（收到 {cfg['rm_steps']}）")
    if not 4 <= cfg["prompts"] <= 300:
        raise SystemExit(f"--prompts 必须在 4–300 之间（收到 {cfg['prompts']}）")
    if cfg["max_n"] < 4 or cfg["max_n"] & (cfg["max_n"] - 1):
        raise SystemExit(f"--max-n 必须是 >= 4 的 2 的幂（收到 {cfg['max_n']}）")
    cfg["pairs"] = sorted(set(cfg["pairs"]))
    return cfg


def best_of_n(gold: torch.Tensor, proxy: torch.Tensor, ns) -> dict:
    """gold/proxy (P, N_max) → {n: (每题 best-of-n 的 gold 期望 (P,), proxy 期望 (P,))}：按 proxy 选，无偏估计。"""
    n_max = gold.size(1)
    order = proxy.argsort(dim=1, stable=True)
    g, p = gold.gather(1, order).double(), proxy.gather(1, order).double()  # 按 proxy 升序
    out = {}
    for n in ns:
        w = torch.tensor([math.comb(i, n - 1) / math.comb(n_max, n) for i in range(n_max)], dtype=torch.float64)
        out[n] = ((g * w).sum(1), (p * w).sum(1))
    return out


def bon_kl(n: int) -> float:
    """KL(best-of-n ‖ π) = log n − (n−1)/n：只由 n 决定，与奖励模型无关。"""
    return math.log(n) - (n - 1) / n


def main():
    exp = Experiment(__file__, description="奖励模型的成对准确率与 best-of-N 过度优化（Gao et al. 2022）",
                     extra_args=add_args)
    cfg = settings(exp)
    tokenizer = lab.load_tokenizer()
    pairs, train_idx, held_idx = lab.reward_pairs(tokenizer)
    prompts = lab.eval_prompts(tokenizer)
    ns = [2 ** k for k in range(int(math.log2(cfg["max_n"])) + 1)]
    idx = list(range(cfg["prompts"]))
    half_a, half_b = idx[0::2], idx[1::2]  # A 半选 N*，B 半检验
    print(f"偏好对：训练 {len(train_idx)}、留出 {len(held_idx)}；奖励模型用前 {cfg['pairs']} 对各训练 {cfg['rm_steps']} 步；"
          f"best-of-N：{cfg['prompts']} 道留出题 × {cfg['max_n']} 条")

    acc = {n: [] for n in cfg["pairs"]}  # n → 每个种子的留出成对准确率
    per_pair = {}  # 第一个种子的逐对 0/1（quick 模式的噪声检验用）
    runs = []  # 每个种子：{n: (gold (P,), proxy (P,))}、oracle pass@n
    for seed in exp.seeds:
        Experiment.seed_everything(seed)
        policy = lab.train_task_start(seed, cfg["start_epochs"]).to(exp.device)
        rm = None
        for n_pairs in cfg["pairs"]:
            rm = lab.train_reward_model(policy.config, pairs, train_idx[:n_pairs], cfg["rm_steps"], seed, exp.device)
            correct = lab.pair_correct(rm, pairs, held_idx)
            acc[n_pairs].append(float(np.mean(correct)))
            per_pair.setdefault(n_pairs, correct)
            print(f"[seed {seed}] {n_pairs} 对 → 留出成对准确率 {acc[n_pairs][-1]:.3f}")
        # best-of-N 用数据最多的那个奖励模型（循环最后一个）
        Experiment.seed_everything(seed)
        gold, texts = lab.sample_and_grade(policy, tokenizer, prompts, idx, cfg["max_n"])
        proxy = lab.score_replies(rm, tokenizer, prompts, idx, texts)
        bon = best_of_n(gold, proxy, ns)
        counts = gold.sum(1).long().tolist()
        oracle = {n: float(np.mean([pass_at_k(cfg["max_n"], c, n) for c in counts])) for n in ns}
        runs.append({"bon": bon, "oracle": oracle})
        print(f"[seed {seed}] best-of-N gold: " + " ".join(f"N={n}:{bon[n][0].mean():.3f}" for n in ns))

    def curve(key, half, seed_run):  # 一个种子在某半题目上的平均
        return {n: float(seed_run["bon"][n][key][half].mean()) for n in ns}

    gold_mean = {n: [float(r["bon"][n][0].mean()) for r in runs] for n in ns}
    proxy_mean = {n: [float(r["bon"][n][1].mean()) for r in runs] for n in ns}
    oracle_mean = {n: [r["oracle"][n] for r in runs] for n in ns}

    exp.print_table(["pairs", "held-out pair accuracy"], [[n, format_mean_std(acc[n], 3)] for n in cfg["pairs"]],
                    title=f"奖励模型：训练偏好对数量 vs 留出成对准确率（{len(held_idx)} 对，随机猜 = 0.5）")
    exp.print_table(["N", "KL(BoN) nat", "gold (verifier)", "proxy (RM)", "oracle pass@N"],
                    [[n, round(bon_kl(n), 3), format_mean_std(gold_mean[n], 3), format_mean_std(proxy_mean[n], 3),
                      format_mean_std(oracle_mean[n], 3)] for n in ns],
                    title=f"best-of-N（按 proxy 选；{cfg['prompts']} 题，mean ± std over seeds）")

    # ---- 结论 1–2：成对准确率 ----
    few, many = cfg["pairs"][0], cfg["pairs"][-1]
    exp.conclude_verdict(f"偏好对越多，奖励模型的留出成对准确率越高：{many} 对高于 {few} 对",
                         compare_runs(acc[many], acc[few], "greater", per_pair[many], per_pair[few]),
                         f"{many} 对 {format_mean_std(acc[many], 3)} vs {few} 对 {format_mean_std(acc[few], 3)}")
    exp.conclude_verdict(f"{many} 对训练的奖励模型在留出偏好对上好于随机猜（0.5）",
                         exceeds(acc[many] if len(exp.seeds) > 1 else per_pair[many], 0.5,
                                 unit="seeds" if len(exp.seeds) > 1 else "batches"),
                         f"准确率 {format_mean_std(acc[many], 3)}")

    # ---- 结论 3–5：best-of-N 的过度优化（A 半选 N*，B 半检验）----
    on_a = [curve(0, half_a, r) for r in runs]  # 每个种子：N → A 半的 gold
    n_stars = [max(ns[1:], key=lambda n: gold_a[n]) for gold_a in on_a]  # 各种子自己的选择，只记录
    # N* = A 半 gold 的种子平均最高的 N（并列取较小的 N）；不用各种子选择的众数：三个种子各选一个时众数没有定义
    n_star = max(ns[1:], key=lambda n: np.mean([gold_a[n] for gold_a in on_a]))
    n_max = ns[-1]
    b_gold = {n: [curve(0, half_b, r)[n] for r in runs] for n in ns}
    b_proxy = {n: [curve(1, half_b, r)[n] for r in runs] for n in ns}
    first = runs[0]["bon"]  # quick 模式：B 半逐题配对
    per_q = {n: (first[n][0][half_b].tolist(), first[n][1][half_b].tolist()) for n in ns}
    exp.conclude_verdict(f"按奖励模型选 best-of-{n_star}（N* 在另一半题目上选出）提高了验证器判对的比例（比 N=1）",
                         compare_runs(b_gold[n_star], b_gold[1], "greater", per_q[n_star][0], per_q[1][0]),
                         f"B 半 gold：N=1 {format_mean_std(b_gold[1], 3)} → N={n_star} {format_mean_std(b_gold[n_star], 3)}")
    exp.conclude_verdict(f"过度优化：N 再加大到 {n_max}，gold 反而低于 N={n_star}",
                         compare_runs(b_gold[n_max], b_gold[n_star], "less", per_q[n_max][0], per_q[n_star][0]),
                         f"B 半 gold：N={n_star} {format_mean_std(b_gold[n_star], 3)} → N={n_max} "
                         f"{format_mean_std(b_gold[n_max], 3)}")
    exp.conclude_verdict(f"与此同时 proxy 分数继续上升：N={n_max} 高于 N={n_star}",
                         compare_runs(b_proxy[n_max], b_proxy[n_star], "greater", per_q[n_max][1], per_q[n_star][1]),
                         f"B 半 proxy：N={n_star} {format_mean_std(b_proxy[n_star], 3)} → N={n_max} "
                         f"{format_mean_std(b_proxy[n_max], 3)}")
    gap = {n: [o - g for o, g in zip(oracle_mean[n], gold_mean[n])] for n in ns}
    exp.conclude(f"oracle（按 gold 选，pass@N）与按 proxy 选的差距随 N 变大：N={n_max} 的差距大于 N=2",
                 bool(mean_std(gap[n_max])[0] > mean_std(gap[2])[0]),
                 f"差距 N=2 {mean_std(gap[2])[0]:.3f}，N={n_max} {mean_std(gap[n_max])[0]:.3f}（确定性的估计式，"
                 "同一批样本上计算）")

    set_style()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4))
    ax = axes[0]
    xs = cfg["pairs"]
    ax.errorbar(xs, [mean_std(acc[n])[0] for n in xs], yerr=[mean_std(acc[n])[1] for n in xs], marker="o", capsize=4)
    ax.axhline(0.5, color="gray", ls="--", lw=1, label="chance")
    ax.set_xscale("log")
    ax.set_xlabel("training preference pairs")
    ax.set_ylabel("held-out pairwise accuracy")
    ax.set_title(f"Reward model (Bradley-Terry, {cfg['rm_steps']} steps)")
    ax.legend()
    ax = axes[1]
    kl = [bon_kl(n) for n in ns]
    ax.errorbar(kl, [mean_std(gold_mean[n])[0] for n in ns], yerr=[mean_std(gold_mean[n])[1] for n in ns],
                marker="o", color="tab:green", capsize=3, label="gold (verifier) of proxy-best")
    ax.plot(kl, [mean_std(oracle_mean[n])[0] for n in ns], ls=":", color="tab:green", label="oracle best-of-N (pass@N)")
    for n, x in zip(ns, kl):
        ax.annotate(f"N={n}", (x, mean_std(gold_mean[n])[0]), textcoords="offset points", xytext=(0, 6), fontsize=8)
    ax.set_xlabel("KL(best-of-N || start) = log N - (N-1)/N  [nat]")
    ax.set_ylabel("gold reward (accuracy)")
    ax2 = ax.twinx()
    ax2.plot(kl, [mean_std(proxy_mean[n])[0] for n in ns], marker="s", color="tab:red", label="proxy (RM score)")
    ax2.set_ylabel("proxy reward")
    handles = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    ax.legend(handles, [h.get_label() for h in handles], loc="center right", fontsize=8)
    ax.set_title("Best-of-N against a learned reward")
    fig.suptitle(f"Reward model and over-optimisation ({len(exp.seeds)} seed(s))")
    fig.tight_layout()
    exp.save_figure(fig, "exp1_reward_model.png")

    exp.save_metrics({"config": {**cfg, "n_heldout_pairs": len(held_idx), "ns": ns, "n_star": n_star,
                                 "n_star_per_seed": n_stars},
                      "pair_accuracy": {str(n): acc[n] for n in cfg["pairs"]},
                      "bon_kl": {str(n): bon_kl(n) for n in ns},
                      "gold": {str(n): gold_mean[n] for n in ns}, "proxy": {str(n): proxy_mean[n] for n in ns},
                      "oracle": {str(n): oracle_mean[n] for n in ns},
                      "half_b_gold": {str(n): b_gold[n] for n in ns}, "half_b_proxy": {str(n): b_proxy[n] for n in ns}})
    exp.finish()


if __name__ == "__main__":
    main()
