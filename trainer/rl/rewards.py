"""奖励：给一条回答打一个标量分。默认是可验证奖励（程序判对错），学到的奖励模型是第二种来源。

    total = w_correct · correctness + w_format · format + w_length · overlong

- correctness ∈ {0, 1}：<answer>…</answer> 里的内容（没有标签时取 </think> 之后或整条回答）能否通过任务的 check()。
- format ∈ [0, 1]：MiniMind 推理模型的格式奖励——整条回答匹配 "<think>\\n…\\n</think>\\n<answer>\\n…\\n</answer>" 得 0.5，
  四个标签各恰好出现一次各得 0.25（共 1.5），这里再除以 1.5 归一化。
- overlong ∈ [-1, 0]：DAPO 的软超长惩罚（Yu et al. 2025, "DAPO", Eq. 13）：
  长度 ≤ L_max − L_cache 时为 0，之后线性降到 L_max 处的 −1；没写完（没输出 <|im_end|>）也按 −1 计。
奖励模型接口 RewardModel.score(对话列表) → (N,)：MiniMindRewardModel（train_reward.py 训练的标量头）或
HFRewardModel（Hugging Face 的序列分类奖励模型，需要 transformers 和本地路径）。
"""
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Protocol, Sequence

import torch

from trainer.rl.tasks import check

ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.S)
# MiniMind 的两种合格写法（minimind-3 的模板在 </think> 后多一个空行）
FORMAT_RES = (re.compile(r"^<think>\n.*?\n</think>\n<answer>\n.*?\n</answer>$", re.S),
              re.compile(r"^<think>\n.*?\n</think>\n\n<answer>\n.*?\n</answer>$", re.S))
TAGS = ("<think>", "</think>", "<answer>", "</answer>")


def extract_answer(reply: str) -> str:
    """最后一个 <answer>…</answer> 的内容；没有时取 </think> 之后的部分；都没有就是整条回答。"""
    found = ANSWER_RE.findall(reply)
    if found:
        return found[-1].strip()
    return reply.split("</think>")[-1].strip()


def correctness_reward(reply: str, task: str, reference: str) -> float:
    return 1.0 if check(task, reference, extract_answer(reply)) else 0.0


def format_reward(reply: str) -> float:
    """MiniMind 的格式奖励（0.5 整体格式 + 每个标签恰好一次 0.25），归一化到 [0, 1]。"""
    whole = 0.5 if any(p.match(reply.strip()) for p in FORMAT_RES) else 0.0
    tags = sum(0.25 for tag in TAGS if reply.count(tag) == 1)
    return (whole + tags) / 1.5


def overlong_penalty(n_tokens: int, finished: bool, max_len: int, cache_len: int) -> float:
    """DAPO 的软超长惩罚（Eq. 13）：L_max − L_cache 之内为 0，最后 L_cache 个 token 里线性降到 −1。"""
    if not finished:
        return -1.0
    soft_start = max_len - cache_len
    if n_tokens <= soft_start:
        return 0.0
    return max(-1.0, (soft_start - n_tokens) / max(cache_len, 1))


@dataclass
class RewardWeights:
    correct: float = 1.0
    format: float = 0.1
    length: float = 0.0
    overlong_cache: int = 8  # L_cache：最后多少个 token 开始扣分


def verifiable_rewards(replies: Sequence[str], rows: Sequence[dict], n_tokens: Sequence[int],
                       finished: Sequence[bool], max_len: int, weights: RewardWeights) -> Dict[str, torch.Tensor]:
    """每条回答的各项奖励与加权总分，都是 (N,)。rows[i] 是第 i 条回答对应的数据行（含 task 与 answer）。"""
    for row in rows:
        if "answer" not in row or "task" not in row:
            raise ValueError("可验证奖励需要数据行里有 answer 与 task 字段（见 dataset/rl_dataset.py）；"
                             "没有参考答案的数据请改用奖励模型（--reward_model）")
    correct = torch.tensor([correctness_reward(r, row["task"], row["answer"]) for r, row in zip(replies, rows)])
    fmt = torch.tensor([format_reward(r) for r in replies])
    length = torch.tensor([overlong_penalty(n, f, max_len, weights.overlong_cache) for n, f in zip(n_tokens, finished)])
    total = weights.correct * correct + weights.format * fmt + weights.length * length
    return {"reward": total, "correct": correct, "format": fmt, "overlong": length}


# ---------------------------------------------------------------------------
# 奖励模型
# ---------------------------------------------------------------------------
class RewardModel(Protocol):
    def score(self, conversations: List[List[dict]]) -> torch.Tensor:
        """每段对话（最后一条是要打分的助手回答）一个标量分，(N,)。"""


class MiniMindRewardModel:
    """我们的奖励模型：MiniMind 主干 + 标量头（trainer/rl/value_head.py），由 train_reward.py 用 Bradley–Terry 损失训练。"""

    def __init__(self, model, tokenizer, max_seq_len: int = 256):
        self.model, self.tokenizer, self.max_seq_len = model.eval().requires_grad_(False), tokenizer, max_seq_len

    @torch.no_grad()
    def score(self, conversations: List[List[dict]]) -> torch.Tensor:
        device = next(self.model.parameters()).device
        ids = [self.tokenizer.encode(self.tokenizer.apply_chat_template(c))[-self.max_seq_len:] for c in conversations]
        width = max(map(len, ids))
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(x)) + x for x in ids], device=device)  # 左 padding：最后一列对齐
        mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids], device=device)
        return self.model.sequence_score(input_ids, mask).float().cpu()


class HFRewardModel:
    """Hugging Face 的序列分类奖励模型（如 internlm2-1_8b-reward、Skywork-Reward）：用户自己有模型时的路径。
    测试用一个离线造的极小 LlamaForSequenceClassification 检查这条路径（tests/test_rl_units.py）；真实的大奖励模型没有在这里跑过。"""

    def __init__(self, path, device="cpu"):
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"找不到奖励模型 {path}（--reward_model）：请给出本地的 Hugging Face 模型目录")
        try:
            from transformers import AutoModelForSequenceClassification, AutoTokenizer
        except ImportError:
            raise ValueError("--reward_model 指向 Hugging Face 模型时需要 transformers：pip install transformers") from None
        self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=True)
        self.model = AutoModelForSequenceClassification.from_pretrained(path, trust_remote_code=True).to(device).eval()
        self.device = device

    @torch.no_grad()
    def score(self, conversations: List[List[dict]]) -> torch.Tensor:
        scores = []
        for c in conversations:
            # 先渲染成文本再编码：transformers 4.x 的 apply_chat_template(return_tensors=...) 返回张量，
            # 5.x 返回 BatchEncoding，走文本这条路两边一样
            text = self.tokenizer.apply_chat_template(c, tokenize=False)
            ids = self.tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"].to(self.device)
            scores.append(self.model(ids).logits[0, 0].float().item())
        return torch.tensor(scores)


def load_reward_model(spec: Optional[str], tokenizer, device, path_of) -> Optional[RewardModel]:
    """--reward_model_path：none → 不用；目录 → Hugging Face；.pth 或权重名（path_of(名) 给出路径）→ 我们的标量头。"""
    from trainer.rl.value_head import load_scalar_head

    if spec in (None, "", "none"):
        return None
    if Path(spec).is_dir():
        return HFRewardModel(spec, device)
    path = Path(spec) if spec.endswith((".pth", ".pt")) else path_of(spec)
    return MiniMindRewardModel(load_scalar_head(path).to(device), tokenizer)
