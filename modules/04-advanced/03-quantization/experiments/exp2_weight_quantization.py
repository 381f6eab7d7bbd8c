"""实验 2：只量化权重（weight-only）——位数、scale 的粒度、激活感知缩放（AWQ 式），以及哪一类层最怕量化。

在 TinyShakespeare 上训练一个字符级 LabModel（hidden 128、4 层、SwiGLU，与 MiniMind 同构），
再把它的深拷贝用仓库的 model/quantization.py::quantize_model 量化成各种方案，在同一批验证数据上比验证 loss / 困惑度：

    fp32                            不量化（对照）
    int8 per-tensor / per-channel   整个矩阵一个 scale / 每个输出通道一个 scale
    int4 per-tensor / per-channel   同上，只有 15 个整数值
    int4 group 32                   每行每 32 个输入一个 scale（仓库 --quantize int4 的默认方案）
    int4 per-channel AWQ α=0.5      Lin et al. 2023 的激活感知缩放：s_j = mean|x_j|^α，量化 W·diag(s)，前向时激活除以 s
    int4 per-channel AWQ α search   同上，但每层在 α ∈ {0, 0.1, …, 1} 里挑校准数据上输出误差最小的（AWQ 论文的做法；α=0 就是 RTN）

lm_head 与词嵌入共享权重（LabModel 默认 tie_embeddings=True），按 quantize_model 的默认 skip=("lm_head",) 保持浮点。
每个方案的"每权重比特数"用 model/quantization.py::weight_bytes 量出来（含 fp32 的 scale），并与公式对照。

"哪一类层最怕量化"：每次只把一类线性层（q/k/v/o、gate/up/down）量化到 int4 per-tensor，其余保持 fp32，看 loss 涨多少。

噪声：完整模式 3 个种子（各自训练一个模型）按种子配对；quick 模式只有一个种子，按验证批次配对（同一批数据上两个方案的差）。
结论在看多种子结果之前定好（开发只用种子 42）：
  - int4 下 per-channel 好于 per-tensor；group 32 好于 per-channel；
  - int8 per-channel 与 fp32 的 loss 相差不超过 0.01 nats（EQUIVALENCE_MARGIN，事先定好）；
  - AWQ 式缩放（α=0.5，以及 α 搜索）好于同样 int4 per-channel 的普通 RTN；
  - 单独量化时，down_proj（输入是 SwiGLU 的乘积，离群值最多）造成的损伤大于其余每一类层。
"好于"最初只用验证 loss 判断。第一次完整运行里这些 loss 比较全部在种子间噪声以内（效应只有千分之几 nats，
而且有一个种子方向相反），于是每个比较另加一个度量：与 fp32 模型的 KL（见 evaluate）。这是事后加的度量，
两种度量的结论都打印出来，loss 的结论没有删改。

    python exp2_weight_quantization.py --quick
"""
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[4]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import copy  # noqa: E402
import math  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from model.quantization import QuantizedLinear, dequantize_weight, quantize_model, quantize_weight, weight_bytes  # noqa: E402
from modules.common.datasets import get_experiment_data  # noqa: E402
from modules.common.experiment_base import Experiment, format_mean_std, mean_std  # noqa: E402
from modules.common.lab_model import LabConfig, LabModel  # noqa: E402
from modules.common.noise import FAILS, HOLDS, compare_runs, equivalent_runs  # noqa: E402
from modules.common.text_data import BatchSampler, CharTokenizer, train_val_split  # noqa: E402
from modules.common.training import train_model  # noqa: E402
from modules.common.visualization import plt, set_style  # noqa: E402

HIDDEN, LAYERS, HEADS = 128, 4, 4
BLOCK_SIZE, BATCH_SIZE, LR = 64, 16, 6e-3
EVAL_BATCHES, EVAL_BATCH_SIZE = 16, 16  # 固定的验证批次：每个方案都在这同一批数据上评估（逐批次配对）
CALIB_BATCHES = 4  # AWQ 的校准数据：训练集上的几个 batch（不碰验证集）
CALIB_ROWS = 2048  # α 搜索时每层保留的校准激活行数
ALPHAS = tuple(i / 10 for i in range(11))
EQUIVALENCE_MARGIN = 0.01  # "int8 per-channel 与 fp32 差不多"的界（nats），在看结果之前定好
LAYER_TYPES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# 方案名 → quantize_model 的 (bits, group_size)；AWQ 两个方案单独实现（见 awq_quantize）
RTN_SCHEMES = {"int8 per-tensor": (8, 0), "int8 per-channel": (8, None), "int4 per-tensor": (4, 0),
               "int4 per-channel": (4, None), "int4 group 32": (4, 32)}
