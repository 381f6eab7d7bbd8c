"""实验 2：SFT 的 loss 只算助手的回答，还是整段对话都算？

先在 dataset/samples/pretrain.jsonl 上预训练一个小 MiniMind（hidden 128、2 层），再从它的同一份拷贝出发做两种 SFT：
  - masked：   labels 来自 SFTDataset（只有助手回答 + <|im_end|> 计 loss，trainer/train_full_sft.py 的做法）；
  - all-token：labels = input_ids（除 padding 外全部计 loss，用户的问题、系统提示、角色头也要模型去预测）。
训练数据、步数、学习率、种子完全相同。在留出的 48 段对话上测：
  1. 模型对"用户说的话"的 loss（all-token 训练会不会把容量花在建模问题上？）与对助手回答的 loss；
  2. 贪心回答留出的问题：以 <|im_end|> 结束且不含模板标记的比例、与参考答案的 token F1、完全答对的比例。
"""
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[4]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import matplotlib.pyplot as plt  # noqa: E402

from modules.common.experiment_base import Experiment, format_mean_std, mean_std  # noqa: E402
from modules.common.visualization import set_style  # noqa: E402
from sft_lab import (  # noqa: E402
    MODEL_SIZE, add_step_args, answer_metrics, answer_prompts, finetune, load_sft_data, pretrain,
    role_losses, step_counts,
)

VARIANTS = {"masked": False, "all-token": True}  # 名字 → finetune(all_tokens=...)


