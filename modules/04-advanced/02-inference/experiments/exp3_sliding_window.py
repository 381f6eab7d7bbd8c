"""实验 3：滑动窗口注意力与 attention sink——把最前面的 token 赶出窗口会怎样？

解码时 KV cache 随长度线性增长。最省事的办法是只留最近 W 个位置（滑动窗口，Beltagy 2020 / Mistral 2023）：
每个 query 只看最近 W 个 key（含自己）。一次前向里用带状 mask 实现（LabConfig(sliding_window=W)），
与"解码时用只保留最近 W 个位置的滚动 KV cache、key 保持原来的 RoPE 位置"完全等价——这就是 StreamingLLM
（Xiao et al. 2023）里的 window attention 基线。StreamingLLM 发现：用全注意力训练的模型，一旦第一个 token
被挤出窗口，困惑度就坏掉；在窗口之外始终保留最前面几个 token（attention sink，LabConfig(attention_sinks=S)）
就能救回来。原因是训练好的模型把大量注意力"停"在第一个 token 上（softmax 的权重必须加起来等于 1，
没什么要看的头就把权重放在人人都看得见的第一个位置），把它拿掉，这部分权重被硬塞给别的 token。
（StreamingLLM 在 cache 里重新编号位置；这里所有位置都在训练长度以内，保留原位置与重新编号没有区别。）

做法（每个种子）：
  1. 在 TinyShakespeare 上训练一个字符级 LabModel（RoPE、全因果注意力）。每条训练序列的第 0 位是一个固定的
     起始符 <s>（词表外多加的一个 id）——真实 LLM 的数据都以 BOS 开头，这里照做（见下面"开发时的测量"）。
  2. 同一份权重装进 sliding_window=W（W ∈ WINDOWS）、再加 attention_sinks=S（S ∈ SINKS）的 LabModel，
     在固定的验证序列上算逐位置的 loss：全注意力 / 纯滑窗 / 滑窗 + sink。位置 < W 时窗口还装得下整个前文，
     三者逐位相同（确定性检查）；位置 ≥ W 时第 0 位被挤出窗口。
  3. StreamingLLM 拿来比的"上限"是滑窗重算（sliding window with re-computation）：每个位置只拿 <s> + 最近 W 个
     token 从头前向一遍。它同样只看得见 W 个 token，但每个 token 的状态都在训练时见过的那种输入里算出来。
     全注意力与重算之差是"窗口外的上下文本身有多大用"，sink 补不回来；sink 要补的是纯滑窗与重算之差。
  4. 记录每个头落在第 0 位上的平均注意力（Gu et al. 2024 的 α：对 query 位置 1..T-1 取平均），
     按 Gu et al. 的判据（α > ε = 0.3 就算这个头有 sink）看最强的头；训练中途几个快照上的同一个量，看 sink 是不是随训练出现的。
  5. 对照（Mistral 的做法）：用 sliding_window=TRAIN_WINDOW 训练的模型，用同样的窗口评估——它训练时
     就没见过"窗口外的第 0 位"，不依赖 sink。
  6. 全注意力模型落在"4 个 sink + 最近 W 个 key"之外的注意力（各层、各头平均）：滑窗 + 4 个 sink 拿走的正是这部分，
     softmax 把剩下的重新归一化。它回答"为什么距离要紧"：不是 RoPE 的相对距离没见过（全注意力训练时位置 i 的 query
     每一步都看得到距离 i 的第 0 位，i 最大 127），而是远处被拿走的权重多得多。
loss 分两段看：第 0 位"刚被挤出"（位置 W..2W-1）与"远处"（位置 >= 2W）。

开发时的测量（只看种子 42）：
  - 不加 <s>、随机截取的文本段训练 300 步（hidden 128）：窗口 8 刚挤出第 0 位时 loss 只多 0.007，
    加 sink 几乎不变；没有一层把高于均匀分配的注意力放在第 0 位上——这个设定下看不到 sink。
  - 加上固定的 <s> 之后，"刚被挤出"那一段的 loss 明显上升，1 个 sink 就几乎全部收回；但远处（位置 >= 2W）
    sink 几乎没用。
  - 同样的 token 数，更新步数比 batch 大小要紧（Gu et al.："充分优化"之后才出现 sink）：batch 16 × 150 步时
    窗口 8 刚挤出的效应只有 0.007 ± 0.003 nats，batch 8 × 300 步是 0.041 ± 0.011。所以 batch 取 8，quick 300 步、
    完整 1600 步（与原来 batch 16 × 150 / 800 步的 token 数、计算量相同）。
  - 学习率 2e-2 训练 150 步时出现过强 sink（最强的头 0.41 > 0.3，纯滑窗 +0.47 nats），但那是还停在
    平台上的模型（train loss 2.67，6e-3 时 2.32）；训练到 800 步后最强的头只剩 0.12。学习率保持 6e-3。
  - 最强的头落在第 0 位上的注意力约 0.08-0.12，高于均匀分配（0.035）但远低于 ε = 0.3，也没有随训练变大：
    小字符模型里没有 StreamingLLM 在大模型里看到的强 sink（预期不成立，照实打印）。
  - Gu et al. 2024 的仓库（sail-sg/Attention-Sink）总结的驱动因素：训练得够充分、训练数据够多、学习率小时 sink 不明显、
    权重衰减促进 sink。能在 CPU 预算里不加计算量地改的只有权重衰减（学习率 6e-3 已经偏大，数据与步数受时间限制）。
    事先定的规则：在种子 42、1600 步上比最强的头的 α，全注意力的验证 loss 不许差 0.05 以上。结果（种子 42）：
    weight decay 0.1（原设定）α = 0.130、验证 loss 1.711；0.5 时 α = 0.111、1.744；1.0 时 α = 0.093、1.776。
    权重衰减越大 sink 反而越弱，没有找到 sink 出现的区间，所以 weight decay 保持 0.1。

事先定好的结论（看多种子结果之前）：
  - 对每个 W、两段位置：纯滑窗的 loss 高于全注意力；滑窗 + 1 个 sink 的 loss 低于纯滑窗；
    滑窗 + 4 个 sink 收回了纯滑窗比滑窗重算多出的 loss 的至少一半（SINK_RECOVERY；论文：StreamingLLM 与重算相当）；
    远处：重算的 loss 也高于全注意力；
  - 远处的"4 个 sink 收回至少一半"在种子 42–44 与 1–3 上都不成立（收回约 4–27%）。照 Gu et al. 的驱动因素试过权重衰减
    （见上面"开发时的测量"）之后仍没有 sink，所以远处这三条改成对照（同一个量、同一个界，方向相反：收回的不到一半），
    与"刚被挤出"时成立的同一个量配对；并检验远处落在 4 个 sink + 窗口之外的注意力多于刚被挤出时；
  - 最强的头落在第 0 位上的平均注意力 > SINK_EPSILON（Gu et al. 的 ε）；训练结束时高于训练 10% 处；
  - 用窗口训练的模型不需要 sink：位置 W..2W-1 上不加 sink 的 loss 最多比加 sink 高 WINDOW_TRAINED_MARGIN nats；
    它的 loss 低于全注意力模型用同一窗口、不加 sink 时的 loss。

看过完整模式（种子 42–44 的参考结果：W=32 刚挤出的"4 个 sink 收回一半"未确立、ε 不成立、"随训练变大"未确立）之后改的设计，
种子 42–44、1–3 与没看过的 4–6 各跑一次，三组都照实报告（讲义实验 3 的结果）：
  - W=32 刚被挤出：量出来的原因是 <s> 在位置 32–63 已经不是 sink——保留它收回的 loss（纯滑窗 − S=1，约 0.005 nats）
    比 4 个 sink 也收不回的（S=4 − 重算，约 0.011，被拿走的是位置 4..i-32 上的普通 token 的注意力）还少，"收回一半"的前提
    不成立。这一行换成前提的对照（PREMISE_CONTRAST_WINDOWS；"4 个 sink 收回了多少"照样打印在证据里），
    W=8、16 上同一个量方向相反（保留 <s> 收回的多于 4 个 sink 也收不回的），作为配对的结论，"收回一半"照原样检验；
  - ε = 0.3 这一条照 Gu et al. 的驱动因素试过之后仍不成立（见"开发时的测量"），改成对照"不到 ε"（ε 不变），
    证据里打印离均匀分配多远与第 10% 步的值；与它配对的是干预：把 <s> 挤出窗口的代价（EVICT_WINDOW 刚被挤出时），
    新加一条"这个代价随训练变大"（训练结束 vs 训练 10% 处，同一批验证序列）——这是 Gu et al."sink 随优化出现"的干预版本；
    注意力版的"最强的头随训练变大"保留原样、照实报告；
  - quick（300 步、单个种子）不再判定在 quick 种子 42、1、7、5、2、3 上随种子变的结论（W=32 的 loss 结论、W=8 刚挤出的
    "纯滑窗更高"与远处的对照、W=8/16 的"收回一半"与前提、两个"随训练变大"），只打印测量值与原因（共享的
    Experiment.conclude_verdict(quick_reason=...)，记进 metrics["quick_undecided"]），判定见完整模式的参考结果。

GPU 上放大（Gu et al. 的默认设定是约 60M 参数的 LLaMA 式模型、batch 512 条序列 × 20000 步、5B token 的数据；
这里 1600 步 × 8 条 × 127 ≈ 1.6M 个字符。下面的命令把模型与步数往那个方向放大，没有 GPU 测过，不保证出现）：
    python exp3_sliding_window.py --device cuda --hidden 256 --layers 8 --steps 20000

    python exp3_sliding_window.py --quick
"""
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[4]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import copy  # noqa: E402
from dataclasses import replace  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from modules.common.attention_mask import sliding_window_mask  # noqa: E402
from modules.common.datasets import get_experiment_data  # noqa: E402
from modules.common.experiment_base import Experiment, format_mean_std, mean_std  # noqa: E402
from modules.common.lab_model import LabConfig, LabModel, record_attention  # noqa: E402
from modules.common.noise import compare_runs, noninferior_runs  # noqa: E402
from modules.common.text_data import BatchSampler, CharTokenizer, train_val_split  # noqa: E402
from modules.common.training import train_model  # noqa: E402
from modules.common.visualization import plt, set_style  # noqa: E402

