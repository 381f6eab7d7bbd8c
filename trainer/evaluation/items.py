"""读评测文件。评测集都不大，整个读进内存；任何一行不合格都报"文件:行号：哪里不对"，不跳过——
悄悄少评几题会让准确率无法与别人比较。

选择题（C-Eval / CMMLU 的列名，ARC 式的选项列表也行）：
    {"question": "...", "A": "...", "B": "...", "C": "...", "D": "...", "answer": "B"}
    {"question": "...", "options": ["...", "...", "..."], "answer": "C"}        # answer 也可以是从 0 开始的下标
留出文本（bpb）：.txt 整个文件是一篇文档；.jsonl 每行 {"text": "..."} 是一篇。
"""
import json
import string
from dataclasses import dataclass
from pathlib import Path
from typing import List, Tuple

LETTERS = string.ascii_uppercase


class EvalDataError(ValueError):
    """评测文件不合格；消息以"文件:行号"开头。"""


@dataclass(frozen=True)
class MCItem:
    question: str
    options: Tuple[str, ...]
    answer: int  # 正确选项的下标（0 = A）


def read_jsonl(path) -> List[Tuple[int, object]]:
    """[(行号, 解析出的对象)]；空行跳过。"""
    path = Path(path)
    if not path.is_file():
        raise EvalDataError(f"找不到评测文件 {path}")
    rows = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append((line_no, json.loads(line)))
            except json.JSONDecodeError as e:
                raise EvalDataError(f"{path}:{line_no}: 不是合法的 JSON（{e.msg}）；请修好这一行") from None
    if not rows:
        raise EvalDataError(f"{path} 里没有任何样本")
    return rows


def parse_mc_row(row) -> MCItem:
    """一行选择题 → MCItem；不合格时抛 ValueError（调用方加上文件和行号）。"""
    if not isinstance(row, dict) or not isinstance(row.get("question"), str):
        raise ValueError('每行应是 {"question": "...", "A": "...", "B": "...", ..., "answer": "A"}')
    if "options" in row:
        options = row["options"]
        if not isinstance(options, list):
            raise ValueError('"options" 应是字符串列表')
    else:
        options = []
        for letter in LETTERS:  # A、B、C… 连续的列
            if letter not in row:
                break
            options.append(row[letter])
    if len(options) < 2 or not all(isinstance(o, str) and o.strip() for o in options):
        raise ValueError(f"至少要有两个非空的字符串选项（\"A\"、\"B\"… 列或 \"options\" 列表），收到 {len(options)} 个")
    answer = row.get("answer")
    if isinstance(answer, str) and len(answer.strip()) == 1 and answer.strip().upper() in LETTERS[:len(options)]:
        index = LETTERS.index(answer.strip().upper())
    elif isinstance(answer, int) and not isinstance(answer, bool) and 0 <= answer < len(options):
        index = answer
    else:
        raise ValueError(f"\"answer\" 应是 {LETTERS[0]}–{LETTERS[len(options) - 1]} 中的一个字母或选项下标，收到 {answer!r}")
    return MCItem(row["question"], tuple(options), index)


def load_mc_items(path) -> List[MCItem]:
    items = []
    for line_no, row in read_jsonl(path):
        try:
            items.append(parse_mc_row(row))
        except ValueError as e:
            raise EvalDataError(f"{path}:{line_no}: {e}") from None
    return items


def load_texts(path) -> List[str]:
    """留出文本：.jsonl 每行一篇（{"text": ...}），其他后缀整个文件一篇。"""
    path = Path(path)
    if path.suffix != ".jsonl":
        if not path.is_file():
            raise EvalDataError(f"找不到评测文件 {path}")
        text = path.read_text(encoding="utf-8")
        if not text.strip():
            raise EvalDataError(f"{path} 是空文件")
        return [text]
    texts = []
    for line_no, row in read_jsonl(path):
        if not isinstance(row, dict) or not isinstance(row.get("text"), str) or not row["text"]:
            raise EvalDataError(f'{path}:{line_no}: 每行应是 {{"text": "非空文本"}}')
        texts.append(row["text"])
    return texts
