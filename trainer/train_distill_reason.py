"""推理蒸馏（reasoning distillation）：在 "<think>\\n草稿\\n</think>\\n<answer>\\n答案\\n</answer>" 格式的回答上做 SFT，
让模型学会先写思考、再给答案（DeepSeek-R1 用大模型的推理轨迹这样教小模型；MiniMind 的 train_distill_reason 同理）。

    python trainer/train_distill_reason.py --quick      # 从 task_sft（只会直接给答案）开始 → out/reason_128.pth
    python trainer/train_distill_reason.py --data_path r1_mix_1024.jsonl --from_weight dpo --tag_weight 10

与普通 SFT 的唯一区别：四个标签 token 的 loss 乘以 --tag_weight（默认 10），其余回答 token 为 1，再按权重平均。
开始时与每 --eval_interval 步在留出题上贪心生成，记格式完全正确的回答占比（eval_format）与答对率（eval_accuracy）。
--quick 的起点是 RL 脚本共用的 task_sft（缺了先训练它，见 trainer/rl/startup.py）。
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch.nn.functional as F  # noqa: E402

from dataset.reason_dataset import ReasonSFTDataset  # noqa: E402
from dataset.rl_dataset import RLPromptDataset  # noqa: E402
from trainer.rl.evaluate import evaluate_tasks  # noqa: E402
from trainer.rl.startup import QUICK_START, ensure_quick_start  # noqa: E402
from trainer.trainer_utils import (  # noqa: E402
    SAMPLES_DIR, Runtime, build_model, build_parser, load_tokenizer_or_exit, parse_args, run_main, seed_everything,
    train,
)

# --quick：从 task_sft 开始，序列放长到装得下一条推理回答
QUICK = dict(from_weight=QUICK_START, max_seq_len=64, epochs=8, batch_size=32, learning_rate=3e-3, save_interval=50,
             eval_interval=50, eval_limit=90, max_gen_len=48)


def weighted_lm_loss(model, batch):
    """下一个 token 的交叉熵，按 loss_weight 加权平均（labels 为 -100 的位置权重为 0）。"""
    out = model(batch["input_ids"])
    logits, targets, weight = out.logits[:, :-1].float(), batch["labels"][:, 1:], batch["loss_weight"][:, 1:]
    ce = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100,
                         reduction="none").view_as(weight)  # (B, T-1)
    loss = (ce * weight).sum() / weight.sum().clamp(min=1)
    plain = (ce * (weight > 0)).sum() / (weight > 0).sum().clamp(min=1)
    return loss + out.aux_loss, {"ce": plain.item()}


def build(argv=None):
    parser = build_parser("MiniMind 推理蒸馏（思考格式 SFT）", SAMPLES_DIR / "reason_sft.jsonl", save_weight="reason",
                          learning_rate=1e-6, epochs=1, batch_size=8, max_seq_len=720, from_weight="dpo")
    parser.add_argument("--tag_weight", type=float, default=10.0, help="<think>/<answer> 等标签 token 的 loss 权重")
    parser.add_argument("--eval_data_path", type=Path, default=SAMPLES_DIR / "rl_eval.jsonl", help="评测格式与答对率的留出题")
    parser.add_argument("--eval_interval", type=int, default=500, help="每多少步评测一次")
    parser.add_argument("--eval_limit", type=int, default=None, help="只评测前多少题（默认全部）")
    parser.add_argument("--max_gen_len", type=int, default=64, help="评测时每条回答最多生成多少 token")
    args = parse_args(parser, argv, quick_overrides=QUICK)
    if args.tag_weight <= 0 or args.eval_interval <= 0:
        parser.error(f"--tag_weight 与 --eval_interval 必须为正，收到 {args.tag_weight}、{args.eval_interval}")
    return args


def make_format_evaluator(model, tokenizer, args):
    prompts = RLPromptDataset(args.eval_data_path, tokenizer, max_prompt_len=64)

    def evaluate(step: int) -> dict:
        return evaluate_tasks(model, tokenizer, prompts, args.max_gen_len, limit=args.eval_limit)
    return evaluate


def run(args):
    ensure_quick_start(args)
    runtime = Runtime(args)
    seed_everything(args.seed)
    tokenizer = load_tokenizer_or_exit(args)
    dataset = ReasonSFTDataset(args.data_path, tokenizer, args.max_seq_len, args.skip_bad_lines, args.tag_weight)
    model = build_model(args, tokenizer)
    if runtime.is_main:
        print(f"数据 {args.data_path}：{len(dataset)} 段推理对话；从 {args.from_weight} 开始；标签权重 {args.tag_weight}")
    train(args, runtime, model, dataset, weighted_lm_loss, desc="reason",
          evaluate=make_format_evaluator(model, tokenizer, args))
    runtime.close()


def main(argv=None):
    run(build(argv))


if __name__ == "__main__":
    run_main(main)
