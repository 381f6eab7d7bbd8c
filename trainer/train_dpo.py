"""DPO：用成对偏好数据（chosen 比 rejected 好）直接调整策略模型，参考模型冻结（Rafailov et al. 2023）。

    python trainer/train_dpo.py --quick
    python trainer/train_dpo.py --data_path dpo.jsonl --from_weight full_sft --beta 0.1

损失 = -log σ(β·[(log π(y_c) - log π_ref(y_c)) - (log π(y_r) - log π_ref(y_r))])；
隐式奖励是 r(y) = β·(log π(y) - log π_ref(y))，所以括号乘上 β 才是两条回答的隐式奖励差（reward margin）。
日志里记录 reward margin 和偏好准确率（margin > 0 的比例）。损失按偏好对平均：梯度累积与多进程按偏好对的个数加权。
"""
import copy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from dataset.lm_dataset import IGNORE_INDEX, DPODataset  # noqa: E402
from trainer.trainer_utils import (  # noqa: E402
    SAMPLES_DIR, Runtime, build_model, build_parser, load_tokenizer_or_exit, parse_args, run_main, seed_everything,
    train,
)


def sequence_logprob(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """每条序列里被标注的 token 的对数概率之和：logits (B, T, V)，labels (B, T) → (B,)。"""
    logits, targets = logits[:, :-1].float(), labels[:, 1:]  # 位置 t 预测第 t+1 个 token
    mask = targets != IGNORE_INDEX
    token_logp = torch.gather(logits.log_softmax(-1), 2, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (token_logp * mask).sum(dim=1)


def dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta: float, positive_lambda: float = 0.0):
    """输入都是 (B,) 的序列对数概率；返回 (loss, reward_margin (B,))。

    positive_lambda > 0 时是 DPO-Positive（DPOP，Pal et al. 2024，论文取 λ = 50）：sigmoid 里再减去
    β·λ·max(0, log π_ref(y_c) − log π(y_c))——chosen 的似然一旦低于参考模型就受罚，
    堵住"把两个回答一起压低也能拉开差距"这条路。默认 0 就是标准 DPO（同样的运算，结果逐位相同）。
    返回的 reward_margin 总是标准的隐式奖励差（不含惩罚项）。"""
    margin = beta * ((policy_chosen - ref_chosen) - (policy_rejected - ref_rejected))
    if positive_lambda == 0:
        return -F.logsigmoid(margin).mean(), margin
    penalty = beta * positive_lambda * (ref_chosen - policy_chosen).clamp(min=0)  # (B,)
    return -F.logsigmoid(margin - penalty).mean(), margin


def preference_pairs(batch) -> int:
    """DPO 的损失按偏好对平均：这个 batch 里有几对。"""
    return len(batch["chosen_ids"])


def make_dpo_step(ref_model, beta: float, positive_lambda: float = 0.0):
    def compute_loss(model, batch):
        ids = torch.cat([batch["chosen_ids"], batch["rejected_ids"]])  # (2B, T)：一次前向算两组
        labels = torch.cat([batch["chosen_labels"], batch["rejected_labels"]])
        policy_chosen, policy_rejected = sequence_logprob(model(ids).logits, labels).chunk(2)
        with torch.no_grad():
            ref_chosen, ref_rejected = sequence_logprob(ref_model(ids).logits, labels).chunk(2)
        loss, margin = dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta, positive_lambda)
        return loss, {"reward_margin": margin.mean().item(), "reward_accuracy": (margin > 0).float().mean().item()}
    return compute_loss


def main(argv=None):
    parser = build_parser("MiniMind DPO 偏好对齐", SAMPLES_DIR / "dpo.jsonl", save_weight="dpo",
                          learning_rate=4e-8, epochs=1, batch_size=4, max_seq_len=1024, from_weight="full_sft")
    parser.add_argument("--beta", type=float, default=0.1, help="β：越大越不允许偏离参考模型")
    args = parse_args(parser, argv, quick_overrides=dict(epochs=2, batch_size=8, learning_rate=1e-3))
    if args.beta <= 0:
        parser.error(f"--beta 必须为正，收到 {args.beta}")
    runtime = Runtime(args)
    seed_everything(args.seed)
    tokenizer = load_tokenizer_or_exit(args)
    dataset = DPODataset(args.data_path, tokenizer, args.max_seq_len, args.skip_bad_lines)
    model = build_model(args, tokenizer)
    ref_model = copy.deepcopy(model).to(runtime.device).eval().requires_grad_(False)  # 参考模型：SFT 模型的冻结副本
    if runtime.is_main:
        print(f"数据 {args.data_path}：{len(dataset)} 对偏好；β={args.beta}；参考模型 = {args.from_weight}（冻结）")
    train(args, runtime, model, dataset, make_dpo_step(ref_model, args.beta), desc="dpo", count_units=preference_pairs)
    runtime.close()


if __name__ == "__main__":
    run_main(main)
