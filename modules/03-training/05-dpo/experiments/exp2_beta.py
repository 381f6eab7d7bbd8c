"""实验 2：β 控制什么？——同样的数据、同样的步数，β 从 0.01 到 2，奖励差与到参考模型的 KL 的取舍。

DPO 的损失 −log σ(β·Δ)，Δ = (log π(y_c) − log π_ref(y_c)) − (log π(y_r) − log π_ref(y_r))。
β 小：σ 一直停在 0.5 附近、损失不饱和，策略会把 Δ 推得很大，离参考模型也越远；
β 大：β·Δ 很快变大、σ(−β·Δ) → 0，梯度自己消失，策略停在参考模型附近。
本实验对每个 β 从同一个参考模型出发做同样步数的 DPO，在留出的偏好对上测 Δ（与 β 无关的对数概率差变化）、
奖励差 β·Δ、偏好准确率和 KL(π ‖ π_ref)，并在训练对上测训练结束时的梯度权重 σ(−β·Δ)。
用 AdamW 时，梯度里的常数因子 β 被 Adam 的归一化抵消，β 只通过 σ(−β·Δ) 起作用：β·Δ 还小时（β ≤ 0.1、40 步）
σ 离 0.5 不远，两个 β 的更新相近——这一档作为"对照："单列，逐档下降的结论看 β 真正改变梯度权重的几档。
比较结论都过噪声检验（modules/common/noise.py）：完整模式按种子配对，quick 模式各 β 在同一组留出对上逐对配对；
KL 在对数尺度上比较（各种子的 KL 差的是倍数）。
复制训练（modules/common/replicates.py）：同一个参考模型上只换 DPO 的批次顺序，log KL(β=0.1) − log KL(β=0.5)
在单次训练之间的标准差（种子 42–44 上合并约 0.16）和种子之间的（约 0.21）差不多大——是训练噪声。
所以完整模式里每个种子的每个 β 训练 --replicates 次（默认 5 次，quick 1 次），各项指标取平均后再按种子配对。
quick 只有一个种子、只训练一次，逐对检验量不到这份训练噪声，所以 quick 只判定两端（β=0.01 vs 2）的 KL，其余只打印测得的值、
指向完整模式的参考结果。依据是完整参考结果里每个种子 5 次训练的单次标准差（合并，对数尺度）：两端的 KL 差 +0.98 是单次标准差
0.28 的 3.4 倍，一次训练的符号可靠；相邻各档 +0.35（0.1 → 0.5，单次标准差 0.14）、+0.55（0.5 → 2，0.23）只有 2.4–2.5 倍，
对照档 +0.08（0.055）只有 1.5 倍，而 quick 的逐对 SE 只有 0.02–0.11。2026-12-05 的 quick 种子 42/1/7/5/2/3 上，
0.1 → 0.5 这一档是 +0.53/+0.50/+0.60/+0.24/+0.15/+0.03（种子 3 未确立），对照档在种子 3 上是 −0.11（逐对判为不成立）；
同一个种子 3 的参考模型上换 5 次批次顺序，0.1 → 0.5 在 +0.01～+0.20 之间、平均 +0.11，对照档在 −0.11～+0.06 之间——
单次训练的判定随批次顺序翻转。Δ 与偏好准确率的 quick 判定受 60 个留出对的评估噪声限制：Δ 的逐对 SE 0.66–1.23
（效应 +1.35～+4.43），准确率的 SE ≈ 0.06（高于 0.5 的量 +0.05～+0.23），种子之间判定不一，所以 quick 也只打印它们。
（这是看过 quick 判定之后的设计改动，完整模式的结果不变。）
完整模式的"β=… 在留出对上的偏好准确率高于 0.5"：每个种子都在同一组固定的 60 个留出对上评估，按种子配对的 SE
（0.005–0.010）只量到训练噪声，量不到"抽到的是哪 60 对"的噪声（准确率 ≈ 0.6 时二项 SE ≈ 0.06）——审阅时发现只训练 2 步的
冒烟运行也打印 ✅。结论说的是留出对的总体，所以这几条取两次检验中较弱的判定：按种子配对，和逐对（每一对在 3 个种子 × 5 次
训练上被判对的比例，对 0.5 检验，n = 60）。数据集只有 260 对（200 训练、60 留出），没有更多留出对可以廉价地加大评估集。
（这是看过完整模式判定之后的改动，只会让判定更严。2026-12-05 改动后：种子 42–44、1–3 和没见过的 4–6 上四个 β 逐对都成立，
高于 0.5 的量 +0.106～+0.172，逐对 SE 0.043–0.048；见参考结果与 README 的种子表。）

    python exp2_beta.py --quick
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import dpo_lab as lab  # noqa: E402
from modules.common.experiment_base import Experiment, format_mean_std, mean_std  # noqa: E402
from modules.common.noise import compare_runs, exceeds, weakest  # noqa: E402
from modules.common.replicates import add_replicates_argument, replicate_seed, resolve_replicates  # noqa: E402
from modules.common.visualization import set_style  # noqa: E402

BETAS = [0.01, 0.1, 0.5, 2.0]
SMALL_BETA = 0.1  # β ≤ 它时 40 步内 β·Δ 还小、σ(−β·Δ) 离 0.5 不远：两档之间的 KL 比较是对照
N_TRAIN_EVAL = 60  # 测梯度权重用的训练对（固定的前 60 对，同实验 1 的监控对）
# 完整模式每个种子每个 β 训练几次：按 CPU 预算定（每次 4 个 β 约 10 s CPU，5 次让完整模式单独运行约 3 min），
# 在看任何判定之前定下
QUICK_REPLICATES, FULL_REPLICATES = 1, 5
# quick 不判定的结论及原因（数字的来历见文件开头），交给 exp.conclude_verdict 的 quick_reason
QUICK_TRAINING_NOISE = ("相邻两档的 KL 差只有单次训练标准差的 1.5–2.5 倍（完整参考结果每个种子 5 次训练：对照档 0.055、"
                        "0.1 → 0.5 为 0.14、0.5 → 2 为 0.23），一次训练的逐对检验量不到它，判定随批次顺序翻转")
QUICK_EVAL_NOISE = "60 个留出对的评估噪声与效应同量级（Δ 的逐对 SE 0.66–1.23，准确率的 SE ≈ 0.06），quick 种子之间判定不一"


def add_args(parser):
    parser.add_argument("--ref-steps", type=int, default=100, help="参考模型 SFT 步数（默认 100）")
    parser.add_argument("--dpo-steps", type=int, default=40, help="每个 β 的 DPO 步数（默认 40）")
    parser.add_argument("--betas", type=float, nargs="+", default=BETAS,
                        help=f"要比较的 β（默认 0.01 0.1 0.5 2；都 ≤ {SMALL_BETA} 的相邻两档记为对照）")
    add_replicates_argument(parser, QUICK_REPLICATES, FULL_REPLICATES, "DPO 换批次顺序，参考模型不变")


def main():
    exp = Experiment(__file__, description="β 扫描：DPO 的奖励差与到参考模型的 KL 之间的取舍", extra_args=add_args)
    ref_steps = exp.args.ref_steps
    dpo_steps = exp.args.dpo_steps
    betas = sorted(exp.args.betas)
    if ref_steps < 1 or dpo_steps < 1:
        raise SystemExit(f"--ref-steps 与 --dpo-steps 必须 >= 1（收到 {ref_steps}、{dpo_steps}）")
    if len(betas) < 2 or min(betas) <= 0:
        raise SystemExit(f"--betas 至少给两个正数（收到 {betas}）")
    replicates = resolve_replicates(exp.args.replicates, exp.quick, QUICK_REPLICATES, FULL_REPLICATES)

    tokenizer = lab.load_tokenizer()
    sft_data = lab.Encoded(lab.SFTDataset(lab.SFT_PATH, tokenizer, lab.SEQ_LEN))
    dpo_data = lab.Encoded(lab.DPODataset(lab.DPO_PATH, tokenizer, lab.SEQ_LEN))
    train_idx, heldout_idx = lab.split_pairs(len(dpo_data))
    monitor_idx = train_idx[:N_TRAIN_EVAL]
    print(f"偏好对：训练 {len(train_idx)}，留出 {len(heldout_idx)}；β = {betas}；每个 β DPO {dpo_steps} 步；"
          f"每个种子平均 {replicates} 次训练（只换批次顺序）")

    stats = {beta: [] for beta in betas}  # β → 每个种子在留出对上的 pair_stats（另加训练对上的 gradient_weight）
    for seed in exp.seeds:
        Experiment.seed_everything(seed)
        ref, _ = lab.train_reference(tokenizer, sft_data, seed, ref_steps, exp.device)
        ref_heldout = lab.pair_logprobs(ref, dpo_data, heldout_idx, exp.device)
        ref_monitor = lab.pair_logprobs(ref, dpo_data, monitor_idx, exp.device)
        for beta in betas:
            # 同一个参考模型上 R 次 DPO，只换批次顺序（r = 0 用种子本身）；各项指标逐项平均成这个种子的值
            replicate_stats = []
            for r in range(replicates):
                policy, _ = lab.train_dpo(ref, dpo_data, train_idx, replicate_seed(seed, r), dpo_steps, beta,
                                          exp.device)
                replicate_stats.append(lab.pair_stats(policy, ref, dpo_data, heldout_idx, beta, exp.device,
                                                      ref_heldout))
                # 逐对判对与否（margin > 0）；复制训练平均后成为每一对被判对的比例
                replicate_stats[-1]["per_pair"]["correct"] = [float(d > 0)
                                                              for d in replicate_stats[-1]["per_pair"]["log_ratio"]]
                replicate_stats[-1]["gradient_weight"] = lab.gradient_weight(policy, ref_monitor, dpo_data,
                                                                             monitor_idx, beta, exp.device)
            stats[beta].append(lab.average_runs(replicate_stats))
            stats[beta][-1]["replicate_kl"] = [s["kl"] for s in replicate_stats]  # (R,)

    def values(beta, key):
        return [s[key] for s in stats[beta]]

    keys = ("log_ratio_margin", "margin", "accuracy", "kl", "gradient_weight")
    exp.print_table(["beta", "Δ log-ratio", "margin β·Δ", "accuracy", "KL nat/token", "σ(−β·Δ) train"],
                    [[beta] + [format_mean_std(values(beta, k), 3) for k in keys] for beta in betas],
                    title=f"留出对上的指标（DPO {dpo_steps} 步后，mean ± std over seeds）")

    if replicates > 1:  # 单次训练之间 vs 种子之间的 log KL 标准差
        exp.print_table(["beta", "std of log KL within a seed (mean over seeds)", "std of averaged log KL between seeds"],
                        [[beta, f"{np.mean([np.std(np.log(v), ddof=1) for v in values(beta, 'replicate_kl')]):.3f}",
                          f"{np.std(np.log(values(beta, 'kl')), ddof=1):.3f}" if len(exp.seeds) > 1 else "—"]
                         for beta in betas],
                        title=f"留出对 KL：同一个参考模型上 {replicates} 次 DPO（只换批次顺序）")

    kl = {beta: mean_std(values(beta, "kl"))[0] for beta in betas}
    delta = {beta: mean_std(values(beta, "log_ratio_margin"))[0] for beta in betas}
    acc = {beta: mean_std(values(beta, "accuracy"))[0] for beta in betas}
    weight = {beta: mean_std(values(beta, "gradient_weight"))[0] for beta in betas}

    # 噪声检验（modules/common/noise.py）：完整模式按种子配对；quick 模式只有一个种子，
    # 各 β 的策略在同一组留出对上逐对配对（KL 用每一对的位置平均 KL，准确率用每一对的 margin > 0）
    def pair_values(beta, key):
        return stats[beta][0]["per_pair"][key]

    def log_kl(kls):  # KL 在对数尺度上比较：各种子离参考模型的远近差的是倍数；KL ≥ 0，下限 1e-12 只防 log(0)
        return np.log(np.maximum(kls, 1e-12))

    def kl_verdict(beta_a: float, beta_b: float):  # "β=beta_a 的 KL 比 β=beta_b 小"
        return compare_runs(log_kl(values(beta_a, "kl")), log_kl(values(beta_b, "kl")), "less",
                            log_kl(pair_values(beta_a, "kl")), log_kl(pair_values(beta_b, "kl")))

    def kl_evidence(beta_a: float, beta_b: float):
        return (f"KL: β={beta_a} → {kl[beta_a]:.4f}, β={beta_b} → {kl[beta_b]:.4f} nat/token；"
                f"训练对上的梯度权重 σ(−β·Δ): β={beta_a} → {weight[beta_a]:.3f}, β={beta_b} → {weight[beta_b]:.3f}")

    small, large = betas[0], betas[-1]
    exp.conclude_verdict(f"β 越大，策略离参考模型越近：β={large} 的 KL 小于 β={small}（对数尺度上比较）",
                         kl_verdict(large, small), kl_evidence(small, large))
    for lower, higher in zip(betas, betas[1:]):
        if higher <= SMALL_BETA:
            claim = (f"对照：β 都 ≤ {SMALL_BETA} 时 β·Δ 在这几十步里还小、σ(−β·Δ) 离 0.5 不远，Adam 又抵消了梯度的常数因子 β，"
                     f"两档的更新相近：β={higher} 的 KL 小于 β={lower}")
        else:
            claim = f"KL 随 β 逐档下降（β 改变梯度权重 σ(−β·Δ) 的区间）：β={higher} 的 KL 小于 β={lower}"
        exp.conclude_verdict(claim, kl_verdict(higher, lower), kl_evidence(lower, higher),
                             quick_reason=QUICK_TRAINING_NOISE)
    exp.conclude_verdict(f"β 越小，chosen 与 rejected 的对数概率差被推得越开：β={small} 的 Δ 大于 β={large}",
                         compare_runs(values(small, "log_ratio_margin"), values(large, "log_ratio_margin"), "greater",
                                      pair_values(small, "log_ratio"), pair_values(large, "log_ratio")),
                         f"Δ log-ratio: β={small} → {delta[small]:.2f}, β={large} → {delta[large]:.2f}",
                         quick_reason=QUICK_EVAL_NOISE)
    # "准确率高于 0.5"说的是留出对这个总体：每个种子都在同一组固定的留出对上评估，按种子配对的 SE 只量到训练噪声，
    # 量不到"抽到的是哪些对"的噪声（60 对、准确率 ≈ 0.6 时二项 SE ≈ 0.06）。所以两种噪声都要过：
    # (a) 按种子配对；(b) 逐对——每一对在所有种子、所有复制训练上被判对的比例，对 0.5 检验（n = 留出对数），
    # 取两者中较弱的判定。数据集只有 260 对（200 对训练、60 对留出），没有更多留出对可以廉价地加大评估集。
    for beta in betas:
        pair_correct = np.mean([s["per_pair"]["correct"] for s in stats[beta]], axis=0)  # (N_heldout,)
        by_seed = compare_runs(values(beta, "accuracy"), [0.5] * len(exp.seeds), "greater",
                               pair_values(beta, "correct"), [0.5] * len(heldout_idx))
        by_pair = exceeds(pair_correct, 0.5, unit="batches")
        exp.conclude_verdict(f"β={beta} 在留出对上的偏好准确率高于 0.5",
                             weakest([by_seed, by_pair]),
                             f"accuracy = {format_mean_std(values(beta, 'accuracy'), 3)}；按种子配对 {by_seed.status}"
                             f"（SE={by_seed.se:.3g}），逐对（{len(heldout_idx)} 对，每对判对的比例取 {len(exp.seeds)} 个种子 × "
                             f"{replicates} 次训练的平均）{by_pair.status}（SE={by_pair.se:.3g}），取较弱的",
                             quick_reason=QUICK_EVAL_NOISE)

    set_style()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    ax = axes[0]
    colors = plt.cm.viridis(np.linspace(0, 0.9, len(betas)))
    for beta, color in zip(betas, colors):
        ax.scatter(values(beta, "kl"), values(beta, "log_ratio_margin"), color=color, alpha=0.4, s=20)
        ax.scatter([kl[beta]], [delta[beta]], color=color, s=90, edgecolor="black", label=f"beta={beta}")
    ax.set_xlabel("KL(π ‖ π_ref) per answer token [nat]")
    ax.set_ylabel("Δ log-ratio (chosen − rejected)")
    ax.set_title("Held-out: margin bought with KL")
    ax.legend()
    ax = axes[1]
    x = np.arange(len(betas))
    ax.bar(x - 0.2, [kl[b] for b in betas], width=0.4, color="tab:purple", label="KL [nat/token]")
    ax.set_xticks(x, [str(b) for b in betas])
    ax.set_xlabel("beta")
    ax.set_ylabel("KL [nat/token]")
    ax2 = ax.twinx()
    ax2.bar(x + 0.2, [acc[b] for b in betas], width=0.4, color="tab:orange", label="accuracy")
    ax2.set_ylim(0, 1)
    ax2.set_ylabel("held-out preference accuracy")
    ax.set_title("KL and accuracy per beta")
    handles = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    ax.legend(handles, ["KL", "accuracy"], loc="upper right")
    fig.suptitle(f"DPO beta sweep ({dpo_steps} steps each, {len(exp.seeds)} seed(s))")
    fig.tight_layout()
    exp.save_figure(fig, "exp2_beta.png")

    exp.save_metrics({"config": {"ref_steps": ref_steps, "dpo_steps": dpo_steps, "betas": betas, "lr": lab.DPO_LR,
                                 "batch_pairs": lab.DPO_BATCH, "n_heldout_pairs": len(heldout_idx),
                                 "replicates": replicates},
                      "per_beta": {str(beta): {k: values(beta, k)
                                               for k in keys + ("chosen_logp", "rejected_logp", "replicate_kl")}
                                   for beta in betas},
                      "mean_kl": {str(b): kl[b] for b in betas},
                      "mean_log_ratio_margin": {str(b): delta[b] for b in betas},
                      "mean_accuracy": {str(b): acc[b] for b in betas},
                      "mean_gradient_weight": {str(b): weight[b] for b in betas},
                      # 每个留出对被判对（margin > 0）的比例：所有种子、所有复制训练的平均，准确率的逐对检验用它
                      "pair_correct_mean": {str(beta): np.mean([s["per_pair"]["correct"] for s in stats[beta]],
                                                               axis=0).tolist() for beta in betas},
                      # 第一个种子逐对的值，quick 模式的噪声检验就用它们
                      "per_pair_first_seed": {str(beta): stats[beta][0]["per_pair"] for beta in betas}})
    exp.finish()


if __name__ == "__main__":
    main()
