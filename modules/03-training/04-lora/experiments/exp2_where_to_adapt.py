"""LoRA 实验 2：LoRA 挂在哪里？q/v、q/o（MiniMind 默认）、全部注意力投影、注意力 + FFN，可训练参数量近似相同。

    python exp2_where_to_adapt.py --quick      # 2 核 CPU 约半分钟，1 个种子
    python exp2_where_to_adapt.py              # 完整：3 个种子

设计：同一个基座（pretrain.jsonl 上预训练的小 MiniMind），同一个新任务（sft.jsonl 对话），同样的步数与学习率。
以 "q,v @ rank --budget-rank" 的可训练参数量为预算，其余位置按 round(预算 / 每个 rank 的参数) 选 rank，
表里给出每种方案的精确参数量，再比较留出对话上的新任务 loss 与旧任务 loss。
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lora_lab import (  # noqa: E402  (lora_lab 会把仓库根目录放进 sys.path)
    ATTENTION, BATCH, FFN, LORA_LR, MODEL_SIZE, attach, finetune, load_tasks, load_tokenizer, pretrain_base,
    task_loss, trainable_params,
)

from modules.common.experiment_base import Experiment, format_mean_std, mean_std  # noqa: E402
from modules.common.visualization import plt, set_style  # noqa: E402

PLACEMENTS = {  # 名字 → target_modules（按 Linear 名字的最后一段匹配，见 model/model_lora.py::apply_lora）
    "q,v": ("q_proj", "v_proj"),
    "q,o (MiniMind default)": ("q_proj", "o_proj"),
    "q,k,v,o": ATTENTION,
    "attn+FFN": ATTENTION + FFN,
}


def add_args(parser):
    parser.add_argument("--pretrain-steps", type=int, default=None, help="基座预训练步数（默认 quick 80 / 完整 200）")
    parser.add_argument("--finetune-steps", type=int, default=None, help="每种方案的微调步数（默认 quick 30 / 完整 60）")
    parser.add_argument("--budget-rank", type=int, default=16, help="参数预算 = q,v 上 rank 为此值时的可训练参数（默认 16）")


def matched_ranks(base, budget_rank: int) -> dict:
    """每种挂载位置的 rank：使其可训练参数最接近 q,v @ budget_rank。每个 rank 的参数量用 r=1 实际挂一次数出来。"""
    per_rank = {name: trainable_params(attach(base, 1, targets)[0]) for name, targets in PLACEMENTS.items()}
    budget = budget_rank * per_rank["q,v"]
    return {name: max(1, round(budget / unit)) for name, unit in per_rank.items()}, budget


def main():
    exp = Experiment(__file__, extra_args=add_args, description=(
        "LoRA 实验 2：q/v、q/o、q/k/v/o、注意力+FFN 四种挂载位置，在可训练参数量近似相同时比较新任务 loss。"))
    pretrain_steps = (80 if exp.quick else 200) if exp.args.pretrain_steps is None else exp.args.pretrain_steps
    finetune_steps = (30 if exp.quick else 60) if exp.args.finetune_steps is None else exp.args.finetune_steps
    if pretrain_steps < 1 or finetune_steps < 1 or exp.args.budget_rank < 1:
        raise SystemExit("--pretrain-steps、--finetune-steps、--budget-rank 必须 >= 1"
                         f"（收到 {pretrain_steps}、{finetune_steps}、{exp.args.budget_rank}）")

    tokenizer = load_tokenizer()
    tasks = load_tasks(tokenizer)
    runs = {name: {"new_loss": [], "old_loss": [], "curve": None} for name in PLACEMENTS}
    info, base_new, base_old = {}, [], []
    for seed in exp.seeds:
        Experiment.seed_everything(seed)
        base, _ = pretrain_base(tasks, seed, pretrain_steps, exp.device)
        ranks, budget = matched_ranks(base, exp.args.budget_rank)
        base_new.append(task_loss(base, tasks["new"], exp.device))
        base_old.append(task_loss(base, tasks["old"], exp.device))
        for name, targets in PLACEMENTS.items():
            model, hist, replaced = finetune(base, tasks, seed, finetune_steps, exp.device, rank=ranks[name],
                                             targets=targets)
            runs[name]["new_loss"].append(task_loss(model, tasks["new"], exp.device))
            runs[name]["old_loss"].append(task_loss(model, tasks["old"], exp.device))
            if runs[name]["curve"] is None:
                runs[name]["curve"] = hist["train_loss"]
            info[name] = {"targets": list(targets), "rank": ranks[name], "trainable_params": trainable_params(model),
                          "lora_modules": len(replaced)}

    rows = [[name, info[name]["rank"], info[name]["lora_modules"], f"{info[name]['trainable_params']:,}",
             f"{100 * (info[name]['trainable_params'] / budget - 1):+.1f}%", format_mean_std(runs[name]["new_loss"]),
             format_mean_std(runs[name]["old_loss"])] for name in PLACEMENTS]
    exp.print_table(["targets", "rank", "#Linear", "trainable", "vs budget", "new-task loss", "old-task loss"], rows,
                    title=f"equal-budget LoRA placement, {finetune_steps} steps (budget {budget:,} params; "
                          f"base new {format_mean_std(base_new)})")

    new_mean = {name: mean_std(runs[name]["new_loss"])[0] for name in PLACEMENTS}
    ranking = sorted(PLACEMENTS, key=new_mean.get)
    print("新任务 loss 排名（低 → 高）：" + " < ".join(ranking))
    exp.save_metrics({
        "config": {"model": MODEL_SIZE, "pretrain_steps": pretrain_steps, "finetune_steps": finetune_steps,
                   "batch_size": BATCH, "lora_lr": LORA_LR, "budget_rank": exp.args.budget_rank},
        "budget_params": budget,
        "base": {"new_loss": mean_std(base_new)[0], "old_loss": mean_std(base_old)[0]},
        "placements": {name: {**info[name], **{k: {"mean": mean_std(runs[name][k])[0], "std": mean_std(runs[name][k])[1],
                                                   "values": runs[name][k]} for k in ("new_loss", "old_loss")},
                              "train_curve": runs[name]["curve"]} for name in PLACEMENTS},
        "ranking": ranking,
    })

    set_style()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for name in PLACEMENTS:
        axes[0].plot(runs[name]["curve"], label=f"{name} (r={info[name]['rank']})")
    axes[0].set(title=f"Fine-tuning train loss (seed {exp.seeds[0]})", xlabel="step", ylabel="loss")
    axes[0].legend()
    names = list(PLACEMENTS)
    axes[1].bar(range(len(names)), [new_mean[n] for n in names],
                yerr=[mean_std(runs[n]["new_loss"])[1] for n in names], capsize=4, color="tab:blue")
    axes[1].set_xticks(range(len(names)), [f"{n}\nr={info[n]['rank']}, {info[n]['trainable_params']:,}" for n in names],
                       fontsize=8)
    low = min(new_mean.values())
    axes[1].set_ylim(low - 0.3, max(new_mean.values()) + 0.15)
    axes[1].set(title="Held-out new-task loss at ~equal trainable params", ylabel="loss")
    exp.save_figure(fig, "exp2_where_to_adapt.png")

    spread = max(abs(info[n]["trainable_params"] / budget - 1) for n in PLACEMENTS)
    exp.conclude("四种挂载方案的可训练参数量相差不超过 5%（比较是公平的）", spread <= 0.05,
                 f"最大偏差 {100 * spread:.1f}%（预算 {budget:,}）")
    exp.conclude("参数量相同时，把 LoRA 分散到注意力 + FFN 的所有 Linear 上效果最好", ranking[0] == "attn+FFN",
                 "新任务 loss：" + ", ".join(f"{n} {new_mean[n]:.3f}" for n in ranking))
    exp.conclude("参数量相同时，q,k,v,o 全部挂优于只挂 q,v", new_mean["q,k,v,o"] < new_mean["q,v"],
                 f"q,k,v,o {new_mean['q,k,v,o']:.3f} vs q,v {new_mean['q,v']:.3f}")
    gap = new_mean[ranking[-1]] - new_mean[ranking[0]]
    exp.conclude("挂载位置的影响远小于 LoRA 与基座的差距：最好与最差方案的新任务 loss 相差不到 0.1", gap < 0.1,
                 f"最好 − 最差 = {gap:.3f}；基座 → 最好方案下降 {mean_std(base_new)[0] - new_mean[ranking[0]]:.3f}")
    exp.finish()


if __name__ == "__main__":
    main()
