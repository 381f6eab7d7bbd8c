"""本模块实验共用的"受控评测实验室"：字节级 BPE 分词器、小语言模型（LabModel）、虚构事实选择题。

为什么要自己造题：仓库自带的评测集（dataset/samples/eval_mc_*.jsonl）上，几分钟能训出来的小模型都在瞎猜水平，
分不出谁好谁坏；Shakespeare 上"猜下一个词""补完半行"这类续写题，几百步的小模型也还在 1/4 附近（开发时测过）。
所以选择题用虚构事实（fact_items）："Where does Bengrigri live?"，答案是 16 个虚构地名之一。
事实是随机造的，模型只能靠训练时见过才答得对：训练多少步、哪些题泄漏进了训练集，就是可控地造出来的能力差别。
训练文档与评测时模型看到的文字完全相同（题目 + 换行 + "答案：" + 正确选项，见 item_text）。

打分一律走 trainer/evaluation/（multiple_choice.evaluate_mc、perplexity.evaluate_text、loglik.score_requests），这里不另写一份。
"""
import copy
import random
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[4]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402

from modules.common.datasets import get_experiment_data  # noqa: E402
from modules.common.lab_model import LabConfig, LabModel  # noqa: E402
from modules.common.text_data import BatchSampler  # noqa: E402
from modules.common.training import train_model  # noqa: E402
from trainer.evaluation.items import MCItem  # noqa: E402
from trainer.evaluation.multiple_choice import option_prompt  # noqa: E402
from trainer.train_tokenizer import DEFAULT_DATA, train_tokenizer  # noqa: E402

N_OPTIONS = 4
REPEATS = 20  # 每条事实在训练 token 流里出现的次数（流要比训练看到的 token 多，取批才不会总落在同几段上）
TEST_FRACTION = 0.1  # 最后 10% 是留出文本（bpb 与题目都从这里来），同 nanoGPT 的切分


def shakespeare_split() -> tuple[str, str]:
    """(训练文本, 留出文本)：按顺序切，留出部分从一行的开头开始。"""
    text = get_experiment_data("shakespeare")
    cut = text.index("\n", int(len(text) * (1 - TEST_FRACTION))) + 1
    return text[:cut], text[cut:]


def bpe_tokenizer(train_text: str, vocab_size: int):
    """用仓库的 trainer/train_tokenizer.py::train_tokenizer 在训练文本上训练字节级 BPE（确定性，没有随机数）。"""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "train.txt"
        path.write_text(train_text, encoding="utf-8")
        return train_tokenizer([path], vocab_size)


def samples_tokenizer(vocab_size: int = 512):
    """虚构事实题用的分词器：在仓库自带的 dataset/samples 语料上训练（不用下载任何数据）。"""
    return train_tokenizer(DEFAULT_DATA, vocab_size)


SYLLABLES = ("ka", "lo", "mi", "ra", "tu", "ben", "dor", "sel", "vin", "qua", "zer", "pol", "fa", "gri", "nu", "hex")


def pseudo_word(rng: random.Random, min_syl: int = 2, max_syl: int = 3) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(min_syl, max_syl)))


def fact_items(n_facts: int, seed: int, n_values: int = 16) -> list[MCItem]:
    """n_facts 条虚构事实的选择题："Where does <人名> live?"，答案是 n_values 个虚构地名之一。

    地名有 1–4 个词，长短悬殊；干扰项从其余地名里随机抽。事实是随机造的，模型只能靠训练时见过（背下来）答对，
    所以"训练多少步"或"题目是否泄漏进训练集"就是可控的能力差别。"""
    rng = random.Random(seed)
    values = []
    while len(values) < n_values:
        place = " ".join(pseudo_word(rng).capitalize() for _ in range(1 + len(values) % 4))
        if place not in values:
            values.append(place)
    names = set()
    while len(names) < n_facts:
        names.add(pseudo_word(rng, 2, 4).capitalize())
    items = []
    for name in sorted(names):
        truth = rng.choice(values)
        options = rng.sample([v for v in values if v != truth], N_OPTIONS - 1)
        answer = rng.randrange(N_OPTIONS)
        options.insert(answer, truth)
        items.append(MCItem(f"Where does {name} live?", tuple(options), answer))
    rng.shuffle(items)
    return items


def item_text(item: MCItem) -> str:
    """一道题"连同答案"写成文本的样子（与 sum/norm 打分时模型看到的完全相同）：泄漏进训练集的就是它。"""
    return option_prompt(item) + item.options[item.answer]


def token_stream(tokenizer, documents: list[str], seed: int) -> torch.Tensor:
    """训练 token 流：documents 打乱后每篇以 BOS 开头、以空行结尾拼接（与预训练的格式相同）。"""
    pieces = list(documents)
    random.Random(seed).shuffle(pieces)
    ids = []
    for piece in pieces:
        ids += [tokenizer.bos_token_id] + tokenizer.encode(piece + "\n\n")
    return torch.tensor(ids, dtype=torch.long)


def train_lm(tokenizer, stream: torch.Tensor, steps: int, seed: int, hidden: int = 128, layers: int = 2,
             block: int = 64, batch: int = 16, lr: float = 2e-3, max_seq_len: int = 256, checkpoints=(),
             desc: str = "train"):
    """在 token 流上训练一个 LabModel（默认开关 = MiniMind 结构），返回 (最终模型, {步数: 模型副本})。

    没有 checkpoints：modules/common/training.py::train_model 的默认调度（预热 + 余弦衰减）。
    有 checkpoints：同一次训练（同一个 AdamW）预热 20 步、之后学习率恒定，在这些步数各存一份副本——
    这些副本就是"同一次训练的早期"；学习率不衰减，早期副本不会因为调度提前降温而显得更好。"""
    torch.manual_seed(seed)
    model = LabModel(LabConfig(vocab_size=tokenizer.vocab_size, hidden_size=hidden, num_layers=layers,
                               n_heads=4, max_seq_len=max_seq_len))  # 训练窗口 block，评测时可以更长
    sampler = BatchSampler(stream, block, batch, seed=seed)
    snapshots = {}
    if not checkpoints:
        train_model(model, lambda split: sampler.sample(), steps=steps, lr=lr, eval_every=steps + 1,
                    eval_batches=1, progress=False, desc=desc)
        return model.eval(), snapshots
    wanted = set(checkpoints) | {steps}

    def snapshot(n_done, trained):
        if n_done in wanted:
            snapshots[n_done] = copy.deepcopy(trained).eval()

    train_model(model, lambda split: sampler.sample(), steps=steps, lr=lr, warmup_steps=20, min_lr_ratio=1.0,
                eval_every=steps + 1, eval_batches=1, progress=False, desc=desc, after_step=snapshot)
    return model.eval(), snapshots