HIDDEN, LAYERS, HEADS = 64, 4, 4  # 默认尺寸；--hidden / --layers 可以改（GPU 上放大用）
BLOCK_SIZE, BATCH_SIZE, LR = 128, 8, 6e-3  # BLOCK_SIZE 含第 0 位的 <s>；batch 8：同样的 token 数换成更多的更新步
WINDOWS = (8, 16, 32)
SINKS = (1, 4)
TRAIN_WINDOW = 16  # 对照模型训练时用的窗口（Mistral 式）
EVAL_BATCHES, EVAL_BATCH_SIZE = 8, 16  # 固定的验证序列：每种注意力方式都在这同一批上评估（逐批次配对）
# 按 query 位置分段统计（loss 与"落在第 0 位上的注意力"都用这些段）：[0, 8) 窗口 8 还装得下全部前文，之后每段翻倍
SPANS = ((0, 8), (8, 16), (16, 32), (32, 64), (64, BLOCK_SIZE - 1))
NEAR_SPAN, FAR_SPAN = SPANS[1], SPANS[-1]  # 注意力质量的结论：刚过窗口 8 的位置 / 最远的一段
SNAPSHOT_FRACTIONS = (0.1, 0.25, 0.5, 0.75)  # 训练到这些比例时存一份权重，看 sink 何时出现（最后一步另算）
OUTSIDE_SINKS = 4  # "窗口外的注意力"按 4 个 sink + 窗口之外的 key 统计（与 S=4 的评估 mask 相同）
SINK_RECOVERY = 0.5  # "sink 收回了大部分"：至少收回纯滑窗比"滑窗重算"多出来的 loss 的一半（事先定好）
SINK_EPSILON = 0.3  # Gu et al. 2024 的 sink 指标：一个头对第 0 位的平均注意力 > ε 就算"有 sink"，论文取 ε = 0.3
EVICT_WINDOW = WINDOWS[0]  # "挤出 <s> 的代价随训练变大"用的窗口：代价 = 位置 W..2W-1 上纯滑窗比滑窗 + 1 个 sink 多出的 loss
# 刚被挤出时"<s> 已不是 sink"的窗口：在种子 42–44 的完整模式里看到 W=32 的"4 个 sink 收回一半"未确立之后改的设计
# （见 docstring"看过完整模式……之后改的设计"），这些窗口上那一行换成前提的对照
PREMISE_CONTRAST_WINDOWS = (32,)
QUICK_UNDECIDED_WINDOWS = (32,)  # quick 不判定这些窗口的 loss 结论：效应 0.001–0.02 nats，与 300 步单个模型的训练噪声同量级
# quick 模式（一个种子训练 300 步）只量得到评估批次的噪声，量不到"换一个种子重新训练"的噪声。下面这些结论在 quick 种子
# 42、1、7、5、2、3（2026-12-06 又加 11、13）上（modules.common.seed_sweep）随种子在成立与未确立（或不成立）之间变，quick 只打印测量值与原因
# （Experiment.conclude_verdict 的 quick_reason），判定以完整模式（3 个种子）为准
QUICK_REASON_SMALL_EFFECT = ("W=32 的 loss 效应只有 0.001–0.02 nats，quick 种子 42/1/7/5/2/3/11/13 上在成立与未确立之间变："
                             "单个种子 300 步量不到换种子重新训练的噪声")
