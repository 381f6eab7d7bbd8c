"""实验 1–3 共用的蒸馏小工具：真实的 MiniMindForCausalLM、trainer/ 同款训练循环、trainer/ 里的蒸馏损失。

    text = get_experiment_data("shakespeare")
    _, get_batch = char_lm_batches(text, BLOCK, BATCH, seed=seed)
    teacher, t_hist = train_teacher(TEACHER_SIZE, vocab, get_batch, steps, seed, device)
    student = new_model(STUDENT_SIZE, vocab, seed)
    hist = train_student(student, teacher, get_batch, steps, temperature=2.0, alpha=1.0, device=device)
    scores = evaluate(student, teacher, eval_batches(text, n, seed))   # 真实标签 CE、与老师 argmax 的一致率

转移集（transfer set，Hinton et al. 2015 的说法：学生用来学老师的那些输入）可以很小：

    sequences = transfer_set(text, 16, seed)                     # (16, BLOCK)：学生只见这 16 条序列
    cached = PrecomputedTeacher(teacher, sequences)              # 老师在这 16 条上的 logits 先算好
    train_student(student, cached, transfer_batches(sequences, text, seed), steps, temperature=2.0, alpha=1.0,
                  device=device)

损失只有一份：trainer/train_distillation.py::distillation_loss（α·T²·KL + (1-α)·CE），这里不复制。
"""
import copy
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[4]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

from model.model_minimind import CausalLMOutput, MiniMindConfig, MiniMindForCausalLM  # noqa: E402
from modules.common.text_data import BatchSampler, CharTokenizer, char_lm_batches, train_val_split  # noqa: E402
from modules.common.training import train_model  # noqa: E402
from trainer.train_distillation import distillation_loss  # noqa: E402

BLOCK, BATCH, LR = 64, 16, 3e-3
# 老师：hidden 128、2 层；学生：hidden 64、1 层（参数约为老师的 1/8）。2 核 CPU 上几分钟内跑完三个种子
TEACHER_SIZE = dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
STUDENT_SIZE = dict(hidden_size=64, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1)


def training_steps(args, quick: bool, quick_default: int, full_default: int) -> int:
    """--steps，未给出时按模式取默认值；太短时退出并说明（老师还什么都没学会，蒸馏无从谈起）。"""
    steps = args.steps or (quick_default if quick else full_default)
    if steps < 10:
        raise SystemExit(f"--steps 至少 10（收到 {steps}）：太短的训练里老师还什么都没学会")
    return steps


def new_model(size: dict, vocab_size: int, seed: int) -> MiniMindForCausalLM:
    """按 size（hidden_size / num_hidden_layers / 头数）建一个随机初始化的 MiniMind；seed 决定初始化。"""
    torch.manual_seed(seed)
    config = MiniMindConfig(**size, vocab_size=vocab_size, max_position_embeddings=BLOCK)
    return MiniMindForCausalLM(config)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class DistillStudent(nn.Module):
    """把 (学生, 冻结的老师) 包成 train_model 能直接训练的模型。

    训练模式：loss = distillation_loss(学生 logits, 老师 logits, labels, T, α)——与 trainer/ 的 make_distill_step 相同；
    评估模式：loss = 学生在真实标签上的交叉熵，于是 train_model 记录的 val_loss 就是我们要比较的"学生验证 loss"。
    """

    def __init__(self, student: MiniMindForCausalLM, teacher: MiniMindForCausalLM, temperature: float, alpha: float):
        super().__init__()
        # 清掉老师自己训练时留下的 .grad：对 model.parameters() 做梯度裁剪的训练循环会把老师（子模块）
        # 残留的梯度算进总范数（并反复缩放），让同一个学生的训练结果依赖之前训练过什么
        teacher.zero_grad(set_to_none=True)
        self.student, self.teacher = student, teacher.eval().requires_grad_(False)
        self.temperature, self.alpha = temperature, alpha

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()  # 老师永远是推理模式
        return self

    def forward(self, input_ids, labels):
        if not self.training:
            return self.student(input_ids, labels=labels)
        with torch.no_grad():
            teacher_logits = self.teacher(input_ids).logits  # (B, T, V)
        student_logits = self.student(input_ids).logits  # (B, T, V)
        loss, _, _ = distillation_loss(student_logits, teacher_logits, labels, self.temperature, self.alpha)
        return CausalLMOutput(logits=student_logits, loss=loss)


def transfer_set(text: str, n_sequences: int, seed: int) -> torch.Tensor:
    """转移集：从训练切分里随机截取 n_sequences 条长 BLOCK 的序列，形状 (K, BLOCK)；seed 决定截哪几段。"""
    tokenizer = CharTokenizer(text)
    train_ids, _ = train_val_split(torch.tensor(tokenizer.encode(text)))
    sequences, _ = BatchSampler(train_ids, BLOCK, n_sequences, seed=20_000 + seed).sample()  # (K, BLOCK)
    return sequences


def transfer_batches(sequences: torch.Tensor, text: str, seed: int, device=None):
    """train_model 用的 get_batch：训练批从转移集的 K 条序列里有放回地抽 BATCH 条（K 小时就是同几条反复学很多遍）；
    验证批与 char_lm_batches 相同（验证切分）。"""
    _, full_batches = char_lm_batches(text, BLOCK, BATCH, seed=seed, device=device)
    generator = torch.Generator().manual_seed(seed)

    def get_batch(split: str):
        if split != "train":
            return full_batches(split)
        rows = sequences[torch.randint(len(sequences), (BATCH,), generator=generator)]  # (B, BLOCK)
        return rows.to(device), rows.clone().to(device)  # labels 不移位，模型内部移位（同 MiniMind）

    return get_batch


