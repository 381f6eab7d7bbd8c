"""推理 SFT 数据：与 SFT 同一格式（{"conversations": [...]}），助手回答是 "<think>\\n草稿\\n</think>\\n<answer>\\n答案\\n</answer>"。

比 SFTDataset 多返回一个 loss_weight (T,)：标签 <think> </think> <answer> </answer> 所在的 token 权重为 tag_weight，
其余回答 token 为 1（MiniMind 的 train_distill_reason 对这些位置加权 10 倍：格式错一个标签，整条回答就判不了分）。
标签的 token 位置用分词器给出的字符偏移来找：同一个标签在不同上下文里可能被切成不同的 token，只按字符区间判断才可靠。
"""
import re

import torch

from dataset.lm_dataset import IGNORE_INDEX, SFTDataset, assistant_labels, pad_to

TAG_RE = re.compile(r"</?(think|answer)>")


class ReasonSFTDataset(SFTDataset):
    def __init__(self, path, tokenizer, max_seq_len: int = 512, skip_bad_lines: bool = False, tag_weight: float = 10.0):
        super().__init__(path, tokenizer, max_seq_len, skip_bad_lines)
        self.tag_weight = tag_weight

    def __getitem__(self, i):
        text = self.tokenizer.apply_chat_template(self.rows[i]["conversations"])
        encoding = self.tokenizer.tokenizer.encode(text, add_special_tokens=False)
        ids, offsets = encoding.ids[: self.max_seq_len], encoding.offsets[: self.max_seq_len]
        item = pad_to(ids, assistant_labels(ids, self.tokenizer), self.max_seq_len, self.tokenizer.pad_token_id)
        spans = [m.span() for m in TAG_RE.finditer(text)]
        in_tag = [any(s < end and start < e for s, e in spans) for start, end in offsets]
        weight = torch.ones(self.max_seq_len)
        weight[: len(ids)] = torch.tensor([self.tag_weight if t else 1.0 for t in in_tag])
        item["loss_weight"] = torch.where(item["labels"] == IGNORE_INDEX, torch.zeros_like(weight), weight)
        return item
