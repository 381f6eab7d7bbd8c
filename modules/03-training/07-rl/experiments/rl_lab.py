"""实验 1–2 共用的 RL 小工具：起点、奖励模型、采样与打分，全部调用 trainer/ 里的真实实现，没有副本。

    tokenizer = load_tokenizer()
    policy = train_task_start(seed, epochs)                       # train_full_sft.main：可验证任务上的快速 SFT（RL 的起点）
    pairs, train_idx, held_idx = reward_pairs(tokenizer)          # rm_pairs.jsonl 的偏好对：chosen 答对、rejected 是典型错误
    rm = train_reward_model(policy.config, pairs, train_idx, steps, seed)  # make_reward_step（Bradley–Terry）
    correct = pair_correct(rm, pairs, held_idx)                    # 逐对 0/1：s(chosen) > s(rejected)
    prompts = eval_prompts(tokenizer)                             # rl_eval.jsonl（留出题）
    gold, replies = sample_and_grade(policy, tokenizer, prompts, indices, n)  # (P, n) 的 0/1 正确性（验证器 = gold）
"""
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[4]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402

from dataset.lm_dataset import DPODataset  # noqa: E402
from dataset.rl_dataset import RLPromptDataset  # noqa: E402
from model.checkpoint import load_state_dict_file  # noqa: E402
from model.model_minimind import MiniMindConfig, MiniMindForCausalLM  # noqa: E402
from model.tokenization import load_tokenizer  # noqa: E402,F401
from trainer import train_full_sft  # noqa: E402
from trainer.rl.rewards import MiniMindRewardModel, correctness_reward  # noqa: E402
from trainer.rl.rollout import sample_replies  # noqa: E402
from trainer.rl.startup import QUICK_START, QUICK_START_ARGS  # noqa: E402
from trainer.rl.value_head import ScalarHeadModel  # noqa: E402
from trainer.train_reward import make_reward_step, pair_scores, split  # noqa: E402

SAMPLES_DIR = REPO_ROOT / "dataset" / "samples"
RM_PAIRS, RL_TRAIN, RL_EVAL = SAMPLES_DIR / "rm_pairs.jsonl", SAMPLES_DIR / "rl_train.jsonl", SAMPLES_DIR / "rl_eval.jsonl"
PROMPT_LEN = 32  # 同 trainer/rl/startup.py 的 QUICK_RL：任务题套上模板后不到 32 个 token
MAX_NEW_TOKENS = 12  # 同 QUICK_RL 的 max_gen_len：答案只有一两个 token，12 足够写完
RM_SEQ_LEN, RM_BATCH, RM_LR = 64, 16, 1e-3  # 同 train_reward.py 的 --quick
HOLDOUT_EVERY = 5  # 同 train_reward.py 的默认：每 5 对留 1 对（960 对训练、240 对留出）


def train_task_start(seed: int, epochs: int = 4) -> MiniMindForCausalLM:
    """RL 的起点：train_full_sft.main 按 trainer/rl/startup.py 的 QUICK_START_ARGS 在 task_sft.jsonl 上从头训练
    （一半回答是典型错误的"不可靠老师"）。epochs=4 即 RL 脚本 --quick 用的那个起点；quick 实验只训 1 轮以省时间。"""
    args = list(QUICK_START_ARGS)
    args[args.index("--epochs") + 1] = str(epochs)
    with tempfile.TemporaryDirectory() as save_dir:
        train_full_sft.main(["--quick", *args, "--save_dir", save_dir, "--seed", str(seed)])
        path = Path(save_dir) / f"{QUICK_START}_128.pth"  # --quick 的 hidden_size 是 128
        model = MiniMindForCausalLM(MiniMindConfig.load(path.with_suffix(".json")))
        model.load_state_dict(load_state_dict_file(path))
    return model.eval()


def reward_pairs(tokenizer):
    """rm_pairs.jsonl → (DPODataset, 训练下标, 留出下标)；划分同 train_reward.py（每 5 对留 1 对）。"""
    pairs = DPODataset(RM_PAIRS, tokenizer, RM_SEQ_LEN)
    train_idx, held_idx = split(len(pairs), HOLDOUT_EVERY)
    return pairs, train_idx, held_idx


def pair_batch(pairs, indices, device="cpu") -> dict:
    """若干偏好对 → {chosen_ids, rejected_ids}，各 (B, T)；裁掉两边都是 padding 的尾部列（右 padding，T ≤ 64）。"""
    items = [pairs[i] for i in indices]
    batch = {k: torch.stack([x[k] for x in items]) for k in ("chosen_ids", "rejected_ids")}
    pad = pairs.tokenizer.pad_token_id
    width = int(max((batch[k] != pad).sum(1).max() for k in batch))
    return {k: v[:, :width].to(device) for k, v in batch.items()}


