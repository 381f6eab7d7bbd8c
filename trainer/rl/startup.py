"""RL 训练脚本共用的部分：命令行参数、--quick 的起点检查点、奖励、评测回调。训练循环本身用 trainer_utils.train()。

--quick 的起点是 task_sft：在可验证任务的 SFT 数据（dataset/samples/task_sft.jsonl，只有答案）上从头训练的小模型，
训练得不多，留出集上只对一部分题——RL 才有提升的空间。缺了它时脚本先说明、再调用 train_full_sft.py 训练它（只需一次）。
"""
import argparse
import copy
import os
from typing import Optional

import torch

from dataset.rl_dataset import RLPromptDataset
from trainer import train_full_sft
from trainer.rl.evaluate import evaluate_tasks
from trainer.rl.rewards import RewardWeights, load_reward_model, verifiable_rewards
from trainer.trainer_utils import SAMPLES_DIR, TrainingError, build_model, weight_path

QUICK_START = "task_sft"
# 起点的训练参数（train_full_sft.py --quick 再加这些）：只看一遍半数据，准确率停在中间
QUICK_START_ARGS = ["--data_path", str(SAMPLES_DIR / "task_sft.jsonl"), "--from_weight", "none", "--max_seq_len", "32",
                    "--batch_size", "32", "--epochs", "4", "--save_weight", QUICK_START]
# RL 脚本 --quick 时共用的覆盖值（各脚本可再加）
QUICK_RL = dict(from_weight=QUICK_START, max_seq_len=32, max_gen_len=12, batch_size=16, epochs=1, max_steps=60,
                learning_rate=1e-3, log_interval=5, save_interval=20, eval_interval=20, warmup_ratio=0.0,
                eval_samples=4)


def add_rl_args(parser: argparse.ArgumentParser, num_generations: int = 8, beta: Optional[float] = 0.02):
    """RL 脚本共同的参数（名字与 MiniMind 相同的沿用：--max_gen_len --num_generations --beta --reward_model_path 等）。"""
    p = parser
    p.add_argument("--eval_data_path", default=str(SAMPLES_DIR / "rl_eval.jsonl"), help="留出集（评测准确率）")
    p.add_argument("--eval_interval", type=int, default=100, help="每多少步在留出集上评测一次（开始和结束时也评测）")
    p.add_argument("--eval_samples", type=int, default=0, help="评测时每题再采样 k 条，报 pass@k 与多数投票（0 = 只做贪心 pass@1）")
    p.add_argument("--eval_limit", type=int, default=None, help="只评测留出集的前多少题（默认全部）")
    p.add_argument("--max_gen_len", type=int, default=256, help="每条回答最多生成多少 token")
    p.add_argument("--num_generations", type=int, default=num_generations, help="G：每个 prompt 采样几条回答")
    p.add_argument("--temperature", type=float, default=1.0, help="采样温度")
    p.add_argument("--top_p", type=float, default=1.0, help="nucleus 采样（1 = 不截断）")
    p.add_argument("--beta", type=float, default=beta, help="KL(π‖π_ref) 的系数；0 = 不要参考模型（不占内存）")
    p.add_argument("--thinking", type=int, choices=[0, 1], default=1,
                   help="1：minimind-3 的模板在 prompt 末尾留一个打开的 <think>（MiniMind2 的模板不受影响）")
    p.add_argument("--correct_weight", type=float, default=1.0, help="答案正确（可验证奖励）的权重")
    p.add_argument("--format_weight", type=float, default=0.1, help="think/answer 格式奖励的权重")
    p.add_argument("--length_weight", type=float, default=0.0, help="DAPO 软超长惩罚的权重")
    p.add_argument("--reward_model_path", default="none",
                   help="再加一个奖励模型的分数：none、train_reward.py 的权重名/.pth，或 Hugging Face 模型目录")
    p.add_argument("--reward_model_weight", type=float, default=1.0, help="奖励模型分数的权重")
    return p


def check_rl_args(parser, args):
    for name in ("max_gen_len", "num_generations", "eval_interval"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name} 必须是正整数，收到 {getattr(args, name)}")
    if args.temperature <= 0:
        parser.error(f"--temperature 必须为正，收到 {args.temperature}")
    if not 0 < args.top_p <= 1:
        parser.error(f"--top_p 必须在 (0, 1] 内，收到 {args.top_p}")
    if args.beta < 0:
        parser.error(f"--beta 不能为负，收到 {args.beta}")
    if not os.path.isfile(args.eval_data_path):
        parser.error(f"找不到留出集 {args.eval_data_path}（--eval_data_path）；python dataset/make_rl_samples.py 可重新生成")


