"""知识蒸馏：小模型（学生）学习大模型（老师）在每个位置上的输出分布（Hinton et al. 2015）。

    python trainer/train_distillation.py --quick        # 老师 = --quick 的 SFT 模型（hidden 128），学生 hidden 64
    python trainer/train_distillation.py --teacher_weight full_sft --teacher_hidden_size 768 --hidden_size 512

损失 = α·T²·KL(softmax(z_t/T) ‖ softmax(z_s/T)) + (1-α)·CE(学生, 真实 token)，只在回答的 token 上计算；
乘 T² 是因为软化后梯度缩小了 1/T²，乘回来才能让两项的梯度尺度与 T 无关。
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from dataset.lm_dataset import IGNORE_INDEX, SFTDataset  # noqa: E402
from trainer.trainer_utils import (  # noqa: E402
    SAMPLES_DIR, Runtime, build_model, build_parser, load_tokenizer_or_exit, parse_args, run_main, seed_everything,
    supervised_tokens, train,
)


def distillation_loss(student_logits, teacher_logits, labels, temperature: float, alpha: float):
    """logits (B, T, V)，labels (B, T)；返回 (loss, KL, CE)，都只在 labels != -100 的位置上平均。"""
    s, t, y = student_logits[:, :-1].float(), teacher_logits[:, :-1].float(), labels[:, 1:]
    mask = y != IGNORE_INDEX
    kl = F.kl_div((s / temperature).log_softmax(-1), (t / temperature).log_softmax(-1), log_target=True,
                  reduction="none").sum(-1)  # (B, T-1)：每个位置一个 KL
    kl = (kl * mask).sum() / mask.sum().clamp(min=1)
    ce = F.cross_entropy(s.reshape(-1, s.size(-1)), y.reshape(-1), ignore_index=IGNORE_INDEX)
    return alpha * temperature ** 2 * kl + (1 - alpha) * ce, kl, ce


def make_distill_step(teacher, temperature: float, alpha: float):
    def compute_loss(model, batch):
        with torch.no_grad():
            teacher_logits = teacher(batch["input_ids"]).logits
        loss, kl, ce = distillation_loss(model(batch["input_ids"]).logits, teacher_logits, batch["labels"],
                                         temperature, alpha)
        return loss, {"kl": kl.item(), "ce": ce.item()}
    return compute_loss


def main(argv=None):
    parser = build_parser("MiniMind 知识蒸馏", SAMPLES_DIR / "sft.jsonl", save_weight="distill",
                          learning_rate=5e-4, epochs=2, batch_size=16, max_seq_len=340, from_weight="none")
    parser.add_argument("--teacher_weight", default="full_sft", help="老师：<save_dir> 里的权重名或 .pth 路径")
    parser.add_argument("--teacher_hidden_size", type=int, default=768)
    parser.add_argument("--teacher_num_hidden_layers", type=int, default=16)
    parser.add_argument("--temperature", type=float, default=2.0, help="软化温度 T")
    parser.add_argument("--alpha", type=float, default=0.5, help="KL 项的权重（其余给真实标签的交叉熵）")
    args = parse_args(parser, argv, quick_overrides=dict(hidden_size=64, teacher_hidden_size=128,
                                                          teacher_num_hidden_layers=2))
    if args.temperature <= 0 or not 0 <= args.alpha <= 1:
        parser.error(f"需要 --temperature > 0 且 0 <= --alpha <= 1，收到 T={args.temperature}, α={args.alpha}")
    runtime = Runtime(args)
    seed_everything(args.seed)
    tokenizer = load_tokenizer_or_exit(args)
    dataset = SFTDataset(args.data_path, tokenizer, args.max_seq_len, args.skip_bad_lines)
    teacher_args = argparse.Namespace(**{**vars(args), "hidden_size": args.teacher_hidden_size,
                                         "num_hidden_layers": args.teacher_num_hidden_layers})
    teacher = build_model(teacher_args, tokenizer, from_weight=args.teacher_weight)
    teacher = teacher.to(runtime.device).eval().requires_grad_(False)
    student = build_model(args, tokenizer)
    if runtime.is_main:
        n = lambda m: sum(p.numel() for p in m.parameters()) / 1e6  # noqa: E731
        print(f"老师 {args.teacher_weight}（{n(teacher):.2f}M）→ 学生（{n(student):.2f}M）；T={args.temperature}，α={args.alpha}")
    # 两项都是按回答 token 平均的：梯度累积与多进程按监督 token 数加权
    train(args, runtime, student, dataset, make_distill_step(teacher, args.temperature, args.alpha), desc="distill",
          count_units=supervised_tokens)
    runtime.close()


if __name__ == "__main__":
    run_main(main)
