"""可验证任务（RLVR：reinforcement learning with verifiable rewards）：程序能出题，也能判对错。

每个任务给出 (问题, 参考答案, 草稿)。草稿是写在 <think> 里的中间步骤，只用于生成推理 SFT 数据；
RL 的奖励只看 <answer> 里的最终答案是否通过 check()。
typical_mistake() 给出每个任务的一种典型错误（最大与最小弄反、数多一个），
用来造"不可靠老师"的 SFT 数据：模型从中学到的是正确与错误两种答法的混合，RL 的验证器奖励再把它推向正确的那一种。

    max    4 个一位数里最大的           "Max: 4 7 1 9"              → "9"        草稿：逐个比较后的当前最大值
    min    4 个一位数里最小的           "Min: 4 7 1 9"              → "1"        草稿：逐个比较后的当前最小值
    count  数一串字母里某个字母的个数   "Count a in: b a c a a"     → "3"        草稿：它出现的位置
任务刻意简单：--quick 的小模型（hidden 128、2 层）在一分钟的 SFT 里就能学会一部分"怎么做"，
RL 要纠正的主要是"做哪一种"（问的是最大还是最小，要读题）。
"""
import random
import re
from dataclasses import dataclass
from typing import Callable, Dict

TASK_NAMES = ("max", "min", "count")


@dataclass(frozen=True)
class Problem:
    task: str
    question: str
    answer: str  # 参考答案（规范写法）
    scratchpad: str  # <think> 里的中间步骤


def make_extreme(task: str, rng: random.Random) -> Problem:
    """max / min：4 个一位数里最大 / 最小的；草稿是逐个比较后的当前最值。"""
    numbers = [rng.randint(0, 9) for _ in range(4)]
    pick = max if task == "max" else min
    running = [pick(numbers[:i + 1]) for i in range(len(numbers))]
    return Problem(task, f"{task.capitalize()}: " + " ".join(map(str, numbers)), str(pick(numbers)),
                   " ".join(map(str, running)))


def make_count(rng: random.Random) -> Problem:
    letters = [rng.choice("abc") for _ in range(rng.randint(4, 6))]
    target = rng.choice("abc")
    where = [str(i + 1) for i, ch in enumerate(letters) if ch == target]
    return Problem("count", f"Count {target} in: " + " ".join(letters), str(len(where)),
                   f"{target} at " + (" ".join(where) if where else "none"))


MAKERS: Dict[str, Callable[[random.Random], Problem]] = {
    "max": lambda rng: make_extreme("max", rng), "min": lambda rng: make_extreme("min", rng), "count": make_count}


def make_problem(task: str, rng: random.Random) -> Problem:
    if task not in MAKERS:
        raise ValueError(f"未知任务 {task!r}，可选 {TASK_NAMES}")
    return MAKERS[task](rng)


def typical_mistake(problem: Problem) -> str:
    """这道题的一个典型错误答案（与正确答案不同）。"""
    if problem.task in ("max", "min"):
        numbers = [int(x) for x in problem.question.split(": ")[1].split()]
        return str(min(numbers) if problem.task == "max" else max(numbers))  # 最大最小弄反（数字全相同时恰好也对）
    return str(int(problem.answer) + 1)  # 数多了一个


def _integers(text: str):
    """答案文本 → 整数列表；里面除了整数、空格和逗号还有别的字符就返回 None（不合格的答案）。"""
    text = text.strip()
    if not text or not re.fullmatch(r"-?\d+([ ,]+-?\d+)*", text):
        return None
    return [int(x) for x in re.findall(r"-?\d+", text)]


def check(task: str, reference: str, answer: str) -> bool:
    """answer 是否与参考答案一致：比较整个整数序列（这三个任务的答案都是一个整数）。"""
    if task not in MAKERS:
        raise ValueError(f"未知任务 {task!r}，可选 {TASK_NAMES}")
    got, want = _integers(answer), _integers(reference)
    if got is None:
        return False
    return got == want
