"""RL 的 prompt 数据：{"conversations": [...只有问题，没有最后一轮助手回答...], "answer": "参考答案", "task": "任务名"}。

与 MiniMind 的 RL 数据（rlaif.jsonl）同一格式；answer/task 是可选字段，有了它们才能用可验证奖励（trainer/rl/rewards.py）。
每条样本返回定长的张量（DataLoader 的默认 collate 能直接拼 batch）：
    prompt_ids   (P,)  套上对话模板、加上 "<|im_start|>assistant\\n" 的 prompt，左侧 padding 到 P = max_prompt_len
    prompt_mask  (P,)  1 = 真实 token，0 = padding
    index        ()    行号：奖励函数用它取回 answer/task（字符串不进张量）
左侧 padding 让所有 prompt 的最后一个 token 对齐，生成时每行都从同一列接着写。
"""
from torch.utils.data import Dataset
import torch

from dataset.lm_dataset import DataFormatError, JsonlFile, check_messages


def check_prompt_row(row):
    if not isinstance(row, dict) or "conversations" not in row:
        raise DataFormatError('RL 数据每行应是 {"conversations": [...], "answer": "...", "task": "..."}')
    messages = row["conversations"]
    if not isinstance(messages, list) or not messages:
        raise DataFormatError("conversations 应是非空的消息列表")
    if messages[-1].get("role") == "assistant":  # 允许 MiniMind 那种末尾带空回答的格式：去掉它再检查
        messages = messages[:-1]
    check_messages(messages + [{"role": "assistant", "content": ""}])  # 借用 SFT 的检查（角色、内容、模板注入）
    if "answer" in row and not isinstance(row["answer"], str):
        raise DataFormatError(f"answer 应是字符串，收到 {row['answer']!r}")


def prompt_messages(row) -> list:
    """去掉末尾的助手回答（如果有），留下要模型回答的对话。"""
    messages = row["conversations"]
    return messages[:-1] if messages[-1]["role"] == "assistant" else messages


def render_prompt(tokenizer, messages, thinking: bool = True) -> str:
    """套对话模板并加上助手开头。minimind-3 的模板默认插入空的 <think></think>；thinking=True 时让它留一个打开的
    "<think>\\n"（open_thinking），回答从思考开始。MiniMind2 的模板没有这个变量，渲染结果不受影响。"""
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, open_thinking=thinking)


class RLPromptDataset(Dataset):
    def __init__(self, path, tokenizer, max_prompt_len: int = 64, skip_bad_lines: bool = False,
                 thinking: bool = True):
        self.rows = JsonlFile(path, check_prompt_row, skip_bad_lines)
        self.tokenizer, self.max_prompt_len, self.thinking = tokenizer, max_prompt_len, thinking

    def __len__(self):
        return len(self.rows)

    def row(self, i: int) -> dict:
        return self.rows[i]

    def prompt_text(self, i: int) -> str:
        return render_prompt(self.tokenizer, prompt_messages(self.rows[i]), self.thinking)

    def __getitem__(self, i):
        ids = self.tokenizer.encode(self.prompt_text(i))[-self.max_prompt_len:]  # 太长时保留结尾（问题与助手开头）
        n_pad = self.max_prompt_len - len(ids)
        return {"prompt_ids": torch.tensor([self.tokenizer.pad_token_id] * n_pad + ids, dtype=torch.long),
                "prompt_mask": torch.tensor([0] * n_pad + [1] * len(ids), dtype=torch.long),
                "index": torch.tensor(i, dtype=torch.long)}