QUICK_REASON_W8_EVICTION = ("quick 种子 7、2、13 上未确立（远处的对照在 11、13 上未确立），其余种子上成立：300 步时模型对 <s> 的"
                            "依赖还在形成（见\"挤出 <s> 的代价随训练变大\"），单个种子量不到换种子重新训练的噪声")
QUICK_REASON_RECOVERY = ("quick 种子 7、2、13 上（W=8）与种子 7、13 上（W=16）未确立：300 步时对 <s> 的依赖还在形成，"
                         "单个种子量不到换种子重新训练的噪声")
QUICK_REASON_PREMISE = ("quick 种子 7、13 上 W=8、16 都未确立：300 步时对 <s> 的依赖还在形成，"
                        "单个种子量不到换种子重新训练的噪声")
QUICK_REASON_HEAD_GROWTH = ("quick 种子 42、1、7、2、3、11、13 上不成立、种子 5 上未确立：第 30 步的模型还在平台期，"
                            "最强的头反而更偏向 <s>")
QUICK_REASON_EVICT_GROWTH = ("quick 种子 1、3 上成立、7 上不成立、42、5、11、13 上未确立：第 30 步与第 300 步之间的代价"
                             "随种子差得多，单个种子量不到换种子重新训练的噪声")
WINDOW_TRAINED_MARGIN = 0.02  # "窗口训练的模型不需要 sink"：不加 sink 的 loss 最多比加 sink 高这么多（nats，事先定好）


def add_args(parser):
    parser.add_argument("--steps", type=int, default=None, help="训练步数（默认 quick 300 / 完整 1600，必须 >= 20）")
    parser.add_argument("--hidden", type=int, default=HIDDEN, help=f"hidden size（默认 {HIDDEN}，必须是 {HEADS} 的倍数）")
    parser.add_argument("--layers", type=int, default=LAYERS, help=f"层数（默认 {LAYERS}）")


def with_bos(ids: torch.Tensor, bos_id: int) -> torch.Tensor:
    """(B, T-1) 的文本段 → (B, T)：第 0 位放固定的起始符 <s>，像真实 LLM 数据里每条序列开头的 BOS。"""
    return torch.cat([torch.full((ids.shape[0], 1), bos_id, dtype=ids.dtype, device=ids.device), ids], dim=1)


def uniform_first_mass(start: int, end: int) -> float:
    """均匀分配时第 0 位得到的平均权重：位置 i 的 query 有 i+1 个 key，各得 1/(i+1)；对 i ∈ [start, end) 取平均。"""
    return sum(1 / (i + 1) for i in range(start, end)) / (end - start)


def first_token_mass(weights: torch.Tensor, start: int, end=None) -> float:
    """注意力权重 (B, nh, T, T) 里第 0 个 key 得到的平均权重：对 batch、头、位置在 [start, end) 的 query 取平均。"""
    return weights[:, :, start:end, 0].float().mean().item()


def windowed(model: LabModel, window, sinks: int = 0) -> LabModel:
    """同一份权重，换一个注意力 mask：window=None 是全因果注意力，否则只看最近 window 个 key + 最前面 sinks 个。"""
    config = replace(model.config, sliding_window=window, attention_sinks=sinks)
    other = LabModel(config).to(next(model.parameters()).device)
    other.load_state_dict(model.state_dict())
    return other.eval()


@torch.no_grad()
def position_losses(model: LabModel, batches) -> torch.Tensor:
    """(n_batches, T-1)：每批验证序列在每个位置上的平均 loss（位置 i 的 logits 预测第 i+1 个 token）。"""
    model.eval()
    rows = []
    for x, y in batches:
        logits = model(x).logits  # (B, T, V)
        loss = F.cross_entropy(logits[:, :-1].transpose(1, 2), y[:, 1:], reduction="none")  # (B, T-1)
        rows.append(loss.mean(dim=0))
    return torch.stack(rows)


@torch.no_grad()
def first_token_masses(model: LabModel, batches, spans) -> dict:
    """{(start, end): [层][批]}：每层注意力落在第 0 位上的平均权重（query 位置在 [start, end) 里），每批一个值。"""
    model.eval()
    out = {span: [[] for _ in range(model.config.num_layers)] for span in spans}
    for x, _ in batches:
        with record_attention(model) as attn:
            model(x)
        for span in spans:
            for i in range(model.config.num_layers):
                out[span][i].append(first_token_mass(attn[f"layers.{i}"], *span))
    return out


def outside_mass(weights: torch.Tensor, window: int, sinks: int, start: int, end: int) -> float:
    """注意力权重 (B, nh, T, T) 里落在"sinks 个 sink + 最近 window 个 key"之外的部分：对 batch、头、
    位置在 [start, end) 的 query 取平均。这部分权重在滑窗 + sink 的 mask 下被拿走，softmax 把剩下的重新归一化。"""
    T = weights.shape[-1]
    dropped = ~sliding_window_mask(T, T, window, sinks, weights.device)  # (T, T)：True = 这个 mask 看不到的 key
    return (weights * dropped).sum(dim=-1)[:, :, start:end].float().mean().item()


