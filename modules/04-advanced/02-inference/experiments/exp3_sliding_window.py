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
  3. 记录每层注意力落在第 0 位上的平均权重（按 query 位置分段），与"均匀分配"的 1/(i+1) 对比；
     训练中途几个快照上的同一个量，看 sink 是不是随训练出现的（Gu et al. 2024）。
  4. 对照（Mistral 的做法）：用 sliding_window=TRAIN_WINDOW 训练的模型，用同样的窗口评估——它训练时
     就没见过"窗口外的第 0 位"，不依赖 sink。
loss 分两段看：第 0 位"刚被挤出"（位置 W..2W-1）与"远处"（位置 >= 2W）。

开发时的测量（只看种子 42）：
  - 不加 <s>、随机截取的文本段训练 300 步（hidden 128）：窗口 8 刚挤出第 0 位时 loss 只多 0.007，
    加 sink 几乎不变；没有一层把高于均匀分配的注意力放在第 0 位上——这个设定下看不到 sink。
  - 加上固定的 <s> 之后，"刚被挤出"那一段的 loss 明显上升，1 个 sink 就几乎全部收回（hidden 128 训练 300 步、
    hidden 64 训练 1500 步都是这样）；但远处（位置 >= 2W）sink 几乎没用，那里多出来的 loss 来自窗口外丢掉的上下文。
  - 按层、头、query 平均之后，落在 <s> 上的注意力并不高于均匀分配（只有个别层在靠前的位置高于均匀），
    也没有随训练变大：小字符模型里的"sink"只是靠前的位置把一部分注意力放在 <s> 上，不是 StreamingLLM
    在大模型里看到的"每个位置都把大半注意力放在第一个 token 上"。
  所以本实验采用 <s> 的设定，结论按上面两段位置分别事先写好；注意力质量的结论照 StreamingLLM 的说法写，
  在这个小模型上预期不成立（照实打印）。

事先定好的结论（看多种子结果之前）：
  - 对每个 W、两段位置：纯滑窗的 loss 高于全注意力；滑窗 + 1 个 sink 的 loss 低于纯滑窗；
    滑窗 + 4 个 sink 收回了纯滑窗多出来的 loss 的至少一半（SINK_RECOVERY）；
  - 全注意力模型（各层平均）落在第 0 位上的注意力，在 query 位置 8-15 与最远一段上都高于均匀分配；
    训练结束时高于训练 10% 处；
  - 用窗口训练的模型：位置 W..2W-1 上加不加 sink，loss 相差不超过 WINDOW_TRAINED_MARGIN nats；
    它的 loss 低于全注意力模型用同一窗口、不加 sink 时的 loss。

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

from modules.common.datasets import get_experiment_data  # noqa: E402
from modules.common.experiment_base import Experiment, format_mean_std, mean_std  # noqa: E402
from modules.common.lab_model import LabConfig, LabModel, record_attention  # noqa: E402
from modules.common.noise import compare_runs, equivalent_runs  # noqa: E402
from modules.common.text_data import BatchSampler, CharTokenizer, train_val_split  # noqa: E402
from modules.common.training import train_model  # noqa: E402
from modules.common.visualization import plt, set_style  # noqa: E402

HIDDEN, LAYERS, HEADS = 64, 4, 4
BLOCK_SIZE, BATCH_SIZE, LR = 128, 16, 6e-3  # BLOCK_SIZE 含第 0 位的 <s>
WINDOWS = (8, 16, 32)
SINKS = (1, 4)
TRAIN_WINDOW = 16  # 对照模型训练时用的窗口（Mistral 式）
EVAL_BATCHES, EVAL_BATCH_SIZE = 8, 16  # 固定的验证序列：每种注意力方式都在这同一批上评估（逐批次配对）
# 按 query 位置分段统计（loss 与"落在第 0 位上的注意力"都用这些段）：[0, 8) 窗口 8 还装得下全部前文，之后每段翻倍
SPANS = ((0, 8), (8, 16), (16, 32), (32, 64), (64, BLOCK_SIZE - 1))
NEAR_SPAN, FAR_SPAN = SPANS[1], SPANS[-1]  # 注意力质量的结论：刚过窗口 8 的位置 / 最远的一段
SNAPSHOT_FRACTIONS = (0.1, 0.25, 0.5, 0.75)  # 训练到这些比例时存一份权重，看 sink 何时出现（最后一步另算）
SINK_RECOVERY = 0.5  # "sink 收回了大部分"：至少收回纯滑窗多出来的 loss 的一半（事先定好）
WINDOW_TRAINED_MARGIN = 0.02  # "窗口训练的模型不需要 sink"的等价界（nats，事先定好）


def add_args(parser):
    parser.add_argument("--steps", type=int, default=None, help="训练步数（默认 quick 150 / 完整 800，必须 >= 20）")


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


