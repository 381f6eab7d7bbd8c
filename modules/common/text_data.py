"""字符级文本数据：分词器、训练/验证切分、随机取批（标签不移位，模型内部移位，同 MiniMind）。"""
import json
import math
from collections import Counter
from pathlib import Path

import torch


class CharTokenizer:
    """字符级分词器：词表是文本里出现过的全部字符，按码位排序，id 即排序后的下标。"""

    def __init__(self, text: str):
        self.chars = sorted(set(text))
        if not self.chars:
            raise ValueError("CharTokenizer 需要非空文本来构建词表")
        self.stoi = {ch: i for i, ch in enumerate(self.chars)}

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[ch] for ch in text]
        except KeyError as e:
            ch = e.args[0]
            raise ValueError(
                f"字符 {ch!r}（U+{ord(ch):04X}）不在词表中（词表 {self.vocab_size} 个字符，来自构建分词器的文本）；"
                "请用包含它的文本重新构建 CharTokenizer，或先从输入里去掉它。"
            ) from None

    def decode(self, ids) -> str:
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        bad = [i for i in ids if not 0 <= int(i) < self.vocab_size]
        if bad:
            raise ValueError(f"id {bad[0]} 超出词表范围 [0, {self.vocab_size})")
        return "".join(self.chars[int(i)] for i in ids)

    def save(self, path: str | Path) -> None:
        payload = {"type": "char", "chars": self.chars}
        Path(path).write_text(json.dumps(payload, ensure_ascii=False), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> "CharTokenizer":
        payload = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(payload, dict) or payload.get("type") != "char" or not isinstance(payload.get("chars"), list):
            raise ValueError(f"{path} 不是 CharTokenizer.save 写出的文件（需要 {{'type': 'char', 'chars': [...]}}）")
        return cls("".join(payload["chars"]))


def unigram_entropy(text: str) -> float:
    """只按字符频率猜下一个字符、不看上下文时最好的交叉熵（nats）。没学到上下文的模型（LR 太大塌缩、
    深层网络训不动）loss 会停在这附近；要和验证 loss 比，就传训练部分的文本。"""
    counts = Counter(text)
    total = sum(counts.values())
    return -sum(c / total * math.log(c / total) for c in counts.values())


def train_val_split(ids: torch.Tensor, val_fraction: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """按顺序切分（同 nanoGPT）：前 1-val_fraction 做训练，最后 val_fraction 做验证。"""
    if ids.dim() != 1:
        raise ValueError(f"ids 应是一维 token 序列，收到形状 {tuple(ids.shape)}")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction 应在 (0, 1) 内，收到 {val_fraction}")
    n_train = int(len(ids) * (1.0 - val_fraction))
    return ids[:n_train], ids[n_train:]


class BatchSampler:
    """从一维 token 序列里随机截取 batch_size 段长 block_size 的窗口。

    labels 与 input_ids 相同（MiniMind 约定：模型内部用 logits[:, :-1] 预测 labels[:, 1:]）。
    随机偏移来自自己的 torch.Generator，同一个 seed 得到同一串批次，不影响全局随机状态。
    """

    def __init__(self, data: torch.Tensor, block_size: int, batch_size: int, seed: int = 0):
        if data.dim() != 1:
            raise ValueError(f"data 应是一维 token 序列，收到形状 {tuple(data.shape)}")
        if len(data) < block_size:
            raise ValueError(f"数据只有 {len(data)} 个 token，不够一个 block_size={block_size} 的窗口")
        self.data = data.long()
        self.block_size = block_size
        self.batch_size = batch_size
        self.generator = torch.Generator().manual_seed(seed)

    def sample(self, device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        n_offsets = len(self.data) - self.block_size + 1
        starts = torch.randint(n_offsets, (self.batch_size, 1), generator=self.generator)  # (B, 1)
        index = starts + torch.arange(self.block_size)  # (B, T)
        input_ids = self.data[index]  # (B, T)
        labels = input_ids.clone()  # (B, T)
        if device is not None:
            input_ids, labels = input_ids.to(device), labels.to(device)
        return input_ids, labels


def char_lm_batches(text: str, block_size: int, batch_size: int, seed: int = 0, val_fraction: float = 0.1,
                    device: torch.device | str | None = None):
    """字符级语言模型实验的一站式数据：返回 (tokenizer, get_batch)。

    get_batch(split) 里 split 为 "train" 或 "val"，返回 (input_ids, labels)，可直接交给 training.train_model。
    验证集的取批用另一个种子，训练批的顺序不受评估次数影响。
    """
    tokenizer = CharTokenizer(text)
    train_ids, val_ids = train_val_split(torch.tensor(tokenizer.encode(text)), val_fraction)
    samplers = {"train": BatchSampler(train_ids, block_size, batch_size, seed),
                "val": BatchSampler(val_ids, block_size, batch_size, seed + 1)}

    def get_batch(split: str):
        if split not in samplers:
            raise ValueError(f"split 应为 'train' 或 'val'，收到 {split!r}")
        return samplers[split].sample(device)

    return tokenizer, get_batch
