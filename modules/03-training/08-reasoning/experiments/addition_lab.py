"""实验 1–4 共用的"小学加法"实验台：出题、三种答案写法、按 token 预算取批、训练、贪心解码与采样。

    problems = sample_problems(rng, 3, 200)                       # [(a, b, 3), ...]：200 道 3 位加法
    text = render((367, 85, 3), "scratchpad")                     # "367+085=7+5+0=12;6+8+1=15;3+0+1=04;|0452\n"
    model = new_model(seed)                                        # 字符级 LabModel（默认开关 = MiniMind）
    history = train_format(model, "reverse", steps, ...)           # 等 token 预算训练，返回每个检查点的准确率
    answers, n_tokens = generate(model, prompts, temperature=0)    # 贪心（或采样）续写，截到换行
    check_scratchpad(problem, reply)                              # 不看标准答案的验证器：逐步检查草稿
    train_on_pairs(model, [(prompt, reply), ...], steps, 64, seed)  # 在给定的文本对上 SFT（实验 4 的学生）

三种写法（Lee et al. 2023, "Teaching Arithmetic to Small Transformers"）：
- plain：      "367+085=0452"    普通写法，先写最高位——但进位要从最低位算起，模型必须"一眼"算完所有进位
- reverse：    "367+085=2540"    答案倒着写（最低位在前）：每一位只依赖同位数字和上一位的进位，正好是竖式的顺序
- scratchpad： "367+085=7+5+0=12;6+8+1=15;3+0+1=04;|0452"  先逐位写出"两位数字 + 进位 = 两位结果"，再写答案
                （Nye et al. 2021 的 scratchpad；每一步的两位结果 = 进位 + 这一位的和）
一道题是 (a, b, d)：两个操作数补零到 d 位、答案补零到 d+1 位（同 Lee et al.：对齐靠位置就能完成）。
损失只算在 "=" 之后（同 SFT 只训练回答）。
"""
import math
import random
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[4]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402

from modules.common.lab_model import LabConfig, LabModel  # noqa: E402
from modules.common.text_data import CharTokenizer  # noqa: E402
from modules.common.training import lr_at  # noqa: E402

FORMATS = ("plain", "reverse", "scratchpad")
# 实验 3 的 SFT 起点用的两种"|"写法：direct = 不打草稿直接答（"|0452"），scratchpad = 先打草稿再答；
# "mixed" = 训练时按这个顺序逐步轮换（每 4 步 1 步 direct），于是"想不想打草稿"成了模型在第一个 token 上
# 自己做的选择（"|" 还是数字）
MIXED = ("scratchpad", "scratchpad", "scratchpad", "direct")
VOCAB = "0123456789+=;|\n"  # 换行 = 回答结束（相当于 eos）
TOKENIZER = CharTokenizer(VOCAB)
EOS = TOKENIZER.stoi["\n"]
PAD = EOS  # padding 位置的标签是 -100，用什么 id 垫都不影响损失
LR, WARMUP = 3e-3, 50  # 约 10 万参数的小模型用较大的学习率；预热 50 步


def sample_problems(rng: random.Random, digits: int, n: int, exclude=frozenset()) -> list:
    """n 道 digits 位加法题 (a, b, digits)：两个操作数均匀取自 [0, 10^digits)，不取 exclude 里的题。"""
    problems = []
    while len(problems) < n:
        problem = (rng.randrange(10 ** digits), rng.randrange(10 ** digits), digits)
        if problem not in exclude:
            problems.append(problem)
    return problems


def digits_lsb_first(x: int, d: int) -> list[int]:
    """补零到 d 位后的各位数字，最低位在前：digits_lsb_first(85, 3) == [5, 8, 0]。"""
    return [int(ch) for ch in str(x).zfill(d)[::-1]]


def scratchpad_steps(a: int, b: int, d: int) -> str:
    """竖式的每一步，从最低位起："x+y+c=rs;"，rs 是两位结果（r = 下一位的进位，s = 这一位的数字）。"""
    steps, carry = [], 0
    for x, y in zip(digits_lsb_first(a, d), digits_lsb_first(b, d)):
        total = x + y + carry
        steps.append(f"{x}+{y}+{carry}={total:02d};")
        carry = total // 10
    return "".join(steps)


def answer_text(problem, fmt: str) -> str:
    """"=" 之后、换行之前模型要写的内容。"""
    a, b, d = problem
    total = str(a + b).zfill(d + 1)
    if fmt == "plain":
        return total
    if fmt == "reverse":
        return total[::-1]
    if fmt == "scratchpad":
        return scratchpad_steps(a, b, d) + "|" + total
    if fmt == "direct":
        return "|" + total
    raise ValueError(f"未知的答案写法 {fmt!r}；可选 {FORMATS + ('direct',)}")


def prompt_text(problem) -> str:
    a, b, d = problem
    return f"{a:0{d}d}+{b:0{d}d}="


def render(problem, fmt: str) -> str:
    return prompt_text(problem) + answer_text(problem, fmt) + "\n"