def run_seed(seed: int, text: str, steps: int, device) -> dict:
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
    config = LabConfig(vocab_size=tokenizer.vocab_size + 1, hidden_size=HIDDEN, num_layers=LAYERS, n_heads=HEADS,
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
    trained = models["window-trained"]
    row["losses"]["window-trained"] = position_losses(trained, eval_batches).tolist()
    for sinks in SINKS:
        row["losses"][f"window-trained S{sinks}"] = position_losses(
            windowed(trained, TRAIN_WINDOW, sinks), eval_batches).tolist()
    row["losses"]["window-trained full-attn"] = position_losses(windowed(trained, None), eval_batches).tolist()

    mass_spans = SPANS[1:]  # 位置 0 只能看自己，第 0 段不统计
    row["mass"] = first_token_masses(full, eval_batches, mass_spans)  # {段: [层][批]}
    row["mass_window_trained"] = first_token_masses(windowed(trained, None), eval_batches, mass_spans)
    row["mass_by_step"] = {}  # {步数: [层][批]}，只统计 NEAR_SPAN
    probe = copy.deepcopy(full)
    for step, state in sorted(snapshots["full"].items()):
        probe.load_state_dict(state)
        row["mass_by_step"][step] = first_token_masses(probe, eval_batches, [NEAR_SPAN])[NEAR_SPAN]
    row["mass_by_step"][steps] = row["mass"][NEAR_SPAN]
    mass_means = [sum(m) / len(m) for m in row["mass"][NEAR_SPAN]]
    print(f"  [seed {seed}] train loss full {row['train_loss']['full']:.3f} / window-trained "
          f"{row['train_loss']['window-trained']:.3f}；位置 {NEAR_SPAN[0]}-{NEAR_SPAN[1] - 1} 落在第 0 位的注意力（各层）"
          + " ".join(f"{m:.3f}" for m in mass_means), flush=True)
    return row


def span_label(span) -> str:
    """(8, 16) → "8-15"：表格与 JSON 里用的位置段名（含两端）。"""
    return f"{span[0]}-{span[1] - 1}"


def main():
    exp = Experiment(__file__, description="滑动窗口注意力与 attention sink：第一个 token 被挤出窗口之后",
                     extra_args=add_args)
    steps = exp.args.steps if exp.args.steps is not None else (150 if exp.quick else 800)
    if steps < 20:
        raise SystemExit(f"--steps 必须 >= 20（收到 {steps}）")
    if exp.device.type == "cpu":
        torch.set_num_threads(1)  # 小矩阵乘在 2 核机器上多线程几乎不更快，机器一忙反而慢很多
    text = get_experiment_data("shakespeare")
    rows = [run_seed(seed, text, steps, exp.device) for seed in exp.seeds]
    losses = {k: torch.tensor([r["losses"][k] for r in rows]) for k in rows[0]["losses"]}  # (seeds, batches, T-1)

    def span_loss(key, span):  # (每个种子的平均, 第一个种子的逐批次值)：位置在 span 里的平均 loss
        per_batch = losses[key][:, :, span[0]:span[1]].mean(dim=2)  # (seeds, batches)
        return per_batch.mean(dim=1).tolist(), per_batch[0].tolist()

    def layer_avg(per_layer):  # [层][批] → [批]：各层平均
        return [sum(v) / len(v) for v in zip(*per_layer)]

    def mass(span, key="mass", step=None):  # 全部层平均之后：(每个种子的平均, 第一个种子的逐批次值)
        values = [layer_avg(r[key][span] if step is None else r["mass_by_step"][step]) for r in rows]
        return [sum(v) / len(v) for v in values], values[0]

    mass_spans = SPANS[1:]
    uniform = {span: uniform_first_mass(*span) for span in mass_spans}

    # ---- 表 1：逐位置段的 loss ----
    exp.print_table(["attention at eval"] + [f"pos {span_label(s)}" for s in SPANS],
                    [[k] + [format_mean_std(span_loss(k, s)[0], 3) for s in SPANS] for k in losses],
                    title=f"验证 loss（nats/char）按位置分段：{EVAL_BATCHES}×{EVAL_BATCH_SIZE} 条长 {BLOCK_SIZE} 的序列"
                          f"（{len(exp.seeds)} 个种子，训练 {steps} 步；W=窗口，S=sink 个数；窗口训练的模型 W={TRAIN_WINDOW}）")
    # ---- 表 2：落在第 0 位上的注意力 ----
    exp.print_table(["query positions", "uniform 1/(i+1)"] + [f"layer {i}" for i in range(LAYERS)]
                    + ["all layers", "window-trained (full attn)"],
                    [[span_label(s), f"{uniform[s]:.4f}"]
                     + [format_mean_std([sum(r["mass"][s][i]) / EVAL_BATCHES for r in rows], 3) for i in range(LAYERS)]
                     + [format_mean_std(mass(s)[0], 3), format_mean_std(mass(s, "mass_window_trained")[0], 3)]
                     for s in mass_spans],
                    title="全注意力模型每层落在第 0 位（<s>）上的平均注意力（对头、query 取平均）")
    snapshot_steps = sorted(rows[0]["mass_by_step"])
    exp.print_table(["step"] + [str(s) for s in snapshot_steps],
                    [[f"pos {span_label(NEAR_SPAN)}, all layers"] + [format_mean_std(mass(NEAR_SPAN, step=s)[0], 3)
                                                                     for s in snapshot_steps]],
                    title="训练过程中落在第 0 位上的注意力（sink 何时出现）")
    exp.save_metrics({"config": {"steps": steps, "hidden": HIDDEN, "layers": LAYERS, "heads": HEADS,
                                 "block_size": BLOCK_SIZE, "batch_size": BATCH_SIZE, "lr": LR, "windows": list(WINDOWS),
                                 "sinks": list(SINKS), "train_window": TRAIN_WINDOW, "eval_batches": EVAL_BATCHES,
                                 "eval_batch_size": EVAL_BATCH_SIZE, "spans": [list(s) for s in SPANS],
                                 "near_span": list(NEAR_SPAN), "far_span": list(FAR_SPAN), "bos": True,
                                 "sink_recovery": SINK_RECOVERY, "window_trained_margin": WINDOW_TRAINED_MARGIN},
                      "position_loss_mean": {k: v.mean(dim=(0, 1)).tolist() for k, v in losses.items()},
                      "position_loss_batches_seed0": {k: v[0].tolist() for k, v in losses.items()},
                      "first_token_mass": [{span_label(s): r["mass"][s] for s in mass_spans} for r in rows],
                      "first_token_mass_window_trained": [{span_label(s): r["mass_window_trained"][s]
                                                           for s in mass_spans} for r in rows],
                      "first_token_mass_by_step": [r["mass_by_step"] for r in rows],
                      "uniform_first_mass": {span_label(s): uniform[s] for s in mass_spans},
                      "train_loss": [r["train_loss"] for r in rows]})

    # ---- 结论 ----
    worst = max((losses[f"W{w} S{s}"][:, :, :w] - losses["full"][:, :, :w]).abs().max().item()
                for w in WINDOWS for s in (0,) + SINKS)
    exp.conclude("位置 < W 时窗口装得下整个前文：滑窗（加不加 sink）与全注意力的逐位置 loss 相同（差 < 1e-4）",
                 holds=worst < 1e-4, evidence=f"最大差 {worst:.2e}")

    def excess(a, b, scale=1.0):  # 比全注意力多出来的 loss（乘 scale），按种子 / 按批次
        return [scale * (x - y) for x, y in zip(a, b)]

    for w in WINDOWS:
        for where, span in (("刚被挤出（位置 W..2W-1）", (w, 2 * w)), ("远处（位置 >= 2W）", (2 * w, BLOCK_SIZE - 1))):
            full_l, full_b = span_loss("full", span)
            plain_l, plain_b = span_loss(f"W{w} S0", span)
            one_l, one_b = span_loss(f"W{w} S1", span)
            four_l, four_b = span_loss(f"W{w} S4", span)
            exp.conclude_verdict(f"W={w}，第 0 位{where}：纯滑窗的 loss 高于全注意力",
                                 compare_runs(plain_l, full_l, "greater", plain_b, full_b),
                                 evidence=f"纯滑窗 {format_mean_std(plain_l)} vs 全注意力 {format_mean_std(full_l)}")
            exp.conclude_verdict(f"W={w}，第 0 位{where}：滑窗 + 1 个 sink 的 loss 低于纯滑窗",
                                 compare_runs(one_l, plain_l, "less", one_b, plain_b),
                                 evidence=f"S=1 {format_mean_std(one_l)} vs 纯滑窗 {format_mean_std(plain_l)}")
            r = 1 - SINK_RECOVERY
            exp.conclude_verdict(f"W={w}，第 0 位{where}：滑窗 + 4 个 sink 收回了纯滑窗多出来的 loss 的至少 "
                                 f"{SINK_RECOVERY:.0%}（S=4 比全注意力多出的 < {r:.0%}×纯滑窗多出的，界事先定好）",
                                 compare_runs(excess(four_l, full_l), excess(plain_l, full_l, r), "less",
                                              excess(four_b, full_b), excess(plain_b, full_b, r)),
                                 evidence=f"比全注意力多出的 loss：S=4 {format_mean_std(excess(four_l, full_l), 3)}，"
                                          f"纯滑窗 {format_mean_std(excess(plain_l, full_l), 3)}")
    for span, where in ((NEAR_SPAN, "刚过窗口 8 的 query"), (FAR_SPAN, "最远一段的 query")):
        m_seeds, m_batches = mass(span)
        u = uniform[span]
        exp.conclude_verdict(f"{where}（位置 {span_label(span)}）：各层平均落在第 0 位上的注意力高于均匀分配 {u:.4f}",
                             compare_runs(m_seeds, [u] * len(m_seeds), "greater", m_batches, [u] * len(m_batches)),
                             evidence=format_mean_std(m_seeds, 3))
    first_step = snapshot_steps[0]
    end_seeds, end_batches = mass(NEAR_SPAN, step=steps)
    early_seeds, early_batches = mass(NEAR_SPAN, step=first_step)
    exp.conclude_verdict(f"位置 {span_label(NEAR_SPAN)} 落在第 0 位上的注意力：训练结束时高于训练第 {first_step} 步时",
                         compare_runs(end_seeds, early_seeds, "greater", end_batches, early_batches),
                         evidence=f"第 {steps} 步 {format_mean_std(end_seeds, 3)} vs 第 {first_step} 步 "
                                  f"{format_mean_std(early_seeds, 3)}")
    w = TRAIN_WINDOW
    near = (w, 2 * w)
    trained_l, trained_b = span_loss("window-trained", near)
    for sinks in SINKS:
        s_l, s_b = span_loss(f"window-trained S{sinks}", near)
        exp.conclude_verdict(f"窗口训练（W={w}）的模型，位置 W..2W-1：加 {sinks} 个 sink 与不加的 loss 相差不超过 "
                             f"{WINDOW_TRAINED_MARGIN} nats（界事先定好）",
                             equivalent_runs(s_l, trained_l, WINDOW_TRAINED_MARGIN, s_b, trained_b),
                             evidence=f"S={sinks} {format_mean_std(s_l)} vs 不加 {format_mean_std(trained_l)}")
    plain_l, plain_b = span_loss(f"W{w} S0", near)
    exp.conclude_verdict(f"W={w}，位置 W..2W-1：窗口训练的模型的 loss 低于全注意力训练、用同一窗口评估（不加 sink）的模型",
                         compare_runs(trained_l, plain_l, "less", trained_b, plain_b),
                         evidence=f"窗口训练 {format_mean_std(trained_l)} vs 全注意力训练 + 纯滑窗 "
                                  f"{format_mean_std(plain_l)}")

    # ---- 图 ----
    set_style()
    fig, axes = plt.subplots(1, 3, figsize=(18, 4.8))
    positions = list(range(1, BLOCK_SIZE))  # 位置 0 的 logits 预测第 1 个字符；横轴用对数，从 1 画起

    full_curve = losses["full"].mean(dim=(0, 1))  # (T-1,)

    def smooth(curve, k=4):  # 相邻 k 个位置的滑动平均，只为画图看得清
        return [curve[max(0, i - k + 1):i + 1].mean().item() for i in range(len(curve))]

    w = WINDOWS[1]
    for key, label in ((f"W{w} S0", f"window {w}"), (f"W{w} S1", f"window {w} + 1 sink"),
                       (f"W{w} S4", f"window {w} + 4 sinks"),
                       ("window-trained", f"model trained with window {TRAIN_WINDOW}")):
        axes[0].plot(positions, smooth(losses[key].mean(dim=(0, 1)) - full_curve), label=label, lw=1.2)
    axes[0].axvline(w, color="gray", ls=":", lw=1)
    axes[0].axhline(0, color="black", lw=0.8)
    axes[0].set_xscale("log")
    axes[0].set_xlabel("position (log scale); dotted line = W")
    axes[0].set_ylabel("loss - full-attention loss (nats, 4-pos moving avg)")
    axes[0].set_title("extra loss by position (full-attention model unless noted)")
    axes[0].legend(fontsize=8)
    for c, s in enumerate((0,) + SINKS):
        for span_of, style, where in ((lambda w: (w, 2 * w), "o-", "positions W..2W-1"),
                                      (lambda w: (2 * w, BLOCK_SIZE - 1), "x--", "positions >= 2W")):
            extra = [mean_std(span_loss(f"W{w} S{s}", span_of(w))[0])[0] - mean_std(span_loss("full", span_of(w))[0])[0]
                     for w in WINDOWS]
            axes[1].plot(WINDOWS, extra, style, color=f"C{c}", label=f"{s} sinks, {where}")
    axes[1].set_xscale("log", base=2)
    axes[1].set_xticks(list(WINDOWS), [str(w) for w in WINDOWS])
    axes[1].set_xlabel("window W")
    axes[1].set_ylabel("loss - full-attention loss (nats)")
    axes[1].set_title("extra loss from the window")
    axes[1].legend(fontsize=7)
    mids = [(a + b - 1) / 2 for a, b in mass_spans]
    for i in range(LAYERS):
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