AWQ_SCHEMES = {"int4 per-channel AWQ a=0.5": 0.5, "int4 per-channel AWQ a-search": None}
SCHEMES = ("fp32",) + tuple(RTN_SCHEMES) + tuple(AWQ_SCHEMES)


def add_args(parser):
    parser.add_argument("--steps", type=int, default=None, help="训练步数（默认 quick 200 / 完整 600，必须 >= 20）")


class ActivationAwareLinear(nn.Module):
    """AWQ 式的量化线性层：y = x·Wᵀ = (x / s)·(W·diag(s))ᵀ。

    量化的是"按输入通道放大后的" W·diag(s)（仓库的 QuantizedLinear，同样的 RTN 与打包），前向时先把激活除以 s。
    s_j 大的输入通道（激活平均更大、对输出影响更大的那些）在量化网格上占的比例更大，舍入误差相对更小。
    部署时 1/s 可以并进前一个算子（q/k/v、gate/up 前面的 RMSNorm 权重），这里为了对每一层通用、写得直白，
    在前向里显式地乘 inv_s（多一次逐元素乘，多存 in 个 float32）。
    """

    def __init__(self, linear: nn.Linear, s: torch.Tensor, bits: int, group_size):
        super().__init__()
        scaled = nn.Linear(linear.in_features, linear.out_features, bias=False)
        scaled.weight.data = linear.weight.detach() * s[None, :]  # (out, in) · (1, in)
        self.inner = QuantizedLinear.from_linear(scaled, bits, group_size)
        self.register_buffer("inv_s", 1.0 / s)  # (in,)

    def forward(self, x):
        return self.inner(x * self.inv_s)  # (..., in) → (..., out)


def awq_scales(act_mean_abs: torch.Tensor, alpha: float) -> torch.Tensor:
    """s_j = mean|x_j|^α，再除以 sqrt(max(s)·min(s)) 使它以 1 为中心（只影响数值范围，不影响 y）。α=0 时 s 全是 1。"""
    s = act_mean_abs.clamp(min=1e-5) ** alpha
    return s / (s.max() * s.min()).sqrt()


def awq_output_error(w: torch.Tensor, x: torch.Tensor, s: torch.Tensor, bits: int, group_size) -> float:
    """校准激活 x (N, in) 上，量化 W·diag(s) 再除回 s 之后，输出的相对误差 ‖x·Wᵀ − x·Ŵᵀ‖ / ‖x·Wᵀ‖。
    s 全是 1 时就是普通 RTN 的输出误差。"""
    q, scale = quantize_weight(w * s[None, :], bits, group_size)
    w_hat = dequantize_weight(q, scale, bits) / s[None, :]  # (out, in)
    return ((x @ (w - w_hat).T).norm() / (x @ w.T).norm()).item()


@torch.no_grad()
def calibrate(model: nn.Module, batches, names) -> dict:
    """在校准 batch 上跑一遍，记录每个目标线性层输入的逐通道 mean|x_j|，并保留前 CALIB_ROWS 行激活（α 搜索用）。"""
    stats, hooks = {}, []
    for name in names:
        def hook(module, inputs, output, name=name):
            x = inputs[0].reshape(-1, inputs[0].shape[-1]).float()  # (B·T, in)
            entry = stats.setdefault(name, {"sum_abs": 0.0, "n": 0, "rows": []})
            entry["sum_abs"] = entry["sum_abs"] + x.abs().sum(dim=0)
            entry["n"] += x.shape[0]
            if sum(r.shape[0] for r in entry["rows"]) < CALIB_ROWS:
                entry["rows"].append(x[:CALIB_ROWS])
        hooks.append(model.get_submodule(name).register_forward_hook(hook))
    model.eval()
    for input_ids, _ in batches:
        model(input_ids)
    for h in hooks:
        h.remove()
    return {name: {"mean_abs": e["sum_abs"] / e["n"], "x": torch.cat(e["rows"])[:CALIB_ROWS]} for name, e in stats.items()}


