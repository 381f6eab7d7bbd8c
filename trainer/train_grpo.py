"""GRPO（Group Relative Policy Optimization，Shao et al. 2024 "DeepSeekMath"）及其变体 DAPO、CISPO。

    python trainer/train_grpo.py --quick                      # 可验证任务（取最大/取最小/数字母），CPU 约 2 分钟
    python trainer/train_grpo.py --quick --loss_type dapo     # 或 cispo
    torchrun --nproc_per_node=2 trainer/train_grpo.py --quick --device cpu
    python trainer/train_grpo.py --data_path rlaif.jsonl --reward_model_path /path/to/reward_model --from_weight reason

每一步：每个 prompt 采样 G 条回答 → 打分 → 组内优势 Â_i = (r_i − mean(r)) / std(r)（不要 critic：同组的平均分就是基线）
→ 裁剪的重要性比率 + β·k3 KL(π‖π_ref)。同一批采样可做 μ 次优化（--num_iterations；μ = 1 即在策略上，比率恒为 1）。
--loss_type：grpo（回答内平均再对回答平均）、dapo（非对称裁剪 ε_high=0.28、token 级平均、不用 KL）、
cispo（裁剪并截断梯度的重要性权重乘 REINFORCE 项，MiniMind 现在的默认）。公式与出处见 trainer/rl/losses.py。
日志每步记：奖励均值/标准差、答对率、全组奖励相同（优势为 0）的组占比、KL、裁剪比例、熵、回答长度；
开始时与每 --eval_interval 步记留出集的贪心准确率（eval_accuracy）。
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from dataset.rl_dataset import RLPromptDataset  # noqa: E402
from trainer.rl.losses import group_advantages, k3_kl, masked_mean, policy_loss  # noqa: E402
from trainer.rl.rollout import RolloutCache, completion_logprobs, sample_replies  # noqa: E402
from trainer.rl.startup import (  # noqa: E402
    QUICK_RL, RewardFunction, add_iteration_args, add_rl_args, check_iteration_args, check_rl_args, frozen_copy,
    load_policy, make_evaluator, reply_prefix,
)
from trainer.trainer_utils import (  # noqa: E402
    SAMPLES_DIR, Runtime, build_parser, load_tokenizer_or_exit, parse_args, run_main, seed_everything,
    train,
)

# 每种 loss 的默认裁剪范围与 β（命令行给出时以命令行为准）
LOSS_DEFAULTS = {
    "grpo": dict(epsilon=0.2, epsilon_high=0.2, beta=0.02),
    "dapo": dict(epsilon=0.2, epsilon_high=0.28, beta=0.0),  # Clip-Higher；DAPO 去掉了 KL 项
    "cispo": dict(epsilon=1.0, epsilon_high=4.0, beta=0.02),  # 权重 clip 到 [0, 5]：不设下界（MiniMax-M1 §3.1）
}


class GRPOStep:
    """train() 的 compute_loss(model, batch)：batch 是一批 prompt（index 指回数据行）。
    采样、打分、组内优势、参考模型与旧策略的对数概率在 rollout() 里算好，μ 次优化共用（RolloutCache）。"""

    def __init__(self, policy, reference, tokenizer, dataset, reward_fn, args, prefix):
        self.policy, self.reference, self.tokenizer, self.dataset = policy, reference, tokenizer, dataset
        self.reward_fn, self.args, self.prefix = reward_fn, args, prefix
        self.cache = RolloutCache(args.accumulation_steps, args.num_iterations, self.rollout)

    def rollout(self, batch):
        a, G = self.args, self.args.num_generations
        rollout = sample_replies(self.policy, self.tokenizer, batch["prompt_ids"], batch["prompt_mask"], G,
                                 a.max_gen_len, a.temperature, a.top_p, self.prefix)
        rows = [self.dataset.row(i) for i in batch["index"].tolist() for _ in range(G)]
        rewards = self.reward_fn(rollout, rows)
        advantages = group_advantages(rewards["reward"], G, scale_std=bool(a.scale_rewards))
        with torch.no_grad():
            ref_logp = completion_logprobs(self.reference, rollout) if self.reference is not None else None
            old_logp = completion_logprobs(self.policy, rollout) if a.num_iterations > 1 else None
        zero_groups = (rewards["reward"].view(-1, G).std(dim=1) == 0).float().mean().item()
        return dict(rollout=rollout, rewards=rewards, advantages=advantages, ref_logp=ref_logp, old_logp=old_logp,
                    zero_groups=zero_groups)

    def __call__(self, model, batch):
        a = self.args
        buf = self.cache.get(batch)
        rollout, mask = buf["rollout"], buf["rollout"].completion_mask
        logp, entropy = completion_logprobs(model, rollout, with_entropy=True)  # (N, R)，带梯度
        old_logp = buf["old_logp"] if buf["old_logp"] is not None else logp.detach()  # μ=1：比率恒为 1
        kl = k3_kl(logp, buf["ref_logp"]) if buf["ref_logp"] is not None else None
        loss, stats = policy_loss(logp, old_logp, buf["advantages"], mask, a.loss_type, a.epsilon, a.epsilon_high,
                                  kl, a.beta)
        rewards = buf["rewards"]
        extras = {"reward": rewards["reward"].mean().item(), "reward_std": rewards["reward"].std().item(),
                  "zero_adv_groups": buf["zero_groups"], "clip_fraction": stats["clip_fraction"],
                  "entropy": masked_mean(entropy, mask).item(), "reply_len": rollout.n_tokens.float().mean().item(),
                  "kl": masked_mean(kl, mask).item() if kl is not None else 0.0}
        if "correct" in rewards:
            extras["accuracy"] = rewards["correct"].mean().item()
        return loss, extras


def build(argv=None):
    parser = build_parser("MiniMind GRPO / DAPO / CISPO", SAMPLES_DIR / "rl_train.jsonl", save_weight="grpo",
                          learning_rate=3e-7, epochs=1, batch_size=2, max_seq_len=256, from_weight="reason")
    add_rl_args(parser, num_generations=8, beta=None)
    add_iteration_args(parser)
    parser.add_argument("--loss_type", choices=sorted(LOSS_DEFAULTS), default="cispo", help="策略损失（见模块说明）")
    parser.add_argument("--epsilon", type=float, default=None, help="裁剪下界 1−ε（默认按 --loss_type，见 LOSS_DEFAULTS）")
    parser.add_argument("--epsilon_high", type=float, default=None, help="裁剪上界 1+ε_high（默认按 --loss_type）")
    parser.add_argument("--scale_rewards", type=int, choices=[0, 1], default=1,
                        help="1：组内优势除以标准差（GRPO）；0：只减均值（Dr. GRPO, Liu et al. 2025）")
    args = parse_args(parser, argv, quick_overrides=QUICK_RL)
    for key, value in LOSS_DEFAULTS[args.loss_type].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    check_rl_args(parser, args)
    check_iteration_args(parser, args)
    return args


def run(args):
    runtime = Runtime(args)
    seed_everything(args.seed)
    tokenizer = load_tokenizer_or_exit(args)
    dataset = RLPromptDataset(args.data_path, tokenizer, args.max_seq_len, args.skip_bad_lines, bool(args.thinking))
    model = load_policy(args, tokenizer, runtime)
    reference = frozen_copy(model, runtime.device) if args.beta > 0 else None
    reward_fn = RewardFunction(args, tokenizer, runtime.device)
    prefix = reply_prefix(dataset)
    if runtime.is_main:
        print(f"数据 {args.data_path}：{len(dataset)} 个 prompt；每个采 G={args.num_generations} 条；loss={args.loss_type}"
              f"（ε={args.epsilon}, ε_high={args.epsilon_high}, β={args.beta}, μ={args.num_iterations}）；"
              f"从 {args.from_weight} 开始；进程数 {runtime.world_size}")
    step_fn = GRPOStep(model, reference, tokenizer, dataset, reward_fn, args, prefix)
    train(args, runtime, model, dataset, step_fn, desc=args.loss_type,
          evaluate=make_evaluator(model, tokenizer, args, prefix))
    runtime.close()


def main(argv=None):
    run(build(argv))


if __name__ == "__main__":
    run_main(main)
