"""选择题评测：让模型给每个选项打分，分最高的就是它的答案；报准确率与它的标准误。

三种打分（--mc_mode），都和 lm-evaluation-harness 的做法一致，所以本地任务上两边的准确率逐题相同：
    sum     上下文 "题目\\n答案：" 之后续写选项原文，取 log p(选项) 之和最大的。          = lm-eval 的 acc
            长选项要多付几个 token 的概率，天然吃亏。
    norm    同样的分数除以选项的字符数（长度归一化）。                                = lm-eval 的 acc_norm
    letter  把选项列成 "A. …\\nB. …" 放进题目，比较续写 " A"、" B" … 的概率。         = lm-eval 的 ceval-valid
            要求模型读懂"选项—字母"的对应，小模型或只做过预训练的模型常常接近瞎猜。
标准误：逐题对错（0/1）的样本标准差 / √n（与 lm-eval 的 acc_stderr 相同）；n = 100、准确率 0.5 时约 0.05，
两个模型的准确率差在两三个标准误以内就说明不了谁更好。
"""
import math
from typing import Dict, List, Sequence

import numpy as np

from trainer.evaluation.items import LETTERS, MCItem
from trainer.evaluation.loglik import Request, score_requests

MC_MODES = ("sum", "norm", "letter")
ANSWER_CUE = "答案："


def option_prompt(item: MCItem) -> str:
    """sum / norm 的上下文：题目 + "答案："，选项原文紧接在后面（没有分隔符）。"""
    return f"{item.question}\n{ANSWER_CUE}"


def letter_prompt(item: MCItem) -> str:
    """letter 的上下文：与 lm-eval 的 C-Eval 模板相同，续写是 " A"、" B" …（前面有一个空格）。"""
    listed = "".join(f"\n{LETTERS[i]}. {o}" for i, o in enumerate(item.options))
    return f"{item.question.strip()}{listed}\n{ANSWER_CUE}"


def continuations(item: MCItem, mode: str) -> List[str]:
    return [f" {LETTERS[i]}" for i in range(len(item.options))] if mode == "letter" else list(item.options)


def encode_request(tokenizer, context: str, continuation: str) -> Request:
    """(上下文, 续写) 文本 → token：上下文前面加 BOS（预训练时每篇文本都以它开头），两段分开编码。
    lm-eval 适配器也用它，所以两边送进模型的 token 完全相同。"""
    return [tokenizer.bos_token_id] + tokenizer.encode(context), tokenizer.encode(continuation)


def accuracy_and_stderr(correct: Sequence[bool]) -> Dict[str, float]:
    n = len(correct)
    acc = float(np.mean(correct))
    stderr = math.sqrt(acc * (1 - acc) / (n - 1)) if n > 1 else float("nan")  # = std(ddof=1) / √n
    return {"acc": acc, "acc_stderr": stderr, "n": n}


def evaluate_mc(model, tokenizer, items: List[MCItem], modes: Sequence[str] = MC_MODES, batch_size: int = 16,
                max_len: int = 512, progress: bool = False) -> Dict[str, dict]:
    """每种打分 → {acc, acc_stderr, n, correct（逐题 "1"/"0"）, predictions（选的下标）}。"""
    unknown = set(modes) - set(MC_MODES)
    if unknown:
        raise ValueError(f"未知的打分方式 {sorted(unknown)}，可选 {MC_MODES}")
    styles = sorted({"letter" if m == "letter" else "option" for m in modes})
    scores = {}  # 提示风格 → 每题每个选项的对数概率
    for style in styles:
        prompt = letter_prompt if style == "letter" else option_prompt
        requests, owners = [], []
        for k, item in enumerate(items):
            for cont in continuations(item, "letter" if style == "letter" else "sum"):
                requests.append(encode_request(tokenizer, prompt(item), cont))
                owners.append(k)
        flat = score_requests(model, requests, batch_size=batch_size, max_len=max_len,
                              pad_id=tokenizer.pad_token_id, progress=progress, desc=f"mc:{style}")
        per_item = [[] for _ in items]
        for k, (logprob, _) in zip(owners, flat):
            per_item[k].append(logprob)
        scores[style] = per_item
    results = {}
    for mode in modes:
        predictions = []
        for item, option_scores in zip(items, scores["letter" if mode == "letter" else "option"]):
            s = np.array(option_scores)
            if mode == "norm":
                s = s / np.array([len(o) for o in item.options], dtype=float)
            predictions.append(int(np.argmax(s)))  # 平分时取靠前的选项（同 lm-eval）
        correct = [p == item.answer for p, item in zip(predictions, items)]
        results[mode] = {**accuracy_and_stderr(correct), "correct": "".join("1" if c else "0" for c in correct),
                         "predictions": predictions}
    return results