def awq_quantize(model: nn.Module, calib: dict, alpha, bits: int = 4, group_size=None) -> tuple[nn.Module, dict]:
    """把 calib 里的每个线性层换成 ActivationAwareLinear（在 model 上原地换，调用者传深拷贝）。
    alpha 为数字：所有层用它；为 None：每层在 ALPHAS 里挑校准输出误差最小的。返回 (model, {层名: 用的 α})。"""
    chosen = {}
    for name, c in calib.items():
        linear = model.get_submodule(name)
        w = linear.weight.detach().float()
        if alpha is None:
            errors = [awq_output_error(w, c["x"], awq_scales(c["mean_abs"], a), bits, group_size) for a in ALPHAS]
            chosen[name] = ALPHAS[min(range(len(ALPHAS)), key=errors.__getitem__)]
        else:
            chosen[name] = alpha
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child,
                ActivationAwareLinear(linear, awq_scales(c["mean_abs"], chosen[name]), bits, group_size))
    return model, chosen


def linear_names(model: nn.Module) -> list[str]:
    """要量化的线性层（除了与词嵌入共享权重的 lm_head）。"""
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and not n.endswith("lm_head")]


def bits_per_weight(model: nn.Module, names, n_weights: int) -> float:
    """names 这些层（量化后可能已被替换）的全部状态字节 × 8 / 原权重个数：scale、inv_s 都算进去。"""
    return 8 * sum(weight_bytes(model.get_submodule(n)) for n in names) / n_weights


