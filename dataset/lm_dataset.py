"""三种训练数据：预训练、SFT、DPO。格式与 MiniMind 公开的数据集相同（pretrain_hq.jsonl、sft_mini_512.jsonl、dpo.jsonl …）。

    {"text": "..."}                                                     PretrainDataset
    {"conversations": [{"role": "user", "content": "..."}, ...]}        SFTDataset（只对助手的回答算 loss）
    {"chosen": [...消息], "rejected": [...消息]}                          DPODataset

每条样本返回 input_ids 与 labels，二者对齐、长度都是 max_seq_len（模型内部再错一位算下一个 token 的 loss）；
labels 里 -100 的位置不计 loss（padding、SFT 里用户说的话）。
大文件只在开头扫一遍记下每行的字节偏移，取样本时才读那一行，不会整个读进内存。
"""
import json
from pathlib import Path
from typing import List

import torch
from torch.utils.data import Dataset

from model.tokenization import find_structure_literal

IGNORE_INDEX = -100


class DataFormatError(ValueError):
    """数据文件里某一行不合格；消息里有文件名和行号。"""


class JsonlFile:
    """按行随机访问的 jsonl：只存每行的起始字节偏移。

    skip_bad_lines=False（默认）：不预先检查，读到坏行时报出文件名和行号；
    skip_bad_lines=True：开头把每行都解析并用 validate 检查一遍，跳过坏行并记下数量（self.skipped）。
    """

    def __init__(self, path, validate=None, skip_bad_lines: bool = False):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"找不到数据文件 {self.path}")
        self.validate = validate
        self.offsets: List[int] = []
        self.line_numbers: List[int] = []
        self.skipped = 0
        with open(self.path, "rb") as f:
            offset = 0
            for line_no, line in enumerate(f, 1):
                if line.strip():
                    if not skip_bad_lines or self._is_good(line):
                        self.offsets.append(offset)
                        self.line_numbers.append(line_no)
                    else:
                        self.skipped += 1
                offset += len(line)
        if not self.offsets:
            raise DataFormatError(f"{self.path} 里没有可用的样本（空文件，或所有行都不合格）")

    def _is_good(self, line: bytes) -> bool:
        try:
            row = json.loads(line)
            if self.validate is not None:
                self.validate(row)
            return True
        except (json.JSONDecodeError, UnicodeDecodeError, DataFormatError):
            return False

    def __len__(self) -> int:
        return len(self.offsets)

    def __getitem__(self, i: int) -> dict:
        with open(self.path, "rb") as f:
            f.seek(self.offsets[i])
            line = f.readline()
        where = f"{self.path} 第 {self.line_numbers[i]} 行"
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataFormatError(f"{where} 不是合法的 JSON（{e}）；可以修好这一行，或加 --skip_bad_lines 跳过坏行") from e
        try:
            if self.validate is not None:
                self.validate(row)
        except DataFormatError as e:
            raise DataFormatError(f"{where}：{e}；可以修好这一行，或加 --skip_bad_lines 跳过坏行") from e
        return row


def check_text(row):
    if not isinstance(row, dict) or not isinstance(row.get("text"), str):
        raise DataFormatError('预训练数据每行应是 {"text": "..."}')


def check_messages(messages, key="conversations"):
    if not isinstance(messages, list) or not messages:
        raise DataFormatError(f"{key} 应是非空的消息列表")
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise DataFormatError(f'{key} 里的每条消息应是 {{"role": ..., "content": "..."}}，收到 {str(m)[:80]}')
        literal = find_structure_literal(m["content"])
        if literal is not None:  # 否则编码后它就是真的结构 token：用户内容能伪造一段"助手回答"并被当成训练目标
            raise DataFormatError(f"{key} 里 {m['role']} 的消息内容含有特殊 token 的字面量 {literal}，"
                                  "编码时会变成对话结构（模板注入）；请清洗数据")
    if not any(m["role"] == "assistant" for m in messages):
        raise DataFormatError(f"{key} 里没有 assistant 的回答，没有可学的内容")