@torch.no_grad()
def outside_masses(model: LabModel, batches, windows, sinks: int) -> dict:
    """{"W8 near": [批], "W8 far": [批], ...}：全注意力模型各层平均落在 sinks 个 sink + 窗口之外的注意力，
    near = 位置 W..2W-1（第 0 位刚被挤出），far = 位置 >= 2W（到 T-2，与 loss 的分段相同）。"""
    model.eval()
    out = {f"W{w} {where}": [] for w in windows for where in ("near", "far")}
    for x, _ in batches:
        T = x.shape[1]
        with record_attention(model) as attn:
            model(x)
        layers = [attn[f"layers.{i}"] for i in range(model.config.num_layers)]
        for w in windows:
            for where, (start, end) in (("near", (w, 2 * w)), ("far", (2 * w, T - 1))):
                out[f"W{w} {where}"].append(sum(outside_mass(a, w, sinks, start, end) for a in layers) / len(layers))
    return out


@torch.no_grad()
def recompute_losses(model: LabModel, batches, window: int, bos_id: int) -> torch.Tensor:
    """(n_batches, T-1)：StreamingLLM 的"滑窗重算"基线。位置 i >= window 的 query 只拿 <s> + 最近 window 个 token
    （第 i-window+1..i 位）重新做一遍前向，位置重新从 0 编号——KV 全部在这段短输入里现算，窗口外的信息一点不带；
    位置 < window 时前文本来就装得下，与全注意力相同。"""
    model.eval()
    full = position_losses(model, batches)  # (n_batches, T-1)
    rows = []
    for (x, y), row in zip(batches, full):
        B, T = x.shape
        n = T - 1 - window  # query 位置 window..T-2，各预测下一个 token
        recent = x[:, 1:].unfold(1, window, 1)[:, :n]  # (B, n, window)：结尾在位置 window..T-2 的窗口
        inputs = torch.cat([torch.full_like(recent[..., :1], bos_id), recent], dim=2).reshape(B * n, window + 1)
        logits = model(inputs).logits[:, -1]  # (B*n, V)：每段最后一个位置的预测
        loss = F.cross_entropy(logits, y[:, window + 1:].reshape(B * n), reduction="none").view(B, n)
        rows.append(torch.cat([row[:window], loss.mean(dim=0)]))
    return torch.stack(rows)


@torch.no_grad()
def head_first_masses(model: LabModel, batches) -> torch.Tensor:
    """(n_batches, 层, 头)：每个头落在第 0 位上的平均注意力，对 batch 与位置 1..T-1 的 query 取平均
    （Gu et al. 2024 的 α；位置 0 只能看自己，不计入）。"""
    model.eval()
    rows = []
    for x, _ in batches:
        with record_attention(model) as attn:
            model(x)
        rows.append(torch.stack([attn[f"layers.{i}"][:, :, 1:, 0].float().mean(dim=(0, 2))
                                 for i in range(model.config.num_layers)]))  # (层, 头)
    return torch.stack(rows)


def strongest_head(masses: torch.Tensor) -> list:
    """(n_batches, 层, 头) → 逐批次值：对所有批次平均后第 0 位注意力最大的那个头，在每一批上的值。"""
    flat = masses.flatten(1)  # (n_batches, 层*头)
    return flat[:, flat.mean(dim=0).argmax()].tolist()


def evict_cost(model: LabModel, batches, window: int) -> list:
    """[批]：位置 window..2·window-1 上纯滑窗比"滑窗 + 1 个 sink"多出的平均 loss——把 <s> 挤出窗口的代价。
    这是干预（拿掉 <s> 看 loss），不看注意力权重。"""
    near = slice(window, 2 * window)
    plain = position_losses(windowed(model, window, 0), batches)[:, near].mean(dim=1)
    kept = position_losses(windowed(model, window, 1), batches)[:, near].mean(dim=1)
    return (plain - kept).tolist()


class SnapshotBatches:
    """包一层 get_batch：第 k 次取训练批（此时已经做完 k 次更新）时，若 k 在 at_steps 里就存一份权重。"""

    def __init__(self, model, sample_train, sample_val, at_steps):
        self.model, self.sample_train, self.sample_val = model, sample_train, sample_val
        self.at_steps, self.count, self.snapshots = set(at_steps), 0, {}

    def __call__(self, split):
        if split != "train":
            return self.sample_val()
        if self.count in self.at_steps:
            self.snapshots[self.count] = copy.deepcopy(self.model.state_dict())
        self.count += 1
        return self.sample_train()


