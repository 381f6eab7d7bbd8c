"""SPO（Single-stream Policy Optimization，Xu & Ding 2025）：每个 prompt 只采 1 条回答，不要组、不要 critic。

    python trainer/train_spo.py --quick                   # 可验证奖励（取最大/取最小/数字母），CPU 约 2 分钟

GRPO 用同组 G 条回答的平均分当基线，G 条里全对或全错时优势为 0、这组白采了；SPO 换成一个跨步追踪的基线：
把（归一化到 [0, 1] 的）奖励看成伯努利成功率，用 Beta(α, β) 追踪它，基线 b = α / (α + β)，优势 Â = r − b。
每一步先把旧的计数按遗忘因子 ρ 衰减，再加上这一步的观察：α ← ρ·α + r̄，β ← ρ·β + (1 − r̄)。
ρ 跟着策略变化的快慢走（KL 自适应）：策略这一步的平均 log π 变了 D，ρ = clip(2^(−D / D_half), ρ_min, ρ_max)——
策略变得快，旧观察就忘得快。这是 MiniMind train_spo.py 的做法（全局一个追踪器，而不是论文里每个 prompt 一个）。
损失：−Â·log π + β_KL·k3 KL(π‖π_ref)，回答内按 token 平均再对回答平均（与 grpo 的聚合相同，比率恒为 1）。
追踪器的 α、β 存在模型的 buffer 里，随续训状态一起保存：--resume 后基线接着原来的值。
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from torch import nn  # noqa: E402

from dataset.rl_dataset import RLPromptDataset  # noqa: E402
from trainer.rl.losses import k3_kl, masked_mean, policy_loss  # noqa: E402
from trainer.rl.rollout import completion_logprobs, sample_replies  # noqa: E402
from trainer.rl.startup import (  # noqa: E402
    QUICK_RL, RewardFunction, add_rl_args, check_rl_args, frozen_copy, load_policy, make_evaluator, reply_prefix,
)
from trainer.trainer_utils import (  # noqa: E402
    SAMPLES_DIR, Runtime, build_parser, load_tokenizer_or_exit, parse_args, run_main, save_weights, seed_everything,
    train,
)


class BetaValueTracker(nn.Module):
    """全局的 Beta(α, β) 基线追踪器，状态是 buffer（进 state_dict，续训可恢复；没有参数，不被优化）。"""

    def __init__(self, rho_min: float = 0.5, rho_max: float = 0.96, d_half: float = 0.06):
        super().__init__()
        self.rho_min, self.rho_max, self.d_half = rho_min, rho_max, d_half
        n0 = 1.0 / (1.0 - rho_min)  # ρ 一直取下界时计数的稳态总量；开始时 α = β = n0/2（基线 0.5）
        self.register_buffer("alpha", torch.tensor(0.5 * n0, dtype=torch.float64))
        self.register_buffer("beta", torch.tensor(0.5 * n0, dtype=torch.float64))
        self.register_buffer("last_logp", torch.tensor(float("nan"), dtype=torch.float64))  # 上一步的平均 log π

    def baseline(self) -> float:
        return (self.alpha / (self.alpha + self.beta)).item()

    def rho(self, mean_logp: float) -> float:
        if torch.isnan(self.last_logp):
            return self.rho_max
        change = abs(mean_logp - self.last_logp.item())
        return min(max(2.0 ** (-change / self.d_half), self.rho_min), self.rho_max)

    def update(self, mean_reward01: float, mean_logp: float) -> float:
        """用这一步的平均归一化奖励 r̄ ∈ [0, 1] 更新；返回用到的 ρ。"""
        rho = self.rho(mean_logp)
        self.alpha.mul_(rho).add_(mean_reward01)
        self.beta.mul_(rho).add_(1.0 - mean_reward01)
        self.last_logp.fill_(mean_logp)
        return rho


class PolicyWithTracker(nn.Module):
    """策略 + 追踪器：train() 保存续训状态时追踪器一起进去；前向就是策略的前向。"""

    def __init__(self, policy, tracker):
        super().__init__()
        self.policy, self.tracker = policy, tracker

    def forward(self, *args, **kwargs):
        return self.policy(*args, **kwargs)


def mean_over_ranks(value: float, device) -> float:
    """多进程时取各进程的平均：追踪器在所有进程上做同样的更新，保持一致。"""
    if not dist.is_available() or not dist.is_initialized():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.item() / dist.get_world_size()


class SPOStep:
    def __init__(self, wrapped, reference, tokenizer, dataset, reward_fn, args, prefix, reward_range):
        self.wrapped, self.reference, self.tokenizer, self.dataset = wrapped, reference, tokenizer, dataset
        self.reward_fn, self.args, self.prefix = reward_fn, args, prefix
        self.low, self.high = reward_range

    def __call__(self, model, batch):
        a, tracker = self.args, self.wrapped.tracker
        ro = sample_replies(self.wrapped.policy, self.tokenizer, batch["prompt_ids"], batch["prompt_mask"], 1,
                            a.max_gen_len, a.temperature, a.top_p, self.prefix)
        rows = [self.dataset.row(i) for i in batch["index"].tolist()]
        rewards = self.reward_fn(ro, rows)
        reward01 = ((rewards["reward"] - self.low) / (self.high - self.low)).clamp(0, 1)  # (N,)
        baseline = tracker.baseline()
        advantages = reward01 - baseline
        mask = ro.completion_mask
        logp = completion_logprobs(model, ro)
        kl = k3_kl(logp, completion_logprobs(self.reference, ro).detach()) if self.reference is not None else None
        loss, _ = policy_loss(logp, logp.detach(), advantages, mask, "grpo", kl=kl, beta=a.beta)
        device = logp.device
        rho = tracker.update(mean_over_ranks(reward01.mean().item(), device),
                             mean_over_ranks(masked_mean(logp.detach(), mask).item(), device))
        extras = {"reward": rewards["reward"].mean().item(), "baseline": baseline, "rho": rho,
                  "advantage_mean": advantages.mean().item(), "reply_len": ro.n_tokens.float().mean().item(),
                  "kl": masked_mean(kl, mask).item() if kl is not None else 0.0}
        if "correct" in rewards:
            extras["accuracy"] = rewards["correct"].mean().item()
        return loss, extras


def build(argv=None):
    parser = build_parser("MiniMind SPO", SAMPLES_DIR / "rl_train.jsonl", save_weight="spo", learning_rate=1e-7,
                          epochs=1, batch_size=2, max_seq_len=256, from_weight="reason")
    add_rl_args(parser, num_generations=1, beta=0.02)
    parser.add_argument("--rho_min", type=float, default=0.5, help="遗忘因子 ρ 的下界")
    parser.add_argument("--rho_max", type=float, default=0.96, help="遗忘因子 ρ 的上界")
    parser.add_argument("--d_half", type=float, default=0.06, help="平均 log π 变化多少时 ρ 减半")
    args = parse_args(parser, argv, quick_overrides={**QUICK_RL, "batch_size": 32, "epochs": 2})
    check_rl_args(parser, args)
    if not 0 < args.rho_min <= args.rho_max < 1 or args.d_half <= 0:
        parser.error("需要 0 < --rho_min <= --rho_max < 1 且 --d_half > 0")
    return args


def reward_range(args):
    """奖励归一化到 [0, 1] 用的上下界：由各项奖励的权重决定（奖励模型的分数按 ±3 截断，与 MiniMind 相同）。"""
    low = -args.length_weight
    high = args.correct_weight + args.format_weight
    if args.reward_model_path not in (None, "", "none"):
        low, high = low - 3 * args.reward_model_weight, high + 3 * args.reward_model_weight
    return low, high


def run(args):
    runtime = Runtime(args)
    seed_everything(args.seed)
    tokenizer = load_tokenizer_or_exit(args)
    dataset = RLPromptDataset(args.data_path, tokenizer, args.max_seq_len, args.skip_bad_lines, bool(args.thinking))
    policy = load_policy(args, tokenizer, runtime)
    reference = frozen_copy(policy, runtime.device) if args.beta > 0 else None
    wrapped = PolicyWithTracker(policy, BetaValueTracker(args.rho_min, args.rho_max, args.d_half)).to(runtime.device)
    prefix = reply_prefix(dataset)
    if runtime.is_main:
        print(f"数据 {args.data_path}：{len(dataset)} 个 prompt，每个 1 条回答；β={args.beta}；"
              f"ρ ∈ [{args.rho_min}, {args.rho_max}]，D_half={args.d_half}；进程数 {runtime.world_size}")
    step = SPOStep(wrapped, reference, tokenizer, dataset, RewardFunction(args, tokenizer, runtime.device), args,
                   prefix, reward_range(args))
    train(args, runtime, wrapped, dataset, step, desc="spo",
          save=lambda model, a, rt: save_weights(model.policy, a, rt),
          evaluate=make_evaluator(policy, tokenizer, args, prefix))
    runtime.close()


def main(argv=None):
    run(build(argv))


if __name__ == "__main__":
    run_main(main)