def add_iteration_args(parser: argparse.ArgumentParser):
    """μ：同一批采样做几次优化（PPO、GRPO 类共用；SPO 每批只更新一次）。"""
    parser.add_argument("--num_iterations", type=int, default=1, help="μ：每批采样做几次优化（1 = 在策略上）")


def check_iteration_args(parser, args):
    if args.num_iterations <= 0:
        parser.error(f"--num_iterations 必须是正整数，收到 {args.num_iterations}")
    if args.num_iterations > 1 and args.save_interval % args.num_iterations:
        parser.error(f"--save_interval {args.save_interval} 必须是 --num_iterations {args.num_iterations} 的倍数"
                     "（检查点要落在一批采样用完的地方，续训才能接上）")


def ensure_quick_start(args):
    """--quick 且起点权重不存在时：说明，然后在本进程里先训练它（train_full_sft.py 的 main）。"""
    if not args.quick or args.from_weight != QUICK_START:
        return
    path = weight_path(args, QUICK_START)
    if path.is_file():
        return
    if int(os.environ.get("WORLD_SIZE", 1)) > 1:
        raise TrainingError(f"起点 {path} 不存在：多进程下不能顺便训练它，请先单进程运行一次"
                            f"（python trainer/train_grpo.py --quick --max_steps 1 --save_dir {args.save_dir}）")
    print(f"起点 {path} 不存在：先在任务数据上做一次快速 SFT（train_full_sft.py，只需一次），再开始 RL")
    argv = ["--quick", *QUICK_START_ARGS, "--save_dir", str(args.save_dir), "--hidden_size", str(args.hidden_size),
            "--num_hidden_layers", str(args.num_hidden_layers), "--family", args.family, "--device", args.device,
            "--seed", str(args.seed)]
    if args.tokenizer is not None:
        argv += ["--tokenizer", str(args.tokenizer)]
    train_full_sft.main(argv)


def frozen_copy(model, device):
    """参考模型/旧策略：当前模型的冻结副本。"""
    return copy.deepcopy(model).to(device).eval().requires_grad_(False)


def reply_prefix(dataset: RLPromptDataset) -> str:
    """prompt 里已经写好的回答开头（minimind-3 打开思考时的 "<think>\\n"）；判格式时要把它补回回答前面。"""
    return "<think>\n" if dataset.prompt_text(0).endswith("<think>\n") else ""


class RewardFunction:
    """一次 rollout 的奖励：可验证奖励（数据行有 answer/task 时）+ 可选的奖励模型分数。返回 {名字: (N,)}。"""

    def __init__(self, args, tokenizer, device):
        self.weights = RewardWeights(args.correct_weight, args.format_weight, args.length_weight)
        self.max_len = args.max_gen_len
        self.reward_model = load_reward_model(args.reward_model_path, tokenizer, device,
                                              lambda name: weight_path(args, name))
        self.rm_weight = args.reward_model_weight

    def __call__(self, rollout, rows) -> dict:
        n_tokens, finished = rollout.n_tokens.tolist(), rollout.finished.tolist()
        if all("answer" in r for r in rows):
            parts = verifiable_rewards(rollout.texts, rows, n_tokens, finished, self.max_len, self.weights)
        elif self.reward_model is None:
            raise TrainingError("数据里没有参考答案（answer 字段），又没有 --reward_model_path：没有奖励来源")
        else:
            parts = {"reward": torch.zeros(len(rows))}
        if self.reward_model is not None:
            conversations = [r["conversations"] + [{"role": "assistant", "content": t}]
                             for r, t in zip(rows, rollout.texts)]
            parts["rm_score"] = self.reward_model.score(conversations)
            parts["reward"] = parts["reward"] + self.rm_weight * parts["rm_score"]
        return {k: v.to(rollout.sequences.device) for k, v in parts.items()}


def make_evaluator(model, tokenizer, args, prefix: str):
    """train() 的评测回调：留出集上的贪心 pass@1（及可选的 pass@k、maj@k）。"""
    eval_set = RLPromptDataset(args.eval_data_path, tokenizer, args.max_seq_len, thinking=bool(args.thinking))

    def evaluate(step: int) -> dict:
        return evaluate_tasks(model, tokenizer, eval_set, args.max_gen_len, num_samples=args.eval_samples,
                              temperature=args.temperature, top_p=args.top_p, reply_prefix=prefix, seed=args.seed,
                              limit=args.eval_limit)
    return evaluate


def load_policy(args, tokenizer, runtime):
    """策略模型（起点权重）；--quick 时缺了起点先训练它。"""
    ensure_quick_start(args)
    return build_model(args, tokenizer).to(runtime.device)
