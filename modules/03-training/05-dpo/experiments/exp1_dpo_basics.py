"""实验 1：DPO 在训练什么？——奖励差、偏好准确率与到参考模型的 KL 随训练的变化。

参考模型 = 在 dataset/samples/sft.jsonl 上 SFT 过的小 MiniMind（冻结）；策略从它的拷贝出发，
在 dataset/samples/dpo.jsonl 的 200 个偏好对上做 DPO（trainer/train_dpo.py::make_dpo_step，β=0.1），
另外 60 对留出只做评估。每隔几步在训练对（固定的 60 对）与留出对上测：
  隐式奖励差 margin = β·[(log π(y_c) − log π_ref(y_c)) − (log π(y_r) − log π_ref(y_r))]，
  偏好准确率 = margin > 0 的比例，策略到参考模型的 KL（回答位置上精确计算，nat/token），
  以及 chosen / rejected 回答的平均序列对数概率。

    python exp1_dpo_basics.py --quick
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import dpo_lab as lab  # noqa: E402
from modules.common.experiment_base import Experiment, format_mean_std, mean_std  # noqa: E402
from modules.common.visualization import set_style  # noqa: E402

N_TRAIN_EVAL = 60  # 监控用的训练对数量（固定的前 60 对）


def add_args(parser):
    parser.add_argument("--ref-steps", type=int, default=100, help="参考模型 SFT 步数（默认 100）")
    parser.add_argument("--dpo-steps", type=int, default=50, help="DPO 步数（默认 50）")
    parser.add_argument("--beta", type=float, default=lab.DEFAULT_BETA, help="DPO 的 β（默认 0.1，同 trainer/train_dpo.py）")


def main():
    exp = Experiment(__file__, description="DPO 基础：奖励差、偏好准确率、到参考模型的 KL 随训练的变化", extra_args=add_args)
    ref_steps = exp.args.ref_steps
    dpo_steps = exp.args.dpo_steps
    beta = exp.args.beta
    if ref_steps < 1 or dpo_steps < 10:
        raise SystemExit(f"--ref-steps 必须 >= 1、--dpo-steps 必须 >= 10（收到 {ref_steps}、{dpo_steps}）")
    if beta <= 0:
        raise SystemExit(f"--beta 必须为正（收到 {beta}）；β 是 KL 约束的强度")
    eval_every = max(1, dpo_steps // 5)

    tokenizer = lab.load_tokenizer()
    sft_data = lab.SFTDataset(lab.SFT_PATH, tokenizer, lab.SEQ_LEN)
    dpo_data = lab.DPODataset(lab.DPO_PATH, tokenizer, lab.SEQ_LEN)
    train_idx, heldout_idx = lab.split_pairs(len(dpo_data))
    monitor_idx = train_idx[:N_TRAIN_EVAL]
    print(f"偏好对：训练 {len(train_idx)}，留出 {len(heldout_idx)}；参考模型 SFT {ref_steps} 步，DPO {dpo_steps} 步，β={beta}")

    runs = []
    for seed in exp.seeds:
        Experiment.seed_everything(seed)
        ref, _ = lab.train_reference(tokenizer, sft_data, seed, ref_steps, exp.device)
        ref_train = lab.pair_logprobs(ref, dpo_data, monitor_idx, exp.device)
        ref_heldout = lab.pair_logprobs(ref, dpo_data, heldout_idx, exp.device)

        def evaluate(policy):
            return {"train": lab.pair_stats(policy, ref, dpo_data, monitor_idx, beta, exp.device, ref_train),
                    "heldout": lab.pair_stats(policy, ref, dpo_data, heldout_idx, beta, exp.device, ref_heldout)}

        _, hist = lab.train_dpo(ref, dpo_data, train_idx, seed, dpo_steps, beta, exp.device,
                                evaluate=evaluate, eval_every=eval_every)
        runs.append(hist)

    eval_steps = [e["step"] for e in runs[0]["evals"]]

    def curve(split, key):  # (n_seeds, n_evals)
        return np.array([[e[split][key] for e in run["evals"]] for run in runs])

    # "早期" = 第一次评估（eval_every 步后），"后期" = 最后一步
    early, late = 1, -1
    rows = []
    for split in ("train", "heldout"):
        for key in ("margin", "accuracy", "kl", "chosen_logp", "rejected_logp"):
            c = curve(split, key)
            rows.append([split, key, format_mean_std(c[:, 0]), format_mean_std(c[:, early]), format_mean_std(c[:, late])])
    exp.print_table(["pairs", "metric", "step 0 (=ref)", f"step {eval_steps[early]}", f"step {eval_steps[late]}"],
                    rows, title="DPO 训练过程中的指标（mean ± std over seeds）")

    train_margin, heldout_margin = curve("train", "margin"), curve("heldout", "margin")
    heldout_acc, heldout_kl = curve("heldout", "accuracy"), curve("heldout", "kl")
    m_early, m_late = mean_std(train_margin[:, early])[0], mean_std(train_margin[:, late])[0]
    exp.conclude("训练对上的奖励差随训练上升（后期 > 早期 > 0）",
                 bool(m_late > m_early > 0),
                 f"train margin: step {eval_steps[early]} = {m_early:.3f}, step {eval_steps[late]} = {m_late:.3f}")
    h_early, h_late = mean_std(heldout_margin[:, early])[0], mean_std(heldout_margin[:, late])[0]
    exp.conclude("留出对上的奖励差也上升（后期 > 早期）：偏好推广到没见过的问题",
                 bool(h_late > h_early),
                 f"heldout margin: step {eval_steps[early]} = {h_early:.3f}, step {eval_steps[late]} = {h_late:.3f}")
    acc = mean_std(heldout_acc[:, late])[0]
    exp.conclude("留出对上的偏好准确率高于 0.5（随机猜）",
                 bool(acc > 0.5), f"heldout accuracy at step {eval_steps[late]} = {acc:.3f}")
    kl_early, kl_late = mean_std(heldout_kl[:, early])[0], mean_std(heldout_kl[:, late])[0]
    exp.conclude("策略离参考模型越来越远：KL 随训练增大（DPO 的奖励是用偏离参考模型换来的）",
                 bool(kl_late > kl_early > 0),
                 f"heldout KL (nat/token): step {eval_steps[early]} = {kl_early:.4f}, step {eval_steps[late]} = {kl_late:.4f}")
    kind_acc = {kind: mean_std(curve("heldout", f"accuracy_{kind}")[:, late])[0] for kind in lab.PAIR_KINDS}
    kind_counts = {kind: sum(lab.pair_kind(dpo_data.rows[i]) == kind for i in heldout_idx) for kind in lab.PAIR_KINDS}
    exp.print_table(["pair kind", "n held-out", f"accuracy @ step {eval_steps[late]}"],
                    [[k, kind_counts[k], format_mean_std(curve("heldout", f"accuracy_{k}")[:, late], 3)]
                     for k in lab.PAIR_KINDS], title="留出对按类型的偏好准确率")
    exp.conclude("学到的偏好在'敷衍回答'这类对上推广得最好：refusal 的留出准确率高于 arithmetic 与 wrong_fact",
                 bool(kind_acc["refusal"] > max(kind_acc["arithmetic"], kind_acc["wrong_fact"])),
                 ", ".join(f"{k}: {v:.3f}" for k, v in kind_acc.items()))
    exp.conclude("算术对（正确结果 vs 差 1–2）的留出准确率高于 0.5：模型学会了'算对'",
                 bool(kind_acc["arithmetic"] > 0.5), f"arithmetic held-out accuracy = {kind_acc['arithmetic']:.3f}")
    chosen, rejected = curve("heldout", "chosen_logp"), curve("heldout", "rejected_logp")
    d_chosen = mean_std(chosen[:, late] - chosen[:, 0])[0]
    d_rejected = mean_std(rejected[:, late] - rejected[:, 0])[0]
    exp.conclude("奖励差主要来自压低 rejected：rejected 的对数概率降得比 chosen 多",
                 bool(d_rejected < d_chosen),
                 f"heldout Δlog p: chosen {d_chosen:+.2f}, rejected {d_rejected:+.2f}"
                 f"（chosen {'也下降了' if d_chosen < 0 else '上升了'}）")

    set_style()
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    panels = [("margin", "Reward margin β·Δ(log-ratio)"), ("accuracy", "Preference accuracy (margin > 0)"),
              ("kl", "KL(π ‖ π_ref) per answer token [nat]")]
    for ax, (key, title) in zip(axes.flat, panels):
        for split, color in (("train", "tab:blue"), ("heldout", "tab:orange")):
            m, s = curve(split, key).mean(0), curve(split, key).std(0)
            ax.plot(eval_steps, m, marker="o", ms=3, color=color, label=f"{split} pairs")
            ax.fill_between(eval_steps, m - s, m + s, color=color, alpha=0.2)
        ax.set_title(title)
        ax.set_xlabel("DPO step")
        ax.legend()
    axes[0, 1].axhline(0.5, color="gray", ls="--", lw=1)
    ax = axes[1, 1]
    for key, color in (("chosen_logp", "tab:green"), ("rejected_logp", "tab:red")):
        m, s = curve("heldout", key).mean(0), curve("heldout", key).std(0)
        ax.plot(eval_steps, m, marker="o", ms=3, color=color, label=key.replace("_logp", ""))
        ax.fill_between(eval_steps, m - s, m + s, color=color, alpha=0.2)
    ax.set_title("Held-out sequence log-prob under the policy")
    ax.set_xlabel("DPO step")
    ax.legend()
    fig.suptitle(f"DPO on dpo.jsonl (beta={beta}, {len(exp.seeds)} seed(s))")
    fig.tight_layout()
    exp.save_figure(fig, "exp1_dpo_basics.png")

    exp.save_metrics({"config": {"ref_steps": ref_steps, "dpo_steps": dpo_steps, "beta": beta, "lr": lab.DPO_LR,
                                 "batch_pairs": lab.DPO_BATCH, "n_train_pairs": len(train_idx),
                                 "n_heldout_pairs": len(heldout_idx), "model": lab.MODEL_SIZE},
                      "eval_steps": eval_steps,
                      "heldout_kind_counts": kind_counts, "heldout_accuracy_by_kind": kind_acc,
                      "curves": {split: {key: curve(split, key).tolist()
                                         for key in ("margin", "log_ratio_margin", "accuracy", "kl",
                                                     "chosen_logp", "rejected_logp")
                                         + tuple(f"accuracy_{k}" for k in lab.PAIR_KINDS)}
                                 for split in ("train", "heldout")},
                      "batch_reward_margin": [run["reward_margin"] for run in runs],
                      "batch_loss": [run["loss"] for run in runs]})
    exp.finish()


if __name__ == "__main__":
    main()