def parse_answer(reply: str, fmt: str):
    """模型的续写（不含题目）→ 整数答案；写得不成形就返回 None。"""
    reply = reply.split("\n")[0]
    if fmt in ("scratchpad", "direct", "mixed"):
        if "|" not in reply:
            return None
        reply = reply.rsplit("|", 1)[1]
    elif fmt == "reverse":
        reply = reply[::-1]
    return int(reply) if reply.isdigit() else None


def check_scratchpad(problem, reply: str) -> bool:
    """不看标准答案的验证器（best-of-N 用）：只做逐步的局部检查——每一步的两个数字是否抄对了题里同一位的数字、
    一位数加法是否算对、进位是否等于上一步的进位、答案的每一位是否就是草稿里写下的那一位。
    它从不自己做多位数加法；全部检查通过时，这条推理链本身就证明了答案（数学题里程序化验证器做的就是这件事）。"""
    reply = reply.split("\n")[0]
    if reply.count("|") != 1:
        return False
    steps_text, answer = reply.split("|")
    steps = steps_text.split(";")
    if steps[-1] != "" or not answer.isdigit():
        return False
    a, b, d = problem
    da, db = digits_lsb_first(a, d), digits_lsb_first(b, d)
    if len(steps) - 1 != d:
        return False
    carry, digits = 0, []
    for i, step in enumerate(steps[:-1]):
        # 每一步必须是 "x+y+c=rs"：8 个字符，符号在固定位置，其余是数字
        symbols_ok = len(step) == 8 and step[1] + step[3] + step[5] == "++="
        if not symbols_ok or not (step[0] + step[2] + step[4] + step[6:]).isdigit():
            return False
        x, y, c, rs = int(step[0]), int(step[2]), int(step[4]), int(step[6:])
        if x != da[i] or y != db[i]:
            return False  # 抄错了题
        if c != carry or x + y + c != rs:
            return False  # 进位没接上，或一位数加法算错
        carry = rs // 10
        digits.append(str(rs % 10))
    return answer == str(carry) + "".join(reversed(digits))


def well_formed(problem, reply: str) -> bool:
    """格式检查（实验 3 的格式奖励）：只看形状、不看算得对不对——"|" + d+1 位数字（直接答），
    或 d 个 "x+y+c=rs;" 形状的步骤 + "|" + d+1 位数字（打草稿），并且写完了（以换行结束）。"""
    if not reply.endswith("\n") or reply.count("|") != 1:
        return False
    steps_text, answer = reply[:-1].split("|")
    d = problem[2]
    if len(answer) != d + 1 or not answer.isdigit():
        return False
    if steps_text == "":
        return True
    steps = steps_text.split(";")
    return steps[-1] == "" and len(steps) - 1 == d and all(
        len(s) == 8 and s[1] + s[3] + s[5] == "++=" and (s[0] + s[2] + s[4] + s[6:]).isdigit() for s in steps[:-1])


def new_model(seed: int, hidden_size: int = 64, num_layers: int = 2) -> LabModel:
    """字符级 LabModel（开关全是默认 = MiniMind 的结构：RMSNorm、RoPE、SwiGLU……），同一种子同一初始化。"""
    torch.manual_seed(seed)
    config = LabConfig(vocab_size=TOKENIZER.vocab_size, hidden_size=hidden_size, num_layers=num_layers,
                       n_heads=4, max_seq_len=96)
    return LabModel(config)


def encode_batch(problems, fmt: str):
    """题目列表 → (input_ids, labels)，各 (B, T)，右侧 padding；labels 只保留 "=" 之后的回答（含换行），其余 -100。"""
    return encode_pairs([(prompt_text(p), answer_text(p, fmt)) for p in problems])