def run_seed(seed: int, text: str, steps: int, device, hidden: int, layers: int) -> dict:
    """一个种子：训练全注意力模型（带快照）与窗口训练的对照模型，再在同一批验证序列上评估各种 mask。"""
    Experiment.seed_everything(seed)
    tokenizer = CharTokenizer(text)
    bos_id = tokenizer.vocab_size  # <s> 是词表外多加的一个 id
    train_ids, val_ids = train_val_split(torch.tensor(tokenizer.encode(text)))
    val_sampler = BatchSampler(val_ids, BLOCK_SIZE - 1, EVAL_BATCH_SIZE, seed + 1)

    def batch(sampler):
        x, _ = sampler.sample(device)
        x = with_bos(x, bos_id)  # (B, T)
        return x, x.clone()

    eval_batches = [batch(val_sampler) for _ in range(EVAL_BATCHES)]
    config = LabConfig(vocab_size=tokenizer.vocab_size + 1, hidden_size=hidden, num_layers=layers, n_heads=HEADS,
                       max_seq_len=BLOCK_SIZE)
    models, histories, snapshots = {}, {}, {}
    for name, window in (("full", None), ("window-trained", TRAIN_WINDOW)):
        Experiment.seed_everything(seed)  # 两个模型同样的初始化和同样的训练批次，只差训练时的 mask
        model = LabModel(replace(config, sliding_window=window)).to(device)
        train_sampler = BatchSampler(train_ids, BLOCK_SIZE - 1, BATCH_SIZE, seed)
        at_steps = [round(f * steps) for f in SNAPSHOT_FRACTIONS] if window is None else []
        get_batch = SnapshotBatches(model, lambda s=train_sampler: batch(s), lambda: batch(val_sampler), at_steps)
        histories[name] = train_model(model, get_batch, steps=steps, lr=LR, eval_every=steps, eval_batches=2,
                                      device=device, desc=f"train {name} seed={seed}")
        models[name], snapshots[name] = model, get_batch.snapshots

    full = models["full"]
    row = {"losses": {"full": position_losses(full, eval_batches).tolist()},
           "train_loss": {n: sum(h["train_loss"][-20:]) / 20 for n, h in histories.items()}}
    for window in WINDOWS:
        for sinks in (0,) + SINKS:
            row["losses"][f"W{window} S{sinks}"] = position_losses(windowed(full, window, sinks), eval_batches).tolist()
        row["losses"][f"W{window} recompute"] = recompute_losses(full, eval_batches, window, bos_id).tolist()
    trained = models["window-trained"]
    row["losses"]["window-trained"] = position_losses(trained, eval_batches).tolist()
    for sinks in SINKS:
        row["losses"][f"window-trained S{sinks}"] = position_losses(
            windowed(trained, TRAIN_WINDOW, sinks), eval_batches).tolist()
    row["losses"]["window-trained full-attn"] = position_losses(windowed(trained, None), eval_batches).tolist()

    mass_spans = SPANS[1:]  # 位置 0 只能看自己，第 0 段不统计
    row["mass"] = first_token_masses(full, eval_batches, mass_spans)  # {段: [层][批]}
    row["outside_mass"] = outside_masses(full, eval_batches, WINDOWS, OUTSIDE_SINKS)  # {"W8 near": [批], ...}
    row["mass_window_trained"] = first_token_masses(windowed(trained, None), eval_batches, mass_spans)
    row["head_mass_by_step"] = {}  # {步数: [批][层][头]}
    row["evict_cost_by_step"] = {}  # {步数: [批]}：W=EVICT_WINDOW 时把 <s> 挤出窗口的代价
    probe = copy.deepcopy(full)
    for step, state in sorted(snapshots["full"].items()):
        probe.load_state_dict(state)
        row["head_mass_by_step"][step] = head_first_masses(probe, eval_batches).tolist()
        row["evict_cost_by_step"][step] = evict_cost(probe, eval_batches, EVICT_WINDOW)
    row["head_mass_by_step"][steps] = head_first_masses(full, eval_batches).tolist()
    row["evict_cost_by_step"][steps] = evict_cost(full, eval_batches, EVICT_WINDOW)
    strongest = strongest_head(torch.tensor(row["head_mass_by_step"][steps]))
    print(f"  [seed {seed}] train loss full {row['train_loss']['full']:.3f} / window-trained "
          f"{row['train_loss']['window-trained']:.3f}；最强的头落在第 0 位上的平均注意力 "
          f"{sum(strongest) / len(strongest):.3f}", flush=True)
    return row


def span_label(span) -> str:
    """(8, 16) → "8-15"：表格与 JSON 里用的位置段名（含两端）。"""
    return f"{span[0]}-{span[1] - 1}"