def train_reward_model(config: MiniMindConfig, pairs, train_idx, steps: int, seed: int,
                       device="cpu") -> ScalarHeadModel:
    """奖励模型 = 随机初始化的 MiniMind 主干 + 初始为 0 的标量头（同 train_reward.py --quick 的 --from_weight none），
    用 train_reward.py 的 make_reward_step（Bradley–Terry 损失）在 train_idx 的偏好对上训练 steps 步（每步 16 对，
    train_idx 少于 steps×16 时循环多轮——小数据上看得到过拟合）。"""
    pad = pairs.tokenizer.pad_token_id
    torch.manual_seed(seed)
    rm = ScalarHeadModel(config).to(device).train()
    optimizer = torch.optim.AdamW(rm.parameters(), lr=RM_LR, weight_decay=0.0)
    compute_loss = make_reward_step(pad)
    gen = torch.Generator().manual_seed(seed)
    order = []
    for _ in range(steps):
        if len(order) < RM_BATCH:
            order += [train_idx[i] for i in torch.randperm(len(train_idx), generator=gen).tolist()]
        chunk, order = order[:RM_BATCH], order[RM_BATCH:]
        loss, _ = compute_loss(rm, pair_batch(pairs, chunk, device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(rm.parameters(), 1.0)
        optimizer.step()
    return rm.eval()


@torch.no_grad()
def pair_correct(rm: ScalarHeadModel, pairs, indices, batch: int = 120) -> list:
    """每个偏好对一个值：s(chosen) > s(rejected) 记 1，平分记 0.5，否则 0（同 train_reward.py::make_pair_evaluator 的
    计分；这里逐对返回，噪声检验可以按偏好对配对）。分数来自 train_reward.py::pair_scores。"""
    pad = pairs.tokenizer.pad_token_id
    out = []
    for start in range(0, len(indices), batch):
        chosen, rejected = pair_scores(rm, pair_batch(pairs, indices[start:start + batch]), pad)
        out += ((chosen > rejected).float() + 0.5 * (chosen == rejected).float()).tolist()
    return out


def eval_prompts(tokenizer, path=RL_EVAL) -> RLPromptDataset:
    return RLPromptDataset(path, tokenizer, PROMPT_LEN)


@torch.no_grad()
def sample_and_grade(policy, tokenizer, prompts: RLPromptDataset, indices, n: int, batch_prompts: int = 16,
                     temperature: float = 1.0):
    """每道题采 n 条回答（trainer/rl/rollout.py::sample_replies），用验证器判对错。
    返回 gold (P, n) 的 0/1 张量与回答文本（P 个长 n 的列表）。"""
    device = next(policy.parameters()).device
    gold, texts = [], []
    for start in range(0, len(indices), batch_prompts):
        chunk = indices[start:start + batch_prompts]
        items = [prompts[i] for i in chunk]
        ids = torch.stack([x["prompt_ids"] for x in items]).to(device)
        mask = torch.stack([x["prompt_mask"] for x in items]).to(device)
        out = sample_replies(policy, tokenizer, ids, mask, n, MAX_NEW_TOKENS, temperature=temperature)
        for j, i in enumerate(chunk):
            row = prompts.row(i)
            replies = out.texts[j * n:(j + 1) * n]
            gold.append([correctness_reward(r, row["task"], row["answer"]) for r in replies])
            texts.append(replies)
    return torch.tensor(gold), texts


def score_replies(rm: ScalarHeadModel, tokenizer, prompts: RLPromptDataset, indices, texts, batch: int = 256):
    """奖励模型给每条回答打分（trainer/rl/rewards.py::MiniMindRewardModel）：(P, n)。
    答案只有一两个 token，同一道题的 n 条回答大多重复：每个不同的 (题, 回答) 只打一次分。"""
    scorer = MiniMindRewardModel(rm, tokenizer, max_seq_len=RM_SEQ_LEN)
    keys = [(i, t) for i, replies in zip(indices, texts) for t in replies]
    unique = list(dict.fromkeys(keys))
    conversations = [prompts.row(i)["conversations"] + [{"role": "assistant", "content": t}] for i, t in unique]
    scores = torch.cat([scorer.score(conversations[s:s + batch]) for s in range(0, len(conversations), batch)])
    lookup = dict(zip(unique, scores.tolist()))
    return torch.tensor([lookup[k] for k in keys]).view(len(indices), -1)