def expected_bits(shapes, bits: int, group_size, awq: bool = False) -> float:
    """公式：每个权重 bits 位，加上每个 fp32 scale 的 32 位摊到它那一组上；AWQ 再加每个输入通道一个 fp32 的 1/s。"""
    total = 0
    for out_f, in_f in shapes:
        n_scales = 1 if group_size == 0 else out_f * (in_f // (group_size or in_f))
        total += out_f * in_f * bits + 32 * n_scales + (32 * in_f if awq else 0)
    return total / sum(o * i for o, i in shapes)


@torch.no_grad()
def evaluate(model: nn.Module, batches, reference=None) -> tuple[list[float], list[float], list[torch.Tensor]]:
    """逐批次的验证 loss；给了 reference（fp32 模型在同样批次上的 log 概率）时，再算逐批次的 KL(p_fp32 ‖ p_量化)
    （每个位置的 KL 取平均）。返回 (losses, kls, 本模型的 log 概率)。

    为什么另算 KL：量化后的 loss 减 fp32 的 loss 有正有负（舍入误差偶尔碰巧让某些 token 的概率变高），
    同一个方案在不同种子上差值的符号会变；KL 直接量"预测分布被改了多少"，恒 ≥ 0，是更直接的损伤度量。"""
    model.eval()
    losses, kls, logprobs = [], [], []
    for i, (x, y) in enumerate(batches):
        out = model(x, labels=y)
        losses.append(out.loss.item())
        logp = F.log_softmax(out.logits.float(), dim=-1)  # (B, T, V)
        logprobs.append(logp)
        if reference is not None:
            kls.append((reference[i].exp() * (reference[i] - logp)).sum(-1).mean().item())
    return losses, kls, logprobs


def run_seed(seed: int, text: str, steps: int, device) -> dict:
    """一个种子：训练 → 校准 → 每个方案与每类层的逐批次验证 loss。"""
    Experiment.seed_everything(seed)
    tokenizer = CharTokenizer(text)
    train_ids, val_ids = train_val_split(torch.tensor(tokenizer.encode(text)))
    train_sampler = BatchSampler(train_ids, BLOCK_SIZE, BATCH_SIZE, seed)
    val_sampler = BatchSampler(val_ids, BLOCK_SIZE, EVAL_BATCH_SIZE, seed + 1)
    eval_batches = [val_sampler.sample(device) for _ in range(EVAL_BATCHES)]
    calib_sampler = BatchSampler(train_ids, BLOCK_SIZE, BATCH_SIZE, seed + 2)
    calib_batches = [calib_sampler.sample(device) for _ in range(CALIB_BATCHES)]

    def get_batch(split):
        return (train_sampler if split == "train" else val_sampler).sample(device)

    config = LabConfig(vocab_size=tokenizer.vocab_size, hidden_size=HIDDEN, num_layers=LAYERS, n_heads=HEADS,
                       max_seq_len=BLOCK_SIZE)
    model = LabModel(config).to(device)
    history = train_model(model, get_batch, steps=steps, lr=LR, eval_every=steps, eval_batches=2, device=device,
                          desc=f"train seed={seed}")
    names = linear_names(model)
    shapes = [tuple(model.get_submodule(n).weight.shape) for n in names]
    n_weights = sum(o * i for o, i in shapes)
    calib = calibrate(model, calib_batches, names)
    fp32_losses, _, reference = evaluate(model, eval_batches)
    row = {"train_loss": sum(history["train_loss"][-20:]) / len(history["train_loss"][-20:]),
           "losses": {"fp32": fp32_losses}, "kl": {"fp32": [0.0] * EVAL_BATCHES},
           "bits": {"fp32": bits_per_weight(model, names, n_weights)},
           "expected_bits": {"fp32": 32.0}, "out_err": {"fp32": 0.0}, "layers": {}, "layers_kl": {}}

    def mean_out_err(bits, group_size, alphas):  # 各层校准输出相对误差的平均（不经过整个模型，没有评估噪声）
        return sum(awq_output_error(model.get_submodule(n).weight.detach().float(), c["x"],
                                    awq_scales(c["mean_abs"], alphas[n]), bits, group_size)
                   for n, c in calib.items()) / len(calib)

    for scheme, (bits, group_size) in RTN_SCHEMES.items():
        q = quantize_model(copy.deepcopy(model), bits=bits, group_size=group_size)  # skip 默认 ("lm_head",)
        row["losses"][scheme], row["kl"][scheme], _ = evaluate(q, eval_batches, reference)
        row["bits"][scheme] = bits_per_weight(q, names, n_weights)
        row["expected_bits"][scheme] = expected_bits(shapes, bits, group_size)
        row["out_err"][scheme] = mean_out_err(bits, group_size, {n: 0.0 for n in names})  # α=0：s 全为 1
    for scheme, alpha in AWQ_SCHEMES.items():
        q, chosen = awq_quantize(copy.deepcopy(model), calib, alpha)
        row["losses"][scheme], row["kl"][scheme], _ = evaluate(q, eval_batches, reference)
        row["bits"][scheme] = bits_per_weight(q, names, n_weights)
        row["expected_bits"][scheme] = expected_bits(shapes, 4, None, awq=True)
        row["out_err"][scheme] = mean_out_err(4, None, chosen)
        if alpha is None:
            row["chosen_alpha"] = chosen
    for layer_type in LAYER_TYPES:  # 只量化这一类层（int4 per-tensor），其余保持 fp32
        others = tuple(t for t in LAYER_TYPES if t != layer_type)
        q = quantize_model(copy.deepcopy(model), bits=4, group_size=0, skip=("lm_head",) + others)
        row["layers"][layer_type], row["layers_kl"][layer_type], _ = evaluate(q, eval_batches, reference)
    # 每类层输入激活的"离群程度"：max_j mean|x_j| / median_j mean|x_j|（各层取平均），帮助解释哪类层更敏感
    row["act_outlier_ratio"] = {t: sum((c["mean_abs"].max() / c["mean_abs"].median()).item()
                                       for n, c in calib.items() if n.endswith(t)) / LAYERS for t in LAYER_TYPES}
    mean = {k: sum(v) / len(v) for k, v in row["losses"].items()}
    print(f"  [seed {seed}] train {row['train_loss']:.3f}；val fp32 {mean['fp32']:.4f}，int4 per-tensor "
          f"{mean['int4 per-tensor']:.4f}，int4 per-channel {mean['int4 per-channel']:.4f}，int4 g32 {mean['int4 group 32']:.4f}",
          flush=True)
    return row


def weakest(verdicts: dict):
    """"比其余每一个都大"由几次两两比较组成：全部成立才成立，任一次反向超出噪声就不成立，其余未确立。"""
    rank = {FAILS: 0, HOLDS: 2}
    worst = min(verdicts.values(), key=lambda v: (rank.get(v.status, 1), v.mean_delta))
    return worst, "；".join(f"vs {name}：Δ={v.mean_delta:+.4f}（{v.status}）" for name, v in verdicts.items())


def main():
    exp = Experiment(__file__, description="只量化权重：int8/int4 × per-tensor/per-channel/group 32，AWQ 式缩放，逐类层的敏感度",
                     extra_args=add_args)
    steps = exp.args.steps if exp.args.steps is not None else (200 if exp.quick else 600)
    if steps < 20:
        raise SystemExit(f"--steps 必须 >= 20（收到 {steps}）")
    if exp.device.type == "cpu":
        torch.set_num_threads(1)  # 这么小的矩阵乘，2 个线程在 2 核机器上几乎不更快，机器一忙反而慢很多（见 README 的用时说明）
    text = get_experiment_data("shakespeare")
    rows = [run_seed(seed, text, steps, exp.device) for seed in exp.seeds]

    def loss(scheme):  # 每个种子的平均验证 loss
        return [sum(r["losses"][scheme]) / EVAL_BATCHES for r in rows]

    def layer_increase(t):
        return [sum(r["layers"][t]) / EVAL_BATCHES - fp for r, fp in zip(rows, loss("fp32"))]

    def batches(scheme):  # 第一个种子的逐批次值（quick 模式单种子时的噪声）
        return rows[0]["losses"][scheme]

    def kl(scheme, key="kl"):  # 每个种子的平均 KL(p_fp32 ‖ p_量化)
        return [sum(r[key][scheme]) / EVAL_BATCHES for r in rows]

    exp.print_table(["scheme", "bits/weight (measured)", "bits/weight (formula)", "layer out rel err", "val loss", "ppl",
                     "Δloss vs fp32", "KL to fp32 (nats/token)"],
                    [[s, f"{rows[0]['bits'][s]:.3f}", f"{rows[0]['expected_bits'][s]:.3f}",
                      format_mean_std([r["out_err"][s] for r in rows], 3), format_mean_std(loss(s)),
                      format_mean_std([math.exp(v) for v in loss(s)]),
                      format_mean_std([a - b for a, b in zip(loss(s), loss("fp32"))], 3), format_mean_std(kl(s), 3)]
                     for s in SCHEMES],
                    title=f"验证集 {EVAL_BATCHES}×{EVAL_BATCH_SIZE}×{BLOCK_SIZE} 个字符（{len(exp.seeds)} 个种子，训练 {steps} 步）")
    exp.print_table(["layer type (int4 per-tensor, alone)", "Δloss vs fp32", "KL to fp32", "input act max/median"],
                    [[t, format_mean_std(layer_increase(t), 3), format_mean_std(kl(t, "layers_kl"), 3),
                      format_mean_std([r["act_outlier_ratio"][t] for r in rows], 3)] for t in LAYER_TYPES],
                    title="逐类层的敏感度：只把这一类层量化到 int4 per-tensor")
    exp.save_metrics({"config": {"steps": steps, "hidden": HIDDEN, "layers": LAYERS, "block_size": BLOCK_SIZE,
                                 "batch_size": BATCH_SIZE, "lr": LR, "eval_batches": EVAL_BATCHES,
                                 "calib_batches": CALIB_BATCHES, "alphas": list(ALPHAS),
                                 "equivalence_margin": EQUIVALENCE_MARGIN},
                      "val_loss": {s: loss(s) for s in SCHEMES}, "val_batches_seed0": {s: batches(s) for s in SCHEMES},
                      "bits_per_weight": rows[0]["bits"], "expected_bits_per_weight": rows[0]["expected_bits"],
                      "layer_out_rel_err": {s: [r["out_err"][s] for r in rows] for s in SCHEMES},
                      "kl_to_fp32": {s: kl(s) for s in SCHEMES}, "kl_batches_seed0": {s: rows[0]["kl"][s] for s in SCHEMES},
                      "layer_increase": {t: layer_increase(t) for t in LAYER_TYPES},
                      "layer_kl": {t: kl(t, "layers_kl") for t in LAYER_TYPES},
                      "layer_kl_batches_seed0": {t: rows[0]["layers_kl"][t] for t in LAYER_TYPES},
                      "layer_batches_seed0": {t: rows[0]["layers"][t] for t in LAYER_TYPES},
                      "act_outlier_ratio": {t: [r["act_outlier_ratio"][t] for r in rows] for t in LAYER_TYPES},
                      "chosen_alpha": [r["chosen_alpha"] for r in rows], "train_loss": [r["train_loss"] for r in rows]})

    # ---- 结论 ----
    mismatch = {s: (rows[0]["bits"][s], rows[0]["expected_bits"][s]) for s in SCHEMES
                if abs(rows[0]["bits"][s] - rows[0]["expected_bits"][s]) > 1e-9}
    exp.conclude("weight_bytes 量出的每权重比特数与公式一致（bits + fp32 scale 摊到每组；AWQ 另加每个输入通道的 1/s）",
                 holds=not mismatch, evidence="；".join(f"{s} {rows[0]['bits'][s]:.3f}" for s in SCHEMES)
                 + (f"；不一致：{mismatch}" if mismatch else ""))

    def versus(claim, better, worse):
        """同一个比较做两遍：验证 loss（最终关心的量）与 KL 到 fp32（直接的损伤度量）。"""
        exp.conclude_verdict(f"{claim}：验证 loss 更低", compare_runs(loss(better), loss(worse), "less", batches(better),
                                                                    batches(worse)),
                             evidence=f"{better} {format_mean_std(loss(better))} vs {worse} {format_mean_std(loss(worse))}")
        exp.conclude_verdict(f"{claim}：与 fp32 的 KL 更小", compare_runs(kl(better), kl(worse), "less",
                                                                     rows[0]["kl"][better], rows[0]["kl"][worse]),
                             evidence=f"{better} {format_mean_std(kl(better), 3)} vs {worse} {format_mean_std(kl(worse), 3)}")

    versus("int4：per-channel（每个输出通道一个 scale）好于 per-tensor", "int4 per-channel", "int4 per-tensor")
    versus("int4：group 32 好于 per-channel", "int4 group 32", "int4 per-channel")
    exp.conclude_verdict(f"int8 per-channel 与 fp32 的验证 loss 相差不超过 {EQUIVALENCE_MARGIN} nats（界在看结果之前定好）",
                         equivalent_runs(loss("int8 per-channel"), loss("fp32"), EQUIVALENCE_MARGIN,
                                         batches("int8 per-channel"), batches("fp32")),
                         evidence=f"int8 per-channel {format_mean_std(loss('int8 per-channel'))} vs "
                                  f"fp32 {format_mean_std(loss('fp32'))}")
    versus("AWQ 式缩放（α=0.5）好于同为 int4 per-channel 的普通 RTN", "int4 per-channel AWQ a=0.5", "int4 per-channel")
    versus("AWQ 式缩放（每层搜索 α）好于同为 int4 per-channel 的普通 RTN", "int4 per-channel AWQ a-search", "int4 per-channel")
    for metric, values, per_batch, unit in (("loss 增量", layer_increase, "layers", "nats"),
                                           ("KL 到 fp32", lambda t: kl(t, "layers_kl"), "layers_kl", "nats/token")):
        verdicts = {t: compare_runs(values("down_proj"), values(t), "greater",
                                    rows[0][per_batch]["down_proj"], rows[0][per_batch][t])
                    for t in LAYER_TYPES if t != "down_proj"}
        worst, lines = weakest(verdicts)
        exp.conclude_verdict(f"单独量化到 int4 per-tensor 时，down_proj 造成的{metric}大于其余每一类层（事先的假设）", worst,
                             evidence=f"down_proj {format_mean_std(values('down_proj'), 3)} {unit}；{lines}")

    set_style()
    fig, axes = plt.subplots(1, 3, figsize=(18, 4.8))
    for i, s in enumerate(SCHEMES):  # 两张图里同一个方案同一种颜色
        m, sd = mean_std([math.exp(v) for v in loss(s)])
        axes[0].errorbar(rows[0]["bits"][s], m, yerr=sd, fmt="o", capsize=3, color=f"C{i}", label=s)
        if s != "fp32":
            m, sd = mean_std(kl(s))
            axes[1].errorbar(rows[0]["bits"][s], m, yerr=sd, fmt="o", capsize=3, color=f"C{i}", label=s)
    axes[0].set_ylabel("validation perplexity (error bar: std over seeds)")
    axes[0].set_title("perplexity vs bits per weight")
    axes[1].set_yscale("log")
    axes[1].set_ylabel("KL(p_fp32 || p_quantized), nats/token")
    axes[1].set_title("damage vs bits per weight")
    for ax in axes[:2]:
        ax.set_xscale("log", base=2)
        ax.set_xlabel("bits per weight (incl. fp32 scales)")
        ax.legend(fontsize=7)
    x = range(len(LAYER_TYPES))
    for offset, (values, label) in zip((-0.2, 0.2), ((layer_increase, "val loss increase"),
                                                     (lambda t: kl(t, "layers_kl"), "KL to fp32"))):
        means = [mean_std(values(t)) for t in LAYER_TYPES]
        axes[2].bar([i + offset for i in x], [m for m, _ in means], width=0.4, yerr=[sd for _, sd in means], capsize=3,
                    label=label)
    axes[2].set_xticks(list(x), LAYER_TYPES, rotation=30)
    axes[2].set_ylabel("nats")
    axes[2].set_title("int4 per-tensor, one layer type at a time")
    axes[2].legend(fontsize=8)
    exp.save_figure(fig, "exp2_weight_quantization.png")
    exp.finish()


if __name__ == "__main__":
    main()
