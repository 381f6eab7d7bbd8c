"""实验 3：只在好答案上做 SFT，够不够？——SFT(chosen) 与 DPO(chosen + rejected) 对两种回答的似然做了什么。

从同一个参考模型出发、同样的训练对、同样的步数和学习率：
  SFT(chosen)：只在 chosen 回答上做普通的交叉熵（modules/common/training.py::train_model）；
  DPO：在 chosen + rejected 上用 trainer/train_dpo.py::make_dpo_step（β=0.1）。
训练前后在训练对与留出对上测 chosen / rejected 回答的平均序列对数概率（trainer/train_dpo.py::sequence_logprob），
看谁把 rejected 压下去、谁把 chosen 抬上来、谁拉开了两者的差距。
"SFT(chosen) 把 rejected 一起抬高"取决于好坏回答共享多少 token（ORPO，Hong et al. 2024 第 3 节：只在 chosen 上 SFT，
rejected 的似然跟着一起涨），所以留出对还按类型分开看：arithmetic 对的好坏回答只差结果数字；
对照：refusal 对的 rejected 是"我不知道。"之类的敷衍话，与 chosen 几乎不共享 token。
复制训练（modules/common/replicates.py）：同一个参考模型上只换 SFT / DPO 的批次顺序，留出对上 SFT(chosen) 的
Δlog p(rejected) 在单次训练之间的标准差（种子 42–44 上约 0.25）比种子之间的还大，所以完整模式里每个种子
两种方法各训练 --replicates 次（默认 10 次，quick 1 次），逐对的变化取平均后再按种子配对。
quick 只训练一次，不判定三条、只打印测得的值（QUICK_SFT_HELDOUT、QUICK_REFUSAL_CONTRAST）：SFT(chosen) 在留出对上抬高 chosen、
也抬高 rejected（单次训练的噪声与效应同量级），以及 refusal 对照（19 对，判定在 ❌ 与 ❔ 之间翻转）。依据是 2026-12-06 的
quick 种子 42/1/7/5/11/13；这是看过 quick 判定之后的改动，完整模式的结果不变。

    python exp3_sft_vs_dpo.py --quick
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import dpo_lab as lab  # noqa: E402
from modules.common.experiment_base import Experiment, format_mean_std, mean_std  # noqa: E402
from modules.common.noise import compare_runs  # noqa: E402
from modules.common.replicates import add_replicates_argument, replicate_seed, resolve_replicates  # noqa: E402
from modules.common.visualization import set_style  # noqa: E402

METHODS = ("sft_chosen", "dpo")
# 按类型看"SFT(chosen) 把 rejected 一起抬高"：arithmetic 的好坏回答只差结果数字，refusal 的几乎不共享 token（对照）
SHARED_KIND, CONTRAST_KIND = "arithmetic", "refusal"
# 完整模式每个种子两种方法各训练几次：按 CPU 预算定（每次两种方法连评估约 6 s CPU，10 次让完整模式单独运行约 4 min），
# 在看任何判定之前定下
QUICK_REPLICATES, FULL_REPLICATES = 1, 10
# quick 不判定的三条及原因（交给 exp.conclude_verdict 的 quick_reason；数字的来历见文件开头）
QUICK_SFT_HELDOUT = ("只训练一次：同一个参考模型上只换批次顺序，留出对上 SFT(chosen) 的变化在单次训练之间的标准差约 0.21"
                     "（完整参考结果每个种子 10 次），与效应（Δlog p(chosen) +0.35～+0.72、Δlog p(rejected) −0.24～+0.50）同量级，"
                     "60 个留出对的逐对检验量不到它：quick 种子 42/1/7/5/11/13 上抬高 chosen ❔/✅/✅/✅/❔/❔、"
                     "抬高 rejected ❔/✅/❔/❔/❔/❔")
QUICK_REFUSAL_CONTRAST = ("refusal 只有 19 个留出对（2·SE ≈ 0.39–1.2），单次训练的 Δlog p(rejected) 在 −0.33～−2.02 之间："
                          "quick 种子 42/1/7/5/11/13 上都没有一起抬高，但判定在 ❌ 与 ❔ 之间随种子翻转（❌/❔/❔/❌/❌/❌）")


def add_args(parser):
    parser.add_argument("--ref-steps", type=int, default=100, help="参考模型 SFT 步数（默认 100）")
    parser.add_argument("--steps", type=int, default=40, help="SFT(chosen) 与 DPO 各自的步数（默认 40）")
    parser.add_argument("--beta", type=float, default=lab.DEFAULT_BETA, help="DPO 的 β（默认 0.1）")
    add_replicates_argument(parser, QUICK_REPLICATES, FULL_REPLICATES, "SFT 与 DPO 换批次顺序，参考模型不变")


def main():
    exp = Experiment(__file__, description="SFT(只用 chosen) 与 DPO(chosen + rejected)：谁压低了 rejected 的似然",
                     extra_args=add_args)
    ref_steps = exp.args.ref_steps
    steps = exp.args.steps
    beta = exp.args.beta
    if ref_steps < 1 or steps < 1:
        raise SystemExit(f"--ref-steps 与 --steps 必须 >= 1（收到 {ref_steps}、{steps}）")
    if beta <= 0:
        raise SystemExit(f"--beta 必须为正（收到 {beta}）")
    replicates = resolve_replicates(exp.args.replicates, exp.quick, QUICK_REPLICATES, FULL_REPLICATES)

    tokenizer = lab.load_tokenizer()
    sft_data = lab.SFTDataset(lab.SFT_PATH, tokenizer, lab.SEQ_LEN)
    dpo_data = lab.DPODataset(lab.DPO_PATH, tokenizer, lab.SEQ_LEN)
    train_idx, heldout_idx = lab.split_pairs(len(dpo_data))
    splits = {"train": train_idx, "heldout": heldout_idx}
    heldout_kinds = [lab.pair_kind(dpo_data.rows[i]) for i in heldout_idx]
    kind_positions = {kind: [p for p, k in enumerate(heldout_kinds) if k == kind] for kind in (SHARED_KIND, CONTRAST_KIND)}
    print(f"偏好对：训练 {len(train_idx)}，留出 {len(heldout_idx)}；两种方法各 {steps} 步，学习率 {lab.DPO_LR}；"
          f"每个种子平均 {replicates} 次训练（只换批次顺序）")

    # shifts[method][split][answer] = 每个种子的 (训练后 − 训练前) 平均序列对数概率（R 次训练的平均）
    shifts = {m: {s: {"chosen": [], "rejected": [], "gap": []} for s in splits} for m in METHODS}
    # kind_shifts[method][kind][answer]：同上，只取留出对里这一类的偏好对
    kind_shifts = {m: {kind: {"chosen": [], "rejected": []} for kind in kind_positions} for m in METHODS}
    # 单次训练之间的噪声：每个种子每次复制的留出对上 SFT(chosen) 的 Δlog p(rejected) (n_seeds, R)
    replicate_sft_rejected = []
    before = {s: {"chosen": [], "rejected": []} for s in splits}
    # 第一个种子的逐对变化 pair_shifts[method][split][answer]（每个偏好对一项）：quick 模式只有一个种子时，
    # 各方法在同一组偏好对上按对配对，它们的离散程度就是噪声检验的评估噪声（modules/common/noise.py）
    pair_shifts = {m: {s: {} for s in splits} for m in METHODS}
    for seed in exp.seeds:
        Experiment.seed_everything(seed)
        ref, _ = lab.train_reference(tokenizer, sft_data, seed, ref_steps, exp.device)
        ref_lp = {split: lab.pair_logprobs(ref, dpo_data, idx, exp.device) for split, idx in splits.items()}
        for split in splits:
            before[split]["chosen"].append(ref_lp[split]["chosen"].mean().item())
            before[split]["rejected"].append(ref_lp[split]["rejected"].mean().item())
        # 同一个参考模型上 R 次训练，只换批次顺序（r = 0 用种子本身）；
        # replicate_pairs[r][method][split][answer] = 这一次训练逐对的变化（长度 N 的列表）
        replicate_pairs = []
        for r in range(replicates):
            run_seed = replicate_seed(seed, r)
            models = {"sft_chosen": lab.sft_on_chosen(ref, dpo_data, train_idx, run_seed, steps, exp.device)[0],
                      "dpo": lab.train_dpo(ref, dpo_data, train_idx, run_seed, steps, beta, exp.device)[0]}
            replicate_pairs.append({method: {} for method in METHODS})
            for split, idx in splits.items():
                for method, model in models.items():
                    lp = lab.pair_logprobs(model, dpo_data, idx, exp.device)
                    chosen = lp["chosen"] - ref_lp[split]["chosen"]  # (N,)
                    rejected = lp["rejected"] - ref_lp[split]["rejected"]  # (N,)
                    replicate_pairs[-1][method][split] = {"chosen": chosen.tolist(), "rejected": rejected.tolist(),
                                                          "gap": (chosen - rejected).tolist()}
        replicate_sft_rejected.append([float(np.mean(run["sft_chosen"]["heldout"]["rejected"]))
                                       for run in replicate_pairs])
        averaged = lab.average_runs(replicate_pairs)  # 逐对取 R 次的平均
        for method in METHODS:
            for split in splits:
                for key, values in averaged[method][split].items():
                    shifts[method][split][key].append(float(np.mean(values)))
                    pair_shifts[method][split].setdefault(key, values)
            for kind, positions in kind_positions.items():
                for key in ("chosen", "rejected"):
                    values = averaged[method]["heldout"][key]
                    kind_shifts[method][kind][key].append(float(np.mean([values[p] for p in positions])))

    rows = []
    for split in splits:
        rows.append([split, "reference (before)", format_mean_std(before[split]["chosen"], 2),
                     format_mean_std(before[split]["rejected"], 2), "—"])
        for method in METHODS:
            s = shifts[method][split]
            rows.append([split, f"Δ {method}", format_mean_std(s["chosen"], 2), format_mean_std(s["rejected"], 2),
                         format_mean_std(s["gap"], 2)])
    exp.print_table(["pairs", "model", "log p(chosen)", "log p(rejected)", "Δgap (c − r)"], rows,
                    title="序列对数概率：参考模型的值，以及两种方法训练后的变化（mean ± std over seeds）")

    def mean(method, split, key):
        return mean_std(shifts[method][split][key])[0]

    def verdict(a: str, b: str | None, split: str, key: str, direction: str):
        """方法 a 的变化比方法 b（b=None 时比 0）更低/更高：多种子按种子配对；单种子按同一组偏好对逐对配对。"""
        a_seeds, a_pairs = shifts[a][split][key], pair_shifts[a][split][key]
        if b is None:
            return compare_runs(a_seeds, [0.0] * len(a_seeds), direction, a_pairs, [0.0] * len(a_pairs))
        return compare_runs(a_seeds, shifts[b][split][key], direction, a_pairs, pair_shifts[b][split][key])

    for split in ("heldout", "train"):
        sft_r, dpo_r = mean("sft_chosen", split, "rejected"), mean("dpo", split, "rejected")
        exp.conclude_verdict(f"[{split}] DPO 把 rejected 的对数概率压得比 SFT(chosen) 更低",
                             verdict("dpo", "sft_chosen", split, "rejected", "less"),
                             f"Δlog p(rejected): SFT(chosen) {sft_r:+.2f}, DPO {dpo_r:+.2f}")
    sft_c, sft_r = mean("sft_chosen", "heldout", "chosen"), mean("sft_chosen", "heldout", "rejected")
    exp.conclude_verdict("[heldout] SFT(chosen) 抬高了 chosen 的对数概率",
                         verdict("sft_chosen", None, "heldout", "chosen", "greater"), f"Δlog p(chosen) = {sft_c:+.2f}",
                         quick_reason=QUICK_SFT_HELDOUT)
    exp.conclude_verdict("[heldout] SFT(chosen) 也把 rejected 一起抬高了（好坏回答共享大部分 token 和句式）",
                         verdict("sft_chosen", None, "heldout", "rejected", "greater"),
                         f"Δlog p(rejected) = {sft_r:+.2f}"
                         + (f"（每个种子平均 {replicates} 次训练）" if replicates > 1 else ""),
                         quick_reason=QUICK_SFT_HELDOUT)
    if replicates > 1:
        exp.print_table(["seed", "Δlog p(rejected) per run (mean ± std over replicates)"],
                        [[seed, format_mean_std(values, 3)] for seed, values in zip(exp.seeds, replicate_sft_rejected)],
                        title=f"留出对上 SFT(chosen) 的 Δlog p(rejected)：同一个参考模型上 {replicates} 次训练（只换批次顺序）")

    def kind_verdict(kind: str, key: str):
        """留出对里只取这一类：SFT(chosen) 的变化比 0 高。多种子按种子配对；单种子按这一类的偏好对逐对配对。"""
        pairs = [pair_shifts["sft_chosen"]["heldout"][key][p] for p in kind_positions[kind]]
        seeds_values = kind_shifts["sft_chosen"][kind][key]
        return compare_runs(seeds_values, [0.0] * len(seeds_values), "greater", pairs, [0.0] * len(pairs))

    def kind_evidence(kind: str):
        c, r = (format_mean_std(kind_shifts["sft_chosen"][kind][key], 2) for key in ("chosen", "rejected"))
        return f"{kind}（{len(kind_positions[kind])} 对）：Δlog p(chosen) = {c}，Δlog p(rejected) = {r}"

    exp.print_table(["held-out kind", "n", "Δ SFT chosen", "Δ SFT rejected", "Δ DPO chosen", "Δ DPO rejected"],
                    [[kind, len(positions)] + [format_mean_std(kind_shifts[m][kind][key], 2)
                                               for m in METHODS for key in ("chosen", "rejected")]
                     for kind, positions in kind_positions.items()],
                    title="留出对按类型：两种方法训练后序列对数概率的变化（mean ± std over seeds）")
    exp.conclude_verdict(f"[heldout {SHARED_KIND}：好坏回答只差结果数字] SFT(chosen) 也把 rejected 一起抬高了",
                         kind_verdict(SHARED_KIND, "rejected"), kind_evidence(SHARED_KIND))
    exp.conclude_verdict(f"对照：[heldout {CONTRAST_KIND}：rejected 是敷衍话，与 chosen 几乎不共享 token] "
                         f"SFT(chosen) 也把 rejected 一起抬高了",
                         kind_verdict(CONTRAST_KIND, "rejected"), kind_evidence(CONTRAST_KIND),
                         quick_reason=QUICK_REFUSAL_CONTRAST)
    sft_gap, dpo_gap = mean("sft_chosen", "heldout", "gap"), mean("dpo", "heldout", "gap")
    exp.conclude_verdict("[heldout] DPO 拉开 chosen 与 rejected 的差距比 SFT(chosen) 更多",
                         verdict("dpo", "sft_chosen", "heldout", "gap", "greater"),
                         f"Δgap: SFT(chosen) {sft_gap:+.2f}, DPO {dpo_gap:+.2f}")
    # DPO 只约束差值：文献的发现（Pal et al. 2024 "Smaug/DPOP"；Razin et al. 2024）是差距变大的同时，
    # chosen 自己的似然也可能下降——这里把"差距变大"与"chosen 下降"分别当作测得的结论检验
    exp.conclude_verdict("[heldout] DPO 拉大了 chosen 与 rejected 的对数概率差（margin 变大）",
                         verdict("dpo", None, "heldout", "gap", "greater"), f"Δgap = {dpo_gap:+.2f}")
    for split in ("heldout", "train"):
        dpo_c = mean("dpo", split, "chosen")
        exp.conclude_verdict(f"[{split}] 与此同时，DPO 让 chosen 自己的对数概率下降了",
                             verdict("dpo", None, split, "chosen", "less"), f"Δlog p(chosen) = {dpo_c:+.2f}")

    set_style()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    labels = {"sft_chosen": "SFT on chosen", "dpo": f"DPO (beta={beta})"}
    x = np.arange(3)
    for ax, split in zip(axes, splits):
        for k, (method, color) in enumerate(zip(METHODS, ("tab:green", "tab:purple"))):
            s = shifts[method][split]
            means = [np.mean(s[key]) for key in ("chosen", "rejected", "gap")]
            stds = [np.std(s[key]) for key in ("chosen", "rejected", "gap")]
            ax.bar(x + (k - 0.5) * 0.38, means, yerr=stds, width=0.38, color=color, label=labels[method], capsize=3)
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xticks(x, ["Δ log p(chosen)", "Δ log p(rejected)", "Δ gap (c − r)"])
        ax.set_title(f"{split} pairs")
        ax.legend()
    axes[0].set_ylabel("change vs reference [nat per answer]")
    fig.suptitle(f"SFT on chosen vs DPO ({steps} steps each, {len(exp.seeds)} seed(s))")
    fig.tight_layout()
    exp.save_figure(fig, "exp3_sft_vs_dpo.png")

    exp.save_metrics({"config": {"ref_steps": ref_steps, "steps": steps, "beta": beta, "lr": lab.DPO_LR,
                                 "batch": lab.DPO_BATCH, "n_train_pairs": len(train_idx),
                                 "n_heldout_pairs": len(heldout_idx), "replicates": replicates},
                      "reference_logp": before, "shifts": shifts, "pair_shifts_first_seed": pair_shifts,
                      "heldout_kind_positions": kind_positions, "heldout_kind_shifts": kind_shifts,
                      # 每个种子每次复制的留出对上 SFT(chosen) 的 Δlog p(rejected)，量单次训练之间的噪声
                      "replicate_sft_heldout_rejected": replicate_sft_rejected})
    exp.finish()


if __name__ == "__main__":
    main()
