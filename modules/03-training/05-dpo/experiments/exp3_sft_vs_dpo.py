"""实验 3：只在好答案上做 SFT，够不够？——SFT(chosen) 与 DPO(chosen + rejected) 对两种回答的似然做了什么。

从同一个参考模型出发、同样的训练对、同样的步数和学习率：
  SFT(chosen)：只在 chosen 回答上做普通的交叉熵（modules/common/training.py::train_model）；
  DPO：在 chosen + rejected 上用 trainer/train_dpo.py::make_dpo_step（β=0.1）。
训练前后在训练对与留出对上测 chosen / rejected 回答的平均序列对数概率（trainer/train_dpo.py::sequence_logprob），
看谁把 rejected 压下去、谁把 chosen 抬上来、谁拉开了两者的差距。

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
from modules.common.visualization import set_style  # noqa: E402

METHODS = ("sft_chosen", "dpo")


def add_args(parser):
    parser.add_argument("--ref-steps", type=int, default=100, help="参考模型 SFT 步数（默认 100）")
    parser.add_argument("--steps", type=int, default=40, help="SFT(chosen) 与 DPO 各自的步数（默认 40）")
    parser.add_argument("--beta", type=float, default=lab.DEFAULT_BETA, help="DPO 的 β（默认 0.1）")


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

    tokenizer = lab.load_tokenizer()
    sft_data = lab.SFTDataset(lab.SFT_PATH, tokenizer, lab.SEQ_LEN)
    dpo_data = lab.DPODataset(lab.DPO_PATH, tokenizer, lab.SEQ_LEN)
    train_idx, heldout_idx = lab.split_pairs(len(dpo_data))
    splits = {"train": train_idx, "heldout": heldout_idx}
    print(f"偏好对：训练 {len(train_idx)}，留出 {len(heldout_idx)}；两种方法各 {steps} 步，学习率 {lab.DPO_LR}")

    # shifts[method][split][answer] = 每个种子的 (训练后 − 训练前) 平均序列对数概率
    shifts = {m: {s: {"chosen": [], "rejected": [], "gap": []} for s in splits} for m in METHODS}
    before = {s: {"chosen": [], "rejected": []} for s in splits}
    # 第一个种子的逐对变化 pair_shifts[method][split][answer]（每个偏好对一项）：quick 模式只有一个种子时，
    # 各方法在同一组偏好对上按对配对，它们的离散程度就是噪声检验的评估噪声（modules/common/noise.py）
    pair_shifts = {m: {s: {} for s in splits} for m in METHODS}
    for seed in exp.seeds:
        Experiment.seed_everything(seed)
        ref, _ = lab.train_reference(tokenizer, sft_data, seed, ref_steps, exp.device)
        models = {"sft_chosen": lab.sft_on_chosen(ref, dpo_data, train_idx, seed, steps, exp.device)[0],
                  "dpo": lab.train_dpo(ref, dpo_data, train_idx, seed, steps, beta, exp.device)[0]}
        for split, idx in splits.items():
            ref_lp = lab.pair_logprobs(ref, dpo_data, idx, exp.device)
            before[split]["chosen"].append(ref_lp["chosen"].mean().item())
            before[split]["rejected"].append(ref_lp["rejected"].mean().item())
            for method, model in models.items():
                lp = lab.pair_logprobs(model, dpo_data, idx, exp.device)
                per_pair = {"chosen": lp["chosen"] - ref_lp["chosen"], "rejected": lp["rejected"] - ref_lp["rejected"]}
                per_pair["gap"] = per_pair["chosen"] - per_pair["rejected"]  # (N,)
                for key, values in per_pair.items():
                    shifts[method][split][key].append(values.mean().item())
                    pair_shifts[method][split].setdefault(key, values.tolist())

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
                         verdict("sft_chosen", None, "heldout", "chosen", "greater"), f"Δlog p(chosen) = {sft_c:+.2f}")
    exp.conclude_verdict("[heldout] SFT(chosen) 也把 rejected 一起抬高了（好坏回答共享大部分 token 和句式）",
                         verdict("sft_chosen", None, "heldout", "rejected", "greater"),
                         f"Δlog p(rejected) = {sft_r:+.2f}")
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
                                 "n_heldout_pairs": len(heldout_idx)},
                      "reference_logp": before, "shifts": shifts, "pair_shifts_first_seed": pair_shifts})
    exp.finish()


if __name__ == "__main__":
    main()