def check_conversations(row):
    if not isinstance(row, dict) or "conversations" not in row:
        raise DataFormatError('SFT 数据每行应是 {"conversations": [...]}')
    check_messages(row["conversations"])


def check_preference(row):
    if not isinstance(row, dict) or "chosen" not in row or "rejected" not in row:
        raise DataFormatError('DPO 数据每行应是 {"chosen": [...], "rejected": [...]}')
    check_messages(row["chosen"], "chosen")
    check_messages(row["rejected"], "rejected")


def pad_to(ids: List[int], labels: List[int], length: int, pad_id: int) -> dict:
    ids, labels = ids[:length], labels[:length]
    n_pad = length - len(ids)
    return {"input_ids": torch.tensor(ids + [pad_id] * n_pad, dtype=torch.long),
            "labels": torch.tensor(labels + [IGNORE_INDEX] * n_pad, dtype=torch.long)}


def assistant_labels(ids: List[int], tokenizer) -> List[int]:
    """只保留助手回答（含结尾的 <|im_end|>）的 labels，其余置 -100。

    回答从 "<|im_start|>assistant\\n" 之后开始，到下一个 <|im_end|> 为止。
    """
    header = [tokenizer.bos_token_id] + tokenizer.encode("assistant\n")
    labels = [IGNORE_INDEX] * len(ids)
    i = 0
    while i < len(ids):
        if ids[i:i + len(header)] == header:
            start = i + len(header)
            end = start
            while end < len(ids) and ids[end] != tokenizer.eos_token_id:
                end += 1
            for j in range(start, min(end + 1, len(ids))):  # +1：<|im_end|> 也要学，模型才知道何时停
                labels[j] = ids[j]
            i = end + 1
        else:
            i += 1
    return labels


class PretrainDataset(Dataset):
    """<|im_start|> + 文本 + <|im_end|>，截断/补齐到 max_seq_len；padding 不计 loss。"""

    def __init__(self, path, tokenizer, max_seq_len: int = 512, skip_bad_lines: bool = False):
        self.rows = JsonlFile(path, check_text, skip_bad_lines)
        self.tokenizer, self.max_seq_len = tokenizer, max_seq_len

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        tok = self.tokenizer
        text_ids = tok.encode(self.rows[i]["text"])[: self.max_seq_len - 2]
        ids = [tok.bos_token_id] + text_ids + [tok.eos_token_id]
        return pad_to(ids, list(ids), self.max_seq_len, tok.pad_token_id)


class SFTDataset(Dataset):
    """对话套上分词器的对话模板；只有助手的回答参与 loss。"""

    def __init__(self, path, tokenizer, max_seq_len: int = 512, skip_bad_lines: bool = False):
        self.rows = JsonlFile(path, check_conversations, skip_bad_lines)
        self.tokenizer, self.max_seq_len = tokenizer, max_seq_len

    def __len__(self):
        return len(self.rows)

    def encode_messages(self, messages) -> dict:
        ids = self.tokenizer.encode(self.tokenizer.apply_chat_template(messages))[: self.max_seq_len]
        return pad_to(ids, assistant_labels(ids, self.tokenizer), self.max_seq_len, self.tokenizer.pad_token_id)

    def __getitem__(self, i):
        return self.encode_messages(self.rows[i]["conversations"])


class DPODataset(SFTDataset):
    """同一个问题的一对回答：chosen（更好的）与 rejected（更差的），各自编码成 SFT 的格式。"""

    def __init__(self, path, tokenizer, max_seq_len: int = 512, skip_bad_lines: bool = False):
        self.rows = JsonlFile(path, check_preference, skip_bad_lines)
        self.tokenizer, self.max_seq_len = tokenizer, max_seq_len

    def __getitem__(self, i):
        row = self.rows[i]
        chosen, rejected = self.encode_messages(row["chosen"]), self.encode_messages(row["rejected"])
        return {"chosen_ids": chosen["input_ids"], "chosen_labels": chosen["labels"],
                "rejected_ids": rejected["input_ids"], "rejected_labels": rejected["labels"]}