def encode_pairs(pairs):
    """(题目, 回答) 文本对 → (input_ids, labels)，各 (B, T)，右侧 padding；回答后面补上换行（= eos），
    labels 只保留回答与换行，其余 -100（同 SFT 只训练回答）。"""
    rows = [(TOKENIZER.encode(prompt), TOKENIZER.encode(reply + "\n")) for prompt, reply in pairs]
    width = max(len(p) + len(r) for p, r in rows)
    ids = torch.full((len(rows), width), PAD, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, (p, r) in enumerate(rows):
        ids[i, :len(p) + len(r)] = torch.tensor(p + r)
        labels[i, len(p):len(p) + len(r)] = torch.tensor(r)
    return ids, labels


def token_budget_batch(rng: random.Random, fmt: str, budget: int, max_digits: int, exclude):
    """按 token 预算取一批：位数在 1..max_digits 里均匀抽，不断抽题直到这批的总 token 数（题目 + 回答 + 换行）达到 budget。
    三种写法每步消耗同样多的训练 token，scratchpad 每条更长，所以每步见到的题更少——这就是"等 token"的比较。"""
    problems, used = [], 0
    while used < budget:
        problem, = sample_problems(rng, rng.randint(1, max_digits), 1, exclude)
        problems.append(problem)
        used += len(render(problem, fmt))
    return problems, used


@torch.no_grad()
def generate(model, prompts: list, max_new_tokens: int, temperature: float = 0.0, generator=None):
    """批量续写（没有 KV cache，每步重算整段：序列不到 100 个字符，CPU 上够快）。
    temperature=0 贪心，否则按 softmax(logits / T) 采样。返回 (续写文本列表, 每条生成的 token 数)，遇到换行即停。"""
    model.eval()
    device = next(model.parameters()).device
    encoded = [TOKENIZER.encode(p) for p in prompts]
    outputs = [[] for _ in prompts]
    # 题目长度不一：按长度分组，同组一起解码（同组内没有 padding，位置编码与训练时一致）
    groups = {}
    for i, ids in enumerate(encoded):
        groups.setdefault(len(ids), []).append(i)
    for length, members in groups.items():
        ids = torch.tensor([encoded[i] for i in members], device=device)  # (G, length)
        alive = torch.ones(len(members), dtype=torch.bool, device=device)
        for _ in range(max_new_tokens):
            logits = model(ids).logits[:, -1].float()  # (G, V)
            if temperature > 0:
                probs = torch.softmax(logits / temperature, dim=-1)
                nxt = torch.multinomial(probs, 1, generator=generator).squeeze(1)
            else:
                nxt = logits.argmax(-1)
            for j, i in enumerate(members):
                if alive[j]:
                    outputs[i].append(int(nxt[j]))
            alive &= nxt != EOS
            if not alive.any():
                break
            ids = torch.cat([ids, nxt[:, None]], dim=1)
    texts = [TOKENIZER.decode(o) for o in outputs]
    return texts, [len(o) for o in outputs]


def accuracy(model, problems, fmt: str, max_new_tokens: int | None = None) -> list[float]:
    """贪心解码，逐题 0/1 正确性（按题目顺序，可跨模型逐题配对）。"""
    if max_new_tokens is None:  # 比标准回答多 1 个（换行）；mixed 按更长的 scratchpad 算
        max_new_tokens = max(len(answer_text(p, "scratchpad" if fmt == "mixed" else fmt)) for p in problems) + 1
    replies, _ = generate(model, [prompt_text(p) for p in problems], max_new_tokens)
    return [float(parse_answer(r, fmt) == a + b) for r, (a, b, _) in zip(replies, problems)]


def train_format(model, fmt: str, steps: int, token_budget: int, seed: int, max_digits: int,
                 exclude, eval_sets: dict, eval_every: int, progress=None) -> dict:
    """AdamW + 预热 + 余弦（modules/common/training.py 的 lr_at），每步 token_budget 个训练 token。
    fmt="mixed" 时按步轮换 MIXED 里的写法。
    每 eval_every 步（和最后一步）在 eval_sets {名字: 题目列表} 上测贪心准确率。
    返回 {"steps": [...], "<名字>": [每个检查点的准确率], "<名字>_correct": [每个检查点的逐题 0/1],
          "tokens": 总训练 token, "problems": 见过的题数}。"""
    rng = random.Random(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, betas=(0.9, 0.98), weight_decay=0.0)
    history = {"steps": [], "tokens": 0, "problems": 0, **{name: [] for name in eval_sets},
               **{f"{name}_correct": [] for name in eval_sets}}
    for step in range(steps):
        model.train()
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, lr=LR, warmup_steps=WARMUP, total_steps=steps)
        step_fmt = MIXED[step % len(MIXED)] if fmt == "mixed" else fmt
        problems, used = token_budget_batch(rng, step_fmt, token_budget, max_digits, exclude)
        ids, labels = encode_batch(problems, step_fmt)
        loss = model(ids, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        history["tokens"] += used
        history["problems"] += len(problems)
        if (step + 1) % eval_every == 0 or step == steps - 1:
            history["steps"].append(step + 1)
            for name, eval_problems in eval_sets.items():
                correct = accuracy(model, eval_problems, fmt)
                history[name].append(sum(correct) / len(correct))
                history[f"{name}_correct"].append(correct)
            if progress:
                progress(fmt, step + 1, {name: history[name][-1] for name in eval_sets}, loss.item())
    return history


def train_on_pairs(model, pairs: list, steps: int, batch_size: int, seed: int) -> list[float]:
    """在给定的 (题目, 回答) 文本对上做 SFT（实验 4 的学生）：每步有放回地抽 batch_size 条，
    优化器与学习率日程同 train_format（AdamW + 预热 + 余弦）。返回每步的 loss。"""
    rng = random.Random(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, betas=(0.9, 0.98), weight_decay=0.0)
    losses = []
    model.train()
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, lr=LR, warmup_steps=WARMUP, total_steps=steps)
        ids, labels = encode_pairs([pairs[rng.randrange(len(pairs))] for _ in range(batch_size)])
        loss = model(ids, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
    return losses


def batch_means(values: list[float], n_batches: int) -> list[float]:
    """逐题 0/1 → n_batches 个等大评估批次的均值（quick 模式单种子时的噪声单位 unit="batches"）。"""
    size = math.ceil(len(values) / n_batches)
    return [sum(values[i:i + size]) / len(values[i:i + size]) for i in range(0, len(values), size)]
