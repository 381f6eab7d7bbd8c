"""PPO（Schulman et al. 2017）用于语言模型（InstructGPT 的做法，Ouyang et al. 2022）：actor + critic + 冻结的参考模型 + 奖励。

    python trainer/train_ppo.py --quick                  # 可验证奖励（取最大/取最小/数字母），CPU 约 2 分钟
    python trainer/train_ppo.py --reward_model_path reward --data_path rlaif.jsonl --from_weight reason

每一步：每个 prompt 采 1 条回答 → 奖励 r（验证器，或 --reward_model_path 的奖励模型）
→ 逐 token 奖励：每个 token −β·(log π_old − log π_ref)（KL 惩罚折进奖励），最后一个 token 再加 r
→ critic 给出每个位置的价值 V(s_t) → GAE(γ, λ) 得到优势与回报（Schulman 2015 Eq. 16）
→ 裁剪的策略损失（Schulman 2017 Eq. 7）+ vf_coef · 裁剪的价值损失。同一批采样可优化 μ 次（--num_iterations）。
critic 从起点模型（SFT）的主干复制而来、标量头置 0：它已经能读懂 prompt 和回答，只需学一个线性读出；
从奖励模型初始化（InstructGPT 的做法）也可以，但默认奖励来自验证器，没有奖励模型。
保存：<名>_<hidden>.pth 是 actor（与其他阶段同格式），<名>_critic_<hidden>.pth 是 critic。
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from dataset.rl_dataset import RLPromptDataset  # noqa: E402
from model.checkpoint import save_checkpoint  # noqa: E402
from trainer.rl.losses import gae, masked_mean, policy_loss, value_loss  # noqa: E402
from trainer.rl.rollout import RolloutCache, completion_logprobs, logprobs_from_logits, sample_replies  # noqa: E402
from trainer.rl.startup import (  # noqa: E402
    QUICK_RL, RewardFunction, add_iteration_args, add_rl_args, check_iteration_args, check_rl_args, frozen_copy,
    load_policy, make_evaluator, reply_prefix,
)
from trainer.rl.value_head import ScalarHeadModel  # noqa: E402
from trainer.trainer_utils import (  # noqa: E402
    SAMPLES_DIR, Runtime, build_parser, load_tokenizer_or_exit, parse_args, run_main, seed_everything, train,
    weight_path,
)


class ActorCritic(nn.Module):
    """把 actor 与 critic 包成一个模块：一个优化器、一次 DDP 前向同时给出回答位置的 logits 与每个位置的价值。"""

    def __init__(self, actor, critic):
        super().__init__()
        self.actor, self.critic = actor, critic

    def forward(self, sequences, attention_mask, logits_to_keep: int):
        logits = self.actor(sequences, attention_mask=attention_mask, logits_to_keep=logits_to_keep).logits
        return logits, self.critic(sequences, attention_mask)  # (N, K, V), (N, T)


def completion_values(values: torch.Tensor, prompt_len: int, R: int) -> torch.Tensor:
    """(N, P+R) → (N, R)：生成第 t 个回答 token 之前的状态是位置 P−1+t。"""
    return values[:, prompt_len - 1:prompt_len - 1 + R]


class PPOStep:
    def __init__(self, actor_critic, reference, tokenizer, dataset, reward_fn, args, prefix):
        self.ac, self.reference, self.tokenizer, self.dataset = actor_critic, reference, tokenizer, dataset
        self.reward_fn, self.args, self.prefix = reward_fn, args, prefix
        self.cache = RolloutCache(args.accumulation_steps, args.num_iterations, self.rollout)

    @torch.no_grad()
    def rollout(self, batch):
        a = self.args
        ro = sample_replies(self.ac.actor, self.tokenizer, batch["prompt_ids"], batch["prompt_mask"], 1,
                            a.max_gen_len, a.temperature, a.top_p, self.prefix)
        rows = [self.dataset.row(i) for i in batch["index"].tolist()]
        rewards = self.reward_fn(ro, rows)
        mask, R = ro.completion_mask.float(), ro.completion_mask.size(1)
        logits, values = self.ac(ro.sequences, ro.attention_mask, R + 1)
        old_logp = logprobs_from_logits(logits, ro.completion_ids)
        old_values = completion_values(values, ro.prompt_len, R) * mask
        kl = old_logp - completion_logprobs(self.reference, ro)  # (N, R)：逐 token 的 log(π/π_ref)
        token_rewards = -a.beta * kl * mask
        last = (ro.n_tokens - 1).clamp(min=0)
        token_rewards[torch.arange(len(rows)), last] += rewards["reward"]  # 序列奖励加在最后一个 token 上
        advantages, returns = gae(token_rewards, old_values, mask, a.gamma, a.lam)
        # 优势白化（按回答 token 求均值、标准差）：各批尺度一致
        mean = masked_mean(advantages, mask)
        std = masked_mean((advantages - mean) ** 2, mask).sqrt()
        advantages = (advantages - mean) / (std + 1e-8) * mask
        return dict(rollout=ro, rewards=rewards, old_logp=old_logp, old_values=old_values, returns=returns,
                    advantages=advantages, kl=masked_mean(kl, mask).item())

    def __call__(self, model, batch):
        a = self.args
        buf = self.cache.get(batch)
        ro, mask = buf["rollout"], buf["rollout"].completion_mask
        R = mask.size(1)
        logits, values = model(ro.sequences, ro.attention_mask, R + 1)
        logp, entropy = logprobs_from_logits(logits, ro.completion_ids, with_entropy=True)
        values = completion_values(values, ro.prompt_len, R)
        p_loss, stats = policy_loss(logp, buf["old_logp"], buf["advantages"], mask, "ppo", a.epsilon, a.epsilon)
        v_loss = value_loss(values, buf["old_values"], buf["returns"], mask, a.cliprange_value)
        extras = {"reward": buf["rewards"]["reward"].mean().item(), "policy_loss": p_loss.item(),
                  "value_loss": v_loss.item(), "kl": buf["kl"], "clip_fraction": stats["clip_fraction"],
                  "entropy": masked_mean(entropy, mask).item(), "reply_len": ro.n_tokens.float().mean().item()}
        if "correct" in buf["rewards"]:
            extras["accuracy"] = buf["rewards"]["correct"].mean().item()
        return p_loss + a.vf_coef * v_loss, extras


def save_actor_and_critic(model, args, runtime):
    """actor 存成普通的语言模型权重（eval_llm.py、下一阶段都能直接读），critic 另存一份。"""
    path = weight_path(args)
    save_checkpoint(model.actor, path)
    model.actor.config.save(path.with_suffix(".json"))
    critic_path = weight_path(args, f"{args.save_weight}_critic")
    save_checkpoint(model.critic, critic_path)
    model.critic.config.save(critic_path.with_suffix(".json"))
    return path


def build(argv=None):
    parser = build_parser("MiniMind PPO", SAMPLES_DIR / "rl_train.jsonl", save_weight="ppo", learning_rate=8e-8,
                          epochs=1, batch_size=2, max_seq_len=256, from_weight="reason")
    add_rl_args(parser, num_generations=1, beta=0.02)
    parser.add_argument("--epsilon", type=float, default=0.2, help="策略比率的裁剪范围 [1−ε, 1+ε]")
    parser.add_argument("--cliprange_value", type=float, default=0.2, help="价值的裁剪范围（相对旧价值 ±c）")
    parser.add_argument("--vf_coef", type=float, default=0.5, help="价值损失的权重")
    parser.add_argument("--gamma", type=float, default=1.0, help="GAE 的折扣 γ（回答很短，默认不折扣）")
    parser.add_argument("--lam", type=float, default=0.95, help="GAE 的 λ")
    add_iteration_args(parser)
    # --quick：PPO 每个 prompt 只采 1 条回答，batch 放大到 32 个 prompt（GRPO 是 8 个 prompt × 8 条）
    args = parse_args(parser, argv, quick_overrides={**QUICK_RL, "batch_size": 32, "epochs": 2})
    check_rl_args(parser, args)
    check_iteration_args(parser, args)
    return args


def run(args):
    runtime = Runtime(args)
    seed_everything(args.seed)
    tokenizer = load_tokenizer_or_exit(args)
    dataset = RLPromptDataset(args.data_path, tokenizer, args.max_seq_len, args.skip_bad_lines, bool(args.thinking))
    actor = load_policy(args, tokenizer, runtime)
    reference = frozen_copy(actor, runtime.device)
    model = ActorCritic(actor, ScalarHeadModel.from_causal_lm(actor)).to(runtime.device)
    reward_fn = RewardFunction(args, tokenizer, runtime.device)
    prefix = reply_prefix(dataset)
    if runtime.is_main:
        print(f"数据 {args.data_path}：{len(dataset)} 个 prompt；actor/critic 从 {args.from_weight} 开始；"
              f"β={args.beta}，γ={args.gamma}，λ={args.lam}，ε={args.epsilon}，μ={args.num_iterations}；进程数 {runtime.world_size}")
    train(args, runtime, model, dataset, PPOStep(model, reference, tokenizer, dataset, reward_fn, args, prefix),
          desc="ppo", save=save_actor_and_critic, evaluate=make_evaluator(actor, tokenizer, args, prefix))
    runtime.close()


def main(argv=None):
    run(build(argv))


if __name__ == "__main__":
    run_main(main)
