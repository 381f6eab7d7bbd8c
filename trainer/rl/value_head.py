"""MiniMind 主干 + 一个标量头：同一个结构有两种用法。

    奖励模型（train_reward.py）：sequence_score → 每条对话一个分数，取最后一个真实 token 位置的输出
    critic（train_ppo.py）：    forward        → 每个位置一个价值估计 V(s_t)
主干从一个语言模型（通常是 SFT 模型）复制而来：它已经"读得懂"对话，标量头只需学一个线性读出。
标量头初始化为 0，训练开始时所有分数/价值都是 0，不会一上来就给策略很大的噪声信号。
"""
import copy

import torch
from torch import nn

from model.model_minimind import MiniMindConfig, MiniMindForCausalLM, MiniMindModel


class ScalarHeadModel(nn.Module):
    def __init__(self, config: MiniMindConfig):
        super().__init__()
        self.config = config
        self.model = MiniMindModel(config)
        self.score_head = nn.Linear(config.hidden_size, 1)
        nn.init.zeros_(self.score_head.weight)
        nn.init.zeros_(self.score_head.bias)

    @classmethod
    def from_causal_lm(cls, lm: MiniMindForCausalLM) -> "ScalarHeadModel":
        """复制语言模型的主干（不含 lm_head）作为起点。"""
        head = cls(lm.config)
        head.model = copy.deepcopy(lm.model)
        return head

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor = None) -> torch.Tensor:
        hidden, _, _ = self.model(input_ids, attention_mask)  # (B, T, H)
        return self.score_head(hidden).squeeze(-1)  # (B, T)

    def sequence_score(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """每条序列最后一个真实 token 处的分数 (B,)。右 padding 与左 padding 都适用。"""
        values = self(input_ids, attention_mask)  # (B, T)
        positions = torch.arange(input_ids.size(1), device=input_ids.device)
        last = (positions * attention_mask).argmax(dim=1)  # 每行最后一个 mask=1 的位置
        return values.gather(1, last[:, None]).squeeze(1)


def load_scalar_head(path) -> ScalarHeadModel:
    """读 train_reward.py 保存的 <名>_<hidden>.pth（旁边是同名 .json 配置）。"""
    from pathlib import Path

    from model.checkpoint import load_state_dict_file

    path = Path(path)
    config_file = path.with_suffix(".json")
    if not path.is_file() or not config_file.is_file():
        raise FileNotFoundError(f"找不到奖励模型 {path}（及其配置 {config_file.name}）：请先运行 train_reward.py，"
                                "或给出 Hugging Face 奖励模型的目录")
    model = ScalarHeadModel(MiniMindConfig.load(config_file))
    state = load_state_dict_file(path)
    if "score_head.weight" not in state:
        raise ValueError(f"{path} 不是奖励模型（没有 score_head）：语言模型的权重不能直接当奖励模型用")
    model.load_state_dict(state, strict=True)
    return model