def main():
    exp = Experiment(__file__, extra_args=add_step_args, description=(
        "SFT 实验 2：只对助手回答算 loss（masked）vs 整段对话都算 loss（all-token）。\n"
        "比较留出对话上用户文本与助手回答的 loss、守模板的比例和回答质量。"))
    pretrain_steps, sft_steps = step_counts(exp)
    tokenizer, data, train_idx, heldout_idx, prompts = load_sft_data()

    names = ["pretrained"] + list(VARIANTS)
    keys = ("user_loss", "assistant_loss", "on_template", "ended", "f1", "exact", "mean_tokens")
    runs = {name: {k: [] for k in keys} for name in names}
    curves, samples = {name: [] for name in VARIANTS}, {}
    for seed in exp.seeds:
        Experiment.seed_everything(seed)
        base, _ = pretrain(tokenizer, seed, pretrain_steps, exp.device)
        models = {"pretrained": base}
        for name, all_tokens in VARIANTS.items():
            models[name], hist = finetune(base, data, train_idx, heldout_idx, seed, sft_steps, exp.device, all_tokens)
            curves[name].append({"val_steps": hist["val_steps"], "val_loss": hist["val_loss"]})
        for name, model in models.items():
            losses = role_losses(model, data, heldout_idx, exp.device)
            answers = answer_prompts(model, tokenizer, prompts, exp.device)
            summary = answer_metrics(answers)
            runs[name]["user_loss"].append(losses["user"])
            runs[name]["assistant_loss"].append(losses["assistant"])
            for k in ("on_template", "ended", "f1", "exact", "mean_tokens"):
                runs[name][k].append(summary[k])
            if seed == exp.seeds[0]:
                samples[name] = answers[:6]

    exp.print_table(
        ["model", "user-text loss", "assistant loss", "on template", "ends <|im_end|>", "token F1", "exact",
         "answer tokens"],
        [[name] + [format_mean_std(runs[name][k], 3) for k in keys] for name in names],
        title=f"Held-out conversations ({len(prompts)}), pretrain {pretrain_steps} + SFT {sft_steps} steps, "
              f"{len(exp.seeds)} seed(s)")
    print("\n同样的留出问题（第一个种子）：")
    for i, a in enumerate(samples["masked"]):
        print(f"  问：{a['prompt']}\n    参考：{a['reference']}\n    masked：{a['answer']!r}\n"
              f"    all-token：{samples['all-token'][i]['answer']!r}")

    mean = {name: {k: mean_std(v)[0] for k, v in r.items()} for name, r in runs.items()}
    exp.save_metrics({
        "pretrain_steps": pretrain_steps, "sft_steps": sft_steps,
        "model": {**MODEL_SIZE, "vocab_size": tokenizer.vocab_size},
        "n_train_conversations": len(train_idx), "n_heldout": len(prompts),
        "results": {name: {k: {"mean": mean_std(v)[0], "std": mean_std(v)[1], "runs": v} for k, v in r.items()}
                    for name, r in runs.items()},
        "curves": curves,
        "samples": samples,
    })

    # ---- 图：左 = 留出集上助手回答的 loss 曲线；中 = 分角色的 loss；右 = 回答质量 ----
    set_style()
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for name in VARIANTS:
        c = curves[name]
        axes[0].plot(c[0]["val_steps"], [sum(x["val_loss"][i] for x in c) / len(c) for i in range(len(c[0]["val_steps"]))],
                     marker=".", label=name)
    axes[0].set_xlabel("SFT step")
    axes[0].set_ylabel("held-out assistant-token loss")
    axes[0].set_title("Validation loss during SFT (same yardstick)")
    axes[0].legend()
    width = 0.27
    for j, name in enumerate(names):
        for i, k in enumerate(("user_loss", "assistant_loss")):
            m, s = mean_std(runs[name][k])
            axes[1].bar(i + (j - 1) * width, m, width, yerr=s, capsize=3, color=f"C{j}", label=name if i == 0 else None)
    axes[1].set_xticks([0, 1], ["user text", "assistant reply"])
    axes[1].set_ylabel("cross-entropy on held-out tokens")
    axes[1].set_title("Who does the model learn to predict?")
    axes[1].legend()
    for j, name in enumerate(names):
        for i, k in enumerate(("on_template", "f1", "exact")):
            m, s = mean_std(runs[name][k])
            axes[2].bar(i + (j - 1) * width, m, width, yerr=s, capsize=3, color=f"C{j}", label=name if i == 0 else None)
    axes[2].set_xticks([0, 1, 2], ["on template", "token F1", "exact match"])
    axes[2].set_ylim(0, 1.05)
    axes[2].set_title("Greedy answers to held-out prompts")
    axes[2].legend()
    exp.save_figure(fig, "exp2_loss_masking.png")

    # ---- 结论（全部由上面的测量算出）----
    m, a = mean["masked"], mean["all-token"]
    exp.conclude("all-token 训练把容量花在了建模用户的问题上：它对留出对话里用户文本的 loss 远低于 masked",
                 a["user_loss"] < m["user_loss"] - 0.5,
                 f"用户文本 loss：all-token {a['user_loss']:.3f} vs masked {m['user_loss']:.3f}"
                 f"（预训练模型 {mean['pretrained']['user_loss']:.3f}）")
    exp.conclude("只算助手回答的 loss（masked）在留出的助手回答上 loss 更低",
                 m["assistant_loss"] < a["assistant_loss"],
                 f"助手回答 loss：masked {format_mean_std(runs['masked']['assistant_loss'], 3)} vs "
                 f"all-token {format_mean_std(runs['all-token']['assistant_loss'], 3)}")
    exp.conclude("masked 的回答与参考答案更像（token F1 更高）",
                 m["f1"] > a["f1"],
                 f"token F1：masked {format_mean_std(runs['masked']['f1'], 3)} vs "
                 f"all-token {format_mean_std(runs['all-token']['f1'], 3)}")
    exp.conclude("masked 守模板（以 <|im_end|> 结束、无模板标记）的比例高于 all-token",
                 m["on_template"] > a["on_template"],
                 f"守模板比例：masked {m['on_template']:.1%} vs all-token {a['on_template']:.1%}"
                 f"（预训练模型 {mean['pretrained']['on_template']:.1%}）")
    exp.finish()


if __name__ == "__main__":
    main()