def main():
    exp = Experiment(__file__, description="滑动窗口注意力与 attention sink：第一个 token 被挤出窗口之后",
                     extra_args=add_args)
    steps = exp.args.steps if exp.args.steps is not None else (300 if exp.quick else 1600)
    if steps < 20:
        raise SystemExit(f"--steps 必须 >= 20（收到 {steps}）")
    hidden, layers = exp.args.hidden, exp.args.layers
    if hidden < HEADS or hidden % HEADS or layers < 1:
        raise SystemExit(f"--hidden 必须是 {HEADS} 的正整数倍、--layers 必须 >= 1（收到 {hidden}、{layers}）")
    if exp.device.type == "cpu":
        torch.set_num_threads(1)  # 小矩阵乘在 2 核机器上多线程几乎不更快，机器一忙反而慢很多
    text = get_experiment_data("shakespeare")
    rows = [run_seed(seed, text, steps, exp.device, hidden, layers) for seed in exp.seeds]
    losses = {k: torch.tensor([r["losses"][k] for r in rows]) for k in rows[0]["losses"]}  # (seeds, batches, T-1)

    def span_loss(key, span):  # (每个种子的平均, 第一个种子的逐批次值)：位置在 span 里的平均 loss
        per_batch = losses[key][:, :, span[0]:span[1]].mean(dim=2)  # (seeds, batches)
        return per_batch.mean(dim=1).tolist(), per_batch[0].tolist()

    def layer_avg(per_layer):  # [层][批] → [批]：各层平均
        return [sum(v) / len(v) for v in zip(*per_layer)]

    def mass(span, key="mass"):  # 全部层平均之后：每个种子的平均
        return [sum(v) / len(v) for v in (layer_avg(r[key][span]) for r in rows)]

    def head_mass(step):  # 最强的头落在第 0 位上的注意力：(每个种子的平均, 第一个种子的逐批次值)
        values = [strongest_head(torch.tensor(r["head_mass_by_step"][step])) for r in rows]
        return [sum(v) / len(v) for v in values], values[0]

    def evicted(step):  # 把 <s> 挤出窗口 EVICT_WINDOW 的代价：(每个种子的平均, 第一个种子的逐批次值)
        values = [r["evict_cost_by_step"][step] for r in rows]
        return [sum(v) / len(v) for v in values], values[0]

    mass_spans = SPANS[1:]
    uniform = {span: uniform_first_mass(*span) for span in mass_spans}

    # ---- 表 1：逐位置段的 loss ----
    exp.print_table(["attention at eval"] + [f"pos {span_label(s)}" for s in SPANS],
                    [[k] + [format_mean_std(span_loss(k, s)[0], 3) for s in SPANS] for k in losses],
                    title=f"验证 loss（nats/char）按位置分段：{EVAL_BATCHES}×{EVAL_BATCH_SIZE} 条长 {BLOCK_SIZE} 的序列"
                          f"（{len(exp.seeds)} 个种子，训练 {steps} 步；W=窗口，S=sink 个数；窗口训练的模型 W={TRAIN_WINDOW}）")
    # ---- 表 2：落在第 0 位上的注意力 ----
    exp.print_table(["query positions", "uniform 1/(i+1)"] + [f"layer {i}" for i in range(layers)]
                    + ["all layers", "window-trained (full attn)"],
                    [[span_label(s), f"{uniform[s]:.4f}"]
                     + [format_mean_std([sum(r["mass"][s][i]) / EVAL_BATCHES for r in rows], 3) for i in range(layers)]
                     + [format_mean_std(mass(s), 3), format_mean_std(mass(s, "mass_window_trained"), 3)]
                     for s in mass_spans],
                    title="全注意力模型每层落在第 0 位（<s>）上的平均注意力（对头、query 取平均）")
    def outside(key):  # (每个种子的平均, 第一个种子的逐批次值)：落在 4 个 sink + 窗口之外的注意力
        per_seed = [r["outside_mass"][key] for r in rows]
        return [sum(v) / len(v) for v in per_seed], per_seed[0]

    exp.print_table(["window W", "pos W..2W-1", "pos >= 2W"],
                    [[str(w)] + [format_mean_std(outside(f"W{w} {where}")[0], 3) for where in ("near", "far")]
                     for w in WINDOWS],
                    title=f"全注意力模型落在 {OUTSIDE_SINKS} 个 sink + 窗口之外的注意力（各层、各头平均）："
                          f"滑窗 + {OUTSIDE_SINKS} 个 sink 拿走的就是这部分，剩下的被重新归一化")
    snapshot_steps = sorted(rows[0]["head_mass_by_step"])
    exp.print_table(["step"] + [str(s) for s in snapshot_steps],
                    [[f"strongest head, queries 1-{BLOCK_SIZE - 1}"] + [format_mean_std(head_mass(s)[0], 3) for s in snapshot_steps],
                     ["uniform 1/(i+1)"] + [f"{uniform_first_mass(1, BLOCK_SIZE):.4f}"] * len(snapshot_steps),
                     [f"evict cost, W={EVICT_WINDOW} pos {EVICT_WINDOW}-{2 * EVICT_WINDOW - 1} (nats)"]
                     + [format_mean_std(evicted(s)[0], 3) for s in snapshot_steps]],
                    title=f"训练过程中最强的头落在第 0 位上的平均注意力（Gu et al. 的 sink 判据：> ε = {SINK_EPSILON}），"
                          f"与把 <s> 挤出窗口的代价（纯滑窗 − 滑窗 + 1 个 sink 的 loss）")
    exp.save_metrics({"config": {"steps": steps, "hidden": hidden, "layers": layers, "heads": HEADS,
                                 "block_size": BLOCK_SIZE, "batch_size": BATCH_SIZE, "lr": LR, "windows": list(WINDOWS),
                                 "sinks": list(SINKS), "train_window": TRAIN_WINDOW, "eval_batches": EVAL_BATCHES,
                                 "eval_batch_size": EVAL_BATCH_SIZE, "spans": [list(s) for s in SPANS],
                                 "near_span": list(NEAR_SPAN), "far_span": list(FAR_SPAN), "bos": True,
                                 "sink_recovery": SINK_RECOVERY, "sink_epsilon": SINK_EPSILON,
                                 "window_trained_margin": WINDOW_TRAINED_MARGIN},
                      "position_loss_mean": {k: v.mean(dim=(0, 1)).tolist() for k, v in losses.items()},
                      "position_loss_batches_seed0": {k: v[0].tolist() for k, v in losses.items()},
                      "first_token_mass": [{span_label(s): r["mass"][s] for s in mass_spans} for r in rows],
                      "first_token_mass_window_trained": [{span_label(s): r["mass_window_trained"][s]
                                                           for s in mass_spans} for r in rows],
                      "head_first_mass_by_step": [r["head_mass_by_step"] for r in rows],
                      "evict_window": EVICT_WINDOW,
                      "evict_cost_by_step": [r["evict_cost_by_step"] for r in rows],
                      "uniform_first_mass": {span_label(s): uniform[s] for s in mass_spans},
                      "outside_sinks": OUTSIDE_SINKS,
                      "outside_mass": [r["outside_mass"] for r in rows],
                      "train_loss": [r["train_loss"] for r in rows]})

    # ---- 结论 ----（quick_reason 不为 None 的结论 quick 不判定，原因见开头的 QUICK_REASON_*）
    worst = max((losses[f"W{w} S{s}"][:, :, :w] - losses["full"][:, :, :w]).abs().max().item()
                for w in WINDOWS for s in (0,) + SINKS)
    exp.conclude("位置 < W 时窗口装得下整个前文：滑窗（加不加 sink）与全注意力的逐位置 loss 相同（差 < 1e-4）",
                 holds=worst < 1e-4, evidence=f"最大差 {worst:.2e}")

    def excess(a, b, scale=1.0):  # a 比 b 多出来的 loss（乘 scale），按种子 / 按批次
        return [scale * (x - y) for x, y in zip(a, b)]

    for w in WINDOWS:
        small_effect = QUICK_REASON_SMALL_EFFECT if w in QUICK_UNDECIDED_WINDOWS else None
        at_8 = small_effect or (QUICK_REASON_W8_EVICTION if w == WINDOWS[0] else None)
        for where, span in (("刚被挤出（位置 W..2W-1）", (w, 2 * w)), ("远处（位置 >= 2W）", (2 * w, BLOCK_SIZE - 1))):
            near = span[0] == w
            full_l, full_b = span_loss("full", span)
            plain_l, plain_b = span_loss(f"W{w} S0", span)
            one_l, one_b = span_loss(f"W{w} S1", span)
            four_l, four_b = span_loss(f"W{w} S4", span)
            redo_l, redo_b = span_loss(f"W{w} recompute", span)
            exp.conclude_verdict(f"W={w}，第 0 位{where}：纯滑窗的 loss 高于全注意力",
                                 compare_runs(plain_l, full_l, "greater", plain_b, full_b),
                                 f"纯滑窗 {format_mean_std(plain_l)} vs 全注意力 {format_mean_std(full_l)}",
                                 quick_reason=at_8 if near else small_effect)
            exp.conclude_verdict(f"W={w}，第 0 位{where}：滑窗 + 1 个 sink 的 loss 低于纯滑窗",
                                 compare_runs(one_l, plain_l, "less", one_b, plain_b),
                                 f"S=1 {format_mean_std(one_l)} vs 纯滑窗 {format_mean_std(plain_l)}",
                                 quick_reason=small_effect)
            r = 1 - SINK_RECOVERY
            recovery_evidence = (f"比滑窗重算多出的 loss：S=4 {format_mean_std(excess(four_l, redo_l), 3)}，"
                                 f"纯滑窗 {format_mean_std(excess(plain_l, redo_l), 3)}（比全注意力多出的："
                                 f"S=4 {format_mean_std(excess(four_l, full_l), 3)}，重算 "
                                 f"{format_mean_std(excess(redo_l, full_l), 3)}）")
            if near and w not in PREMISE_CONTRAST_WINDOWS:  # 刚被挤出：StreamingLLM 的说法，照原样检验
                exp.conclude_verdict(f"W={w}，第 0 位{where}：滑窗 + 4 个 sink 收回了纯滑窗比滑窗重算多出来的 loss 的至少 "
                                     f"{SINK_RECOVERY:.0%}（S=4 比重算多出的 < {r:.0%}×纯滑窗比重算多出的，界事先定好）",
                                     compare_runs(excess(four_l, redo_l), excess(plain_l, redo_l, r), "less",
                                                  excess(four_b, redo_b), excess(plain_b, redo_b, r)),
                                     recovery_evidence, quick_reason=QUICK_REASON_RECOVERY)
            if near:  # 前提：保留 <s> 收回的（纯滑窗 − S=1）多于 4 个 sink 也收不回的（S=4 − 重算）
                returned_l, returned_b = excess(plain_l, one_l), excess(plain_b, one_b)
                left_l, left_b = excess(four_l, redo_l), excess(four_b, redo_b)
                premise_evidence = (f"保留 <s> 收回 {format_mean_std(returned_l, 3)}，4 个 sink 也收不回 "
                                    f"{format_mean_std(left_l, 3)}")
                if w in PREMISE_CONTRAST_WINDOWS:
                    recovered = [1 - a / b for a, b in zip(left_l, excess(plain_l, redo_l))]
                    exp.conclude_verdict(
                        f"对照：W={w}，第 0 位{where}：<s> 在这里已不是 sink——保留 <s> 收回的 loss（纯滑窗 − S=1）少于"
                        f" 4 个 sink 也收不回的（S=4 − 滑窗重算），\"4 个 sink 收回至少 {SINK_RECOVERY:.0%}\"的前提不成立"
                        f"（同一个量在 W={WINDOWS[0]}、{WINDOWS[1]} 刚被挤出时方向相反，见上面的配对结论）",
                        compare_runs(returned_l, left_l, "less", returned_b, left_b),
                        premise_evidence + f"；4 个 sink 收回了纯滑窗比重算多出的 {format_mean_std(recovered, 2)}；"
                        + recovery_evidence, quick_reason=small_effect)
                else:
                    exp.conclude_verdict(
                        f"W={w}，第 0 位{where}：<s> 是 sink——保留 <s> 收回的 loss（纯滑窗 − S=1）多于 4 个 sink 也收不回的"
                        f"（S=4 − 滑窗重算）",
                        compare_runs(returned_l, left_l, "greater", returned_b, left_b), premise_evidence,
                        quick_reason=QUICK_REASON_PREMISE)
            else:  # 远处：同一个量、同一个界，这个弱 sink 的小模型上方向相反，作为对照（与上面"刚被挤出"的那条配对）
                far_out, near_out = outside(f"W{w} far")[0], outside(f"W{w} near")[0]
                exp.conclude_verdict(
                    f"对照：W={w}，第 0 位{where}：滑窗 + 4 个 sink 收回的不到纯滑窗比滑窗重算多出来的 loss 的 "
                    f"{SINK_RECOVERY:.0%}（S=4 比重算多出的 > {r:.0%}×纯滑窗比重算多出的，界事先定好；"
                    f"同一个量在第 0 位刚被挤出时见上面的配对结论）",
                    compare_runs(excess(four_l, redo_l), excess(plain_l, redo_l, r), "greater",
                                 excess(four_b, redo_b), excess(plain_b, redo_b, r)),
                    recovery_evidence + f"；落在 4 个 sink + 窗口之外的注意力：远处 "
                    f"{format_mean_std(far_out, 3)}，刚被挤出时 {format_mean_std(near_out, 3)}", quick_reason=at_8)
        far = (2 * w, BLOCK_SIZE - 1)
        full_l, full_b = span_loss("full", far)
        redo_l, redo_b = span_loss(f"W{w} recompute", far)
        exp.conclude_verdict(f"W={w}，远处（位置 >= 2W）：滑窗重算的 loss 也高于全注意力（窗口外的上下文本身有用，"
                             f"这部分 sink 补不回来）",
                             compare_runs(redo_l, full_l, "greater", redo_b, full_b),
                             f"重算 {format_mean_std(redo_l)} vs 全注意力 {format_mean_std(full_l)}",
                             quick_reason=small_effect)
        far_l, far_b = outside(f"W{w} far")
        near_l, near_b = outside(f"W{w} near")
        exp.conclude_verdict(f"W={w}：全注意力模型在远处（位置 >= 2W）落在 {OUTSIDE_SINKS} 个 sink + 窗口之外的注意力多于"
                             f"第 0 位刚被挤出时（位置 W..2W-1）：远处滑窗 + sink 拿走、要重新归一化的权重更多",
                             compare_runs(far_l, near_l, "greater", far_b, near_b),
                             f"远处 {format_mean_std(far_l, 3)} vs 刚被挤出 {format_mean_std(near_l, 3)}")
    last, first_step = snapshot_steps[-1], snapshot_steps[0]
    end_seeds, end_batches = head_mass(last)
    early_seeds, early_batches = head_mass(first_step)
    uniform_all = uniform_first_mass(1, BLOCK_SIZE)
    exp.conclude_verdict(f"对照：最强的头落在第 0 位上的平均注意力（query 位置 1-{BLOCK_SIZE - 1}）不到 ε = {SINK_EPSILON}"
                         f"（Gu et al. 2024 的 sink 判据，ε 取论文的值）：这个规模上没有 Gu et al. 意义上的 sink"
                         f"（与它配对的是干预：把 <s> 挤出窗口的代价，见上面 W={EVICT_WINDOW} 刚被挤出的结论与下面随训练变大的结论）",
                         compare_runs(end_seeds, [SINK_EPSILON] * len(end_seeds), "less",
                                      end_batches, [SINK_EPSILON] * len(end_batches)),
                         f"{format_mean_std(end_seeds, 3)}，是均匀分配（{uniform_all:.4f}）的 "
                         f"{format_mean_std([v / uniform_all for v in end_seeds], 2)} 倍；第 {first_step} 步时 "
                         f"{format_mean_std(early_seeds, 3)}")
    exp.conclude_verdict(f"最强的头落在第 0 位上的注意力：训练结束时高于训练第 {first_step} 步时（sink 随训练出现）",
                         compare_runs(end_seeds, early_seeds, "greater", end_batches, early_batches),
                         f"第 {last} 步 {format_mean_std(end_seeds, 3)} vs 第 {first_step} 步 {format_mean_std(early_seeds, 3)}",
                         quick_reason=QUICK_REASON_HEAD_GROWTH)
    cost_end, cost_end_b = evicted(last)
    cost_early, cost_early_b = evicted(first_step)
    exp.conclude_verdict(f"把 <s> 挤出窗口的代价随训练变大：W={EVICT_WINDOW}、位置 {EVICT_WINDOW}-{2 * EVICT_WINDOW - 1} 上纯滑窗比"
                         f"滑窗 + 1 个 sink 多出的 loss，训练结束时大于训练第 {first_step} 步时（模型随训练越来越依赖 <s>）",
                         compare_runs(cost_end, cost_early, "greater", cost_end_b, cost_early_b),
                         f"第 {last} 步 {format_mean_std(cost_end, 3)} vs 第 {first_step} 步 {format_mean_std(cost_early, 3)}",
                         quick_reason=QUICK_REASON_EVICT_GROWTH)
    w = TRAIN_WINDOW
    near = (w, 2 * w)
    trained_l, trained_b = span_loss("window-trained", near)
    for sinks in SINKS:
        s_l, s_b = span_loss(f"window-trained S{sinks}", near)
        exp.conclude_verdict(f"窗口训练（W={w}）的模型不需要 sink：位置 W..2W-1 上不加 sink 的 loss 最多比加 {sinks} 个 sink "
                             f"高 {WINDOW_TRAINED_MARGIN} nats（单侧界，事先定好）",
                             noninferior_runs(trained_l, s_l, WINDOW_TRAINED_MARGIN, "less", trained_b, s_b),
                             f"不加 {format_mean_std(trained_l)} vs S={sinks} {format_mean_std(s_l)}")
    plain_l, plain_b = span_loss(f"W{w} S0", near)
    exp.conclude_verdict(f"W={w}，位置 W..2W-1：窗口训练的模型的 loss 低于全注意力训练、用同一窗口评估（不加 sink）的模型",
                         compare_runs(trained_l, plain_l, "less", trained_b, plain_b),
                         f"窗口训练 {format_mean_std(trained_l)} vs 全注意力训练 + 纯滑窗 {format_mean_std(plain_l)}")

    # ---- 图 ----
    set_style()
    fig, axes = plt.subplots(1, 3, figsize=(18, 4.8))
    positions = list(range(1, BLOCK_SIZE))  # 位置 0 的 logits 预测第 1 个字符；横轴用对数，从 1 画起

    full_curve = losses["full"].mean(dim=(0, 1))  # (T-1,)

    def smooth(curve, k=4):  # 相邻 k 个位置的滑动平均，只为画图看得清
        return [curve[max(0, i - k + 1):i + 1].mean().item() for i in range(len(curve))]

    w = WINDOWS[1]
    for key, label in ((f"W{w} S0", f"window {w}"), (f"W{w} S1", f"window {w} + 1 sink"),
                       (f"W{w} S4", f"window {w} + 4 sinks"), (f"W{w} recompute", f"window {w}, re-computed"),
                       ("window-trained", f"model trained with window {TRAIN_WINDOW}")):
        axes[0].plot(positions, smooth(losses[key].mean(dim=(0, 1)) - full_curve), label=label, lw=1.2)
    axes[0].axvline(w, color="gray", ls=":", lw=1)
    axes[0].axhline(0, color="black", lw=0.8)
    axes[0].set_xscale("log")
    axes[0].set_xlabel("position (log scale); dotted line = W")
    axes[0].set_ylabel("loss - full-attention loss (nats, 4-pos moving avg)")
    axes[0].set_title("extra loss by position (full-attention model unless noted)")
    axes[0].legend(fontsize=8)
    for c, (variant, name) in enumerate((("S0", "0 sinks"), ("S1", "1 sink"), ("S4", "4 sinks"),
                                         ("recompute", "re-computation"))):
        for span_of, style, where in ((lambda w: (w, 2 * w), "o-", "positions W..2W-1"),
                                      (lambda w: (2 * w, BLOCK_SIZE - 1), "x--", "positions >= 2W")):
            extra = [mean_std(span_loss(f"W{w} {variant}", span_of(w))[0])[0]
                     - mean_std(span_loss("full", span_of(w))[0])[0] for w in WINDOWS]
            axes[1].plot(WINDOWS, extra, style, color=f"C{c}", label=f"{name}, {where}")
    axes[1].set_xscale("log", base=2)
    axes[1].set_xticks(list(WINDOWS), [str(w) for w in WINDOWS])
    axes[1].set_xlabel("window W")
    axes[1].set_ylabel("loss - full-attention loss (nats)")
    axes[1].set_title("extra loss from the window")
    axes[1].legend(fontsize=7)
    mids = [(a + b - 1) / 2 for a, b in mass_spans]
    for i in range(layers):
        axes[2].plot(mids, [mean_std([sum(r["mass"][s][i]) / EVAL_BATCHES for r in rows])[0] for s in mass_spans],
                     "o-", label=f"layer {i}")
    axes[2].plot(mids, [uniform[s] for s in mass_spans], "k--", lw=1, label="uniform 1/(i+1)")
    axes[2].set_xscale("log")
    axes[2].set_yscale("log")
    axes[2].set_xlabel("query position (span midpoint)")
    axes[2].set_ylabel("attention weight on token 0 (<s>)")
    axes[2].set_title(f"attention on the first token after {steps} steps")
    axes[2].legend(fontsize=8)
    exp.save_figure(fig, "exp3_sliding_window.png")
    exp.finish()


if __name__ == "__main__":
    main()
