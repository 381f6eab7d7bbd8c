"""LoRA 实验 1：全参数微调 vs 不同 rank 的 LoRA——新任务 loss、可训练参数、优化器状态内存、每步耗时。

    python exp1_lora_rank.py --quick      # 2 核 CPU 约半分钟：rank 1 / 16 / 64，各微调 30 步
    python exp1_lora_rank.py              # 完整：rank 1 / 4 / 16 / 64，3 个种子

设计：先在 dataset/samples/pretrain.jsonl 上预训练一个小 MiniMind 作基座（旧任务），
再在 dataset/samples/sft.jsonl 的对话上微调（新任务：按对话模板回答，只对回答算 loss）。
LoRA 挂在 MiniMind 默认的位置（所有方阵 Linear：q_proj、o_proj），与 trainer/train_lora.py 相同。
同样的步数下比较：留出对话上的新任务 loss、可训练参数量、AdamW 实际存下的状态字节数、实测每步耗时，
并逐位检查 LoRA 训练后基座权重是否完全没动。
每步耗时按 modules/common/timing.py 在同一进程里交替计时（各方案轮流、逐窗口配对），"快多少"经共享噪声检验。
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lora_lab import (  # noqa: E402  (lora_lab 会把仓库根目录放进 sys.path)
    FULL_LR, LORA_LR, MODEL_SIZE, BATCH, attach, batch_losses, finetune, frozen_state, load_tasks, load_tokenizer,
    make_get_batch, make_train_step, pretrain_base, task_loss, trainable_params, training_state_bytes,
)

import torch  # noqa: E402

from modules.common.experiment_base import Experiment, format_mean_std, mean_std  # noqa: E402
from modules.common.noise import compare_runs  # noqa: E402
from modules.common.timing import alternating_timings, compare_speed, speed_ratio  # noqa: E402
from modules.common.visualization import plt, set_style  # noqa: E402


EVAL_BATCH = 1  # quick 模式单种子时的配对噪声：新任务的 48 条留出对话逐条配对（每条对话一个评估单元）
SPEEDUP_BOUND = 2.0  # "LoRA 每步并不比全参数快多少"的界：全参数每步用时不到 LoRA 的 2 倍（看结果之前定好）


def add_args(parser):
    parser.add_argument("--pretrain-steps", type=int, default=None, help="基座预训练步数（默认 quick 80 / 完整 200）")
    parser.add_argument("--finetune-steps", type=int, default=None, help="每种微调的步数（默认 quick 30 / 完整 60）")
    parser.add_argument("--ranks", type=int, nargs="+", default=None,
                        help="要比较的 LoRA rank（默认 quick 1 16 64 / 完整 1 4 16 64）")


def main():
    exp = Experiment(__file__, extra_args=add_args, description=(
        "LoRA 实验 1：全参数微调 vs rank 1/4/16/64 的 LoRA：\n"
        "新任务 loss、可训练参数、AdamW 状态字节数（实测）、每步耗时（实测），以及基座权重是否逐位不变。"))
    pretrain_steps = (80 if exp.quick else 200) if exp.args.pretrain_steps is None else exp.args.pretrain_steps
    finetune_steps = (30 if exp.quick else 60) if exp.args.finetune_steps is None else exp.args.finetune_steps
    ranks = sorted(set(exp.args.ranks or ([1, 16, 64] if exp.quick else [1, 4, 16, 64])))
    if pretrain_steps < 1 or finetune_steps < 1:
        raise SystemExit(f"--pretrain-steps 与 --finetune-steps 必须 >= 1（收到 {pretrain_steps}、{finetune_steps}）")
    if min(ranks) < 1:
        raise SystemExit(f"--ranks 必须都是正整数（收到 {ranks}）")

    tokenizer = load_tokenizer()
    tasks = load_tasks(tokenizer)
    variants = ["full FT"] + [f"LoRA r={r}" for r in ranks]
    rank_of = {"full FT": None, **{f"LoRA r={r}": r for r in ranks}}
    runs = {v: {"new_loss": [], "old_loss": [], "new_batches": None, "curve": None} for v in variants}
    info, base_new, base_old, train_steps = {}, [], [], {}
    for seed in exp.seeds:
        Experiment.seed_everything(seed)
        base, _ = pretrain_base(tasks, seed, pretrain_steps, exp.device)
        base_new.append(task_loss(base, tasks["new"], exp.device))
        base_old.append(task_loss(base, tasks["old"], exp.device))
        for v in variants:
            rank = rank_of[v]
            probe, replaced = attach(base, rank)  # 基座的一份拷贝，只用来量状态字节、计时
            frozen_before = frozen_state(probe)
            step, optimizer = make_train_step(probe, make_get_batch(tasks["new"], BATCH, seed), exp.device)
            step()
            state_bytes = training_state_bytes(probe, optimizer)
            if seed == exp.seeds[0]:
                train_steps[v] = step
            model, hist, _ = finetune(base, tasks, seed, finetune_steps, exp.device, rank=rank)
            frozen_after = frozen_state(model)
            unchanged = all(torch.equal(frozen_before[n], frozen_after[n]) for n in frozen_before)
            runs[v]["new_loss"].append(task_loss(model, tasks["new"], exp.device))
            runs[v]["old_loss"].append(task_loss(model, tasks["old"], exp.device))
            if runs[v]["curve"] is None:
                runs[v]["curve"] = hist["train_loss"]
                runs[v]["new_batches"] = batch_losses(model, tasks["new"], exp.device, batch_size=EVAL_BATCH)[0]
            info[v] = {"rank": rank, "trainable_params": trainable_params(model), **state_bytes,
                       "lora_modules": replaced, "frozen_params": sum(t.numel() for t in frozen_after.values()),
                       "frozen_unchanged": info.get(v, {}).get("frozen_unchanged", True) and unchanged}
    total_params = sum(p.numel() for p in base.parameters())
    # 每步耗时：第一个种子的各方案在同一进程里轮流计时（逐窗口配对），见 modules/common/timing.py
    windows = 5 if exp.quick else 9
    step_s = alternating_timings(train_steps, exp.device, windows=windows, calls_per_window=2)
    for v in variants:
        runs[v]["step_ms"] = [1000 * t for t in step_s[v]]

    rows = []
    for v in variants:
        n = info[v]["trainable_params"]
        rows.append([v, f"{n:,}", f"{100 * n / total_params:.2f}%", f"{info[v]['optimizer_state_bytes'] / 1024:.1f}",
                     format_mean_std(runs[v]["step_ms"], 3), format_mean_std(runs[v]["new_loss"]),
                     format_mean_std(runs[v]["old_loss"])])
    exp.print_table(["variant", "trainable", "of total", "AdamW state KiB", f"step ms ({windows} windows)",
                     "new-task loss", "old-task loss"],
                    rows, title=f"{finetune_steps} fine-tuning steps (base: new {format_mean_std(base_new)}, "
                                f"old {format_mean_std(base_old)})")

    new_mean = {v: mean_std(runs[v]["new_loss"])[0] for v in variants}
    step_mean = {v: mean_std(runs[v]["step_ms"])[0] for v in variants}  # 各窗口的平均（图上用）
    lora = variants[1:]
    exp.save_metrics({
        "config": {"model": MODEL_SIZE, "pretrain_steps": pretrain_steps, "finetune_steps": finetune_steps,
                   "batch_size": BATCH, "full_lr": FULL_LR, "lora_lr": LORA_LR, "ranks": ranks,
                   "lora_targets": "MiniMind default: square Linear layers (q_proj, o_proj)"},
        "total_params": total_params,
        "base": {"new_loss": dict(zip(("mean", "std"), mean_std(base_new)), values=base_new),
                 "old_loss": dict(zip(("mean", "std"), mean_std(base_old)), values=base_old)},
        "variants": {v: {**info[v], **{k: {"mean": mean_std(runs[v][k])[0], "std": mean_std(runs[v][k])[1],
                                            "values": runs[v][k]} for k in ("new_loss", "old_loss", "step_ms")},
                         "new_loss_batches_first_seed": runs[v]["new_batches"],
                         "train_curve": runs[v]["curve"]} for v in variants},
        "timing": {"windows": windows, "calls_per_window": 2, "method": "alternating, modules/common/timing.py"},
    })

    set_style()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for v in variants:
        axes[0].plot(runs[v]["curve"], label=v)
    axes[0].set(title=f"Fine-tuning train loss (seed {exp.seeds[0]})", xlabel="step", ylabel="loss")
    axes[0].legend()
    params = [info[v]["trainable_params"] for v in variants]
    axes[1].errorbar(params, [new_mean[v] for v in variants],
                     yerr=[mean_std(runs[v]["new_loss"])[1] for v in variants], fmt="o", capsize=3)
    for v, p in zip(variants, params):
        axes[1].annotate(v, (p, new_mean[v]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    axes[1].axhline(mean_std(base_new)[0], color="gray", ls="--", label="base (no fine-tuning)")
    axes[1].set(xscale="log", title="Held-out new-task loss vs trainable params", xlabel="trainable params (log)",
                ylabel="loss")
    axes[1].legend()
    kib = [info[v]["optimizer_state_bytes"] / 1024 for v in variants]
    axes[2].bar(variants, kib, color="tab:orange")
    axes[2].set(yscale="log", title="AdamW state (measured) and step time", ylabel="optimizer state KiB (log)")
    axes[2].tick_params(axis="x", rotation=30)
    twin = axes[2].twinx()
    twin.plot(variants, [step_mean[v] for v in variants], "ko-", label="step ms")
    twin.set_ylabel("step time ms")
    twin.set_ylim(bottom=0)
    twin.legend(loc="upper right")
    exp.save_figure(fig, "exp1_lora_rank.png")

    # 结论：每一条都由上面的测量算出
    unchanged = {v: info[v]["frozen_unchanged"] for v in lora}
    exp.conclude("LoRA 只训练适配器：训练后基座的全部冻结参数逐位不变", all(unchanged.values()),
                 "; ".join(f"{v}: {'unchanged' if ok else 'CHANGED'} ({info[v]['frozen_params']:,} frozen)"
                           for v, ok in unchanged.items()))
    per_rank = {info[v]["rank"]: info[v]["trainable_params"] for v in lora}
    unit = per_rank[ranks[0]] / ranks[0]
    exp.conclude("可训练参数量与 rank 成正比（每个 rank 单位 = Σ(in+out)）", all(n == r * unit for r, n in per_rank.items()),
                 ", ".join(f"r={r}: {n:,} = {n / unit:g}×{unit:g}" for r, n in per_rank.items()))
    exp.conclude("AdamW 状态实测 = 2 个 fp32 × 可训练参数（8 字节/参数），LoRA 因此省掉绝大部分优化器内存",
                 all(info[v]["optimizer_state_bytes"] == 8 * info[v]["trainable_params"] for v in variants),
                 ", ".join(f"{v}: {info[v]['optimizer_state_bytes']:,} B" for v in variants))
    def verdict(a, b):  # "a 的新任务 loss 比 b 低"：多种子按种子配对，单种子按留出对话的固定批次配对
        return compare_runs(runs[a]["new_loss"], runs[b]["new_loss"], "less", runs[a]["new_batches"], runs[b]["new_batches"])

    best_lora = min(lora, key=new_mean.get)
    exp.conclude_verdict(f"同样 {finetune_steps} 步，最大 rank 的 LoRA 在新任务上比 rank {ranks[0]} 更好（rank 越大越接近全参微调）",
                         verdict(lora[-1], lora[0]),
                         f"{lora[-1]} {new_mean[lora[-1]]:.3f} vs {lora[0]} {new_mean[lora[0]]:.3f}; full FT {new_mean['full FT']:.3f}")
    exp.conclude_verdict(f"同样 {finetune_steps} 步，全参数微调的新任务 loss 低于所有 LoRA（与其中最好的比）",
                         verdict("full FT", best_lora),
                         f"full FT {new_mean['full FT']:.3f} vs best LoRA ({best_lora}) {new_mean[best_lora]:.3f}")
    smallest = lora[0]
    ratio = speed_ratio(step_s[smallest], step_s["full FT"])
    exp.conclude_verdict(f"这个小模型在 CPU 上，LoRA（{smallest}）每步的加速不到 {SPEEDUP_BOUND:g} 倍"
                         "（反向仍要穿过整个网络；省的是冻结权重的梯度和优化器更新）",
                         compare_speed(step_s["full FT"], [SPEEDUP_BOUND * t for t in step_s[smallest]]),
                         f"全参数 / LoRA 每步用时之比（各窗口的中位数）{ratio:.2f}×；step ms: "
                         + ", ".join(f"{v} {step_mean[v]:.1f}" for v in variants))
    exp.finish()


if __name__ == "__main__":
    main()