class PrecomputedTeacher(nn.Module):
    """冻结的老师在转移集上的 logits，一次算好存下来（离线蒸馏）。

    老师不再更新，同一条序列的输出永远相同：每个学生、每一步再跑一次老师只是重复计算。
    forward 按序列内容查表，只接受转移集里的序列；验证时（evaluate）仍然用真实的老师。
    MiniMind 的 make_distill_step 是每步在线跑老师：SFT 数据量大、每条只见几次，存全部 logits 不划算。"""

    def __init__(self, teacher: MiniMindForCausalLM, sequences: torch.Tensor, chunk: int = 64):
        super().__init__()
        with torch.no_grad():
            logits = [teacher(sequences[i:i + chunk]).logits for i in range(0, len(sequences), chunk)]
        self.register_buffer("logits", torch.cat(logits))  # (K, BLOCK, V)
        self.row_of = {tuple(seq.tolist()): i for i, seq in enumerate(sequences)}

    def forward(self, input_ids):
        try:
            rows = [self.row_of[tuple(seq.tolist())] for seq in input_ids]
        except KeyError:
            raise ValueError("PrecomputedTeacher 只认识转移集里的序列；别的输入请用真实的老师") from None
        return CausalLMOutput(logits=self.logits[rows])  # (B, BLOCK, V)


def train_teacher(size: dict, vocab_size: int, get_batch, steps: int, seed: int, device, desc: str = "teacher",
                  start_from: MiniMindForCausalLM | None = None):
    """在真实标签上普通预训练一个老师；返回 (冻结的老师, 训练历史)。

    start_from 给出时不从随机初始化开始，而是在它的一份拷贝上继续训练 steps 步（新的优化器与学习率调度；
    start_from 本身不变）：实验 2 用它从同一个老师得到一个"训练得更久、更自信"的版本。"""
    if start_from is None:
        teacher = new_model(size, vocab_size, seed)
    else:
        teacher = copy.deepcopy(start_from).train().requires_grad_(True)
    hist = train_model(teacher, get_batch, steps=steps, lr=LR, eval_every=steps, eval_batches=1, device=device,
                       desc=desc)
    if hist["diverged_at"] is not None:
        raise SystemExit(f"老师在第 {hist['diverged_at']} 步发散；请减小学习率后重试")
    return teacher.eval().requires_grad_(False), hist


def train_student(student, teacher, get_batch, steps: int, *, temperature: float, alpha: float, device,
                  eval_every: int | None = None, desc: str = "student") -> dict:
    """用 α·T²·KL + (1-α)·CE 训练学生（α=0 就是只用真实标签）；返回 train_model 的历史（val_loss = 学生的真实 CE）。"""
    hist = train_model(DistillStudent(student, teacher, temperature, alpha), get_batch, steps=steps, lr=LR,
                       eval_every=eval_every or steps, eval_batches=2, device=device, desc=desc)
    if hist["diverged_at"] is not None:
        raise SystemExit(f"{desc} 在第 {hist['diverged_at']} 步发散；请减小学习率后重试")
    return hist


def eval_batches(text: str, n: int, seed: int, device=None) -> list:
    """固定的 n 个验证批（来自验证切分，独立的随机源）：所有模型都在完全相同的位置上比较。"""
    _, get_batch = char_lm_batches(text, BLOCK, BATCH, seed=10_000 + seed, device=device)
    return [get_batch("val") for _ in range(n)]


@torch.no_grad()
def teacher_softness(teacher, batches, temperature: float) -> dict:
    """老师在验证批上、温度 T 下的分布有多"软"：每个位置的平均熵（nats）与 top-1 之外的概率质量。

    熵接近 ln V（均匀分布）说明分布几乎摊平；top-1 之外的质量就是"暗知识"所在的那部分概率。
    entropy_batches 是逐批的熵：两个老师读同一组批时可以按批配对做噪声检验。"""
    entropies, off_top1 = [], []
    for input_ids, _ in batches:
        log_probs = (teacher(input_ids).logits[:, :-1] / temperature).log_softmax(-1)  # (B, T-1, V)
        probs = log_probs.exp()
        entropies.append(-(probs * log_probs).sum(-1).mean().item())
        off_top1.append(1.0 - probs.max(-1).values.mean().item())
    n = len(batches)
    return {"entropy": sum(entropies) / n, "mass_outside_top1": sum(off_top1) / n, "entropy_batches": entropies}


@torch.no_grad()
def evaluate(student, teacher, batches) -> dict:
    """在固定验证批上：学生/老师的真实标签交叉熵，以及学生 argmax 与老师 argmax 相同的位置占比（agreement）。

    另给出逐批的值（*_batches）：各学生读的是同一组批，可以按批配对——只有一个种子时，
    它们的离散程度就是噪声检验（modules/common/noise.py，unit="batches"）用的评估噪声。"""
    student.eval()
    s_losses, t_losses, agreements = [], [], []
    for input_ids, labels in batches:
        s_out, t_out = student(input_ids, labels=labels), teacher(input_ids, labels=labels)
        s_losses.append(s_out.loss.item())
        t_losses.append(t_out.loss.item())
        s_pred, t_pred = s_out.logits[:, :-1].argmax(-1), t_out.logits[:, :-1].argmax(-1)  # (B, T-1)：预测下一个 token
        agreements.append((s_pred == t_pred).float().mean().item())  # 每批的位置数相同，批均值的均值 = 总体占比
    n = len(batches)
    return {"student_val_loss": sum(s_losses) / n, "teacher_val_loss": sum(t_losses) / n,
            "agreement": sum(agreements) / n, "student_val_batches": s_losses, "teacher_val_batches": t_losses,
            "agreement_batches": agreements}
