"""实验 3：为什么要多个头？MHA、GQA、MQA 怎么取舍？

在 TinyShakespeare 字符级语言模型上（hidden 128、2 层，同样的训练预算）：
1. 单头 vs 4 个头：总维度相同，所以参数量相同，区别只是 softmax 被分成了几份独立的分布；
2. 4 个 query 头配 4 / 2 / 1 个 KV 头（MHA / GQA / MQA）：验证 loss 与每个 token 的 KV cache 字节数；
3. 训练好的 4 头模型：每个头的注意力热力图、平均注意距离与熵——不同的头是否分了工。
同一种子下四个配置读同一串训练 batch、同一批验证 batch，所以验证 loss 可以按种子（完整模式）或按验证 batch
（quick 模式只有一个种子）配对，过共享的噪声检验（modules/common/noise.py）。
"""
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[4]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import math  # noqa: E402

import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from modules.common.datasets import get_experiment_data  # noqa: E402
from modules.common.experiment_base import Experiment, format_mean_std, mean_std  # noqa: E402
from modules.common.lab_model import LabConfig, LabModel, record_attention  # noqa: E402
from modules.common.noise import compare_runs, noninferior_runs  # noqa: E402
from modules.common.text_data import char_lm_batches  # noqa: E402
from modules.common.training import train_model  # noqa: E402
from modules.common.visualization import plot_attention_heatmap, set_style  # noqa: E402

BLOCK, BATCH, HIDDEN, LAYERS = 64, 12, 128, 2
BYTES_PER_VALUE = 4  # float32；fp16/bf16 推理时减半
PROBE_BATCHES = 16  # 测"头是否分工"用的验证 batch 数：前一半选头，后一半检验
NONINFERIORITY_MARGIN = 0.05  # "比 MHA 差不到多少"的界（nats），在看结果之前定好；比 MHA 好不违背声明


def kv_cache_bytes_per_token(n_kv_heads: int, head_dim: int, layers: int) -> int:
    """每生成一个 token，缓存里新增的字节数：K 和 V 各 n_kv_heads × head_dim 个数，每层一份。"""
    return 2 * layers * n_kv_heads * head_dim * BYTES_PER_VALUE


def head_statistics(weights: torch.Tensor):
    """weights: (B, nh, T, T) → 每个头的平均注意距离 Σ w_ij (i-j) 与平均熵。"""
    T = weights.shape[-1]
    distance = (torch.arange(T)[:, None] - torch.arange(T)[None, :]).clamp(min=0).float()  # (T, T)
    mean_dist = (weights * distance).sum(-1).mean(dim=(0, 2))  # (nh,)
    entropy = -(weights * weights.clamp_min(1e-12).log()).sum(-1).mean(dim=(0, 2))  # (nh,)
    return mean_dist.tolist(), entropy.tolist()


@torch.no_grad()
def head_distance_spread(model, probes: list[torch.Tensor]) -> list[float]:
    """各头"平均注意距离"的分化程度，选头与检验用不同的数据（否则噪声也会被挑成"分化"）：
    在前一半 probe batch 上找出（所有层里）平均注意距离最大和最小的两个头，
    在后一半的每个 batch 上算 log(d_最大头 / d_最小头)，返回这些逐 batch 的值。
    头完全没有分工时，这个值在 0 附近。"""
    model.eval()
    per_batch = []  # 每个 batch 一行：所有层所有头的平均注意距离
    for x in probes:
        with record_attention(model) as attn:
            model(x)
        per_batch.append([d for w in attn.values() for d in head_statistics(w.cpu())[0]])
    dist = torch.tensor(per_batch)  # (n_batches, layers × nh)
    half = len(probes) // 2
    select = dist[:half].mean(0)  # (layers × nh,)
    far, near = select.argmax().item(), select.argmin().item()
    return (dist[half:, far] / dist[half:, near]).log().tolist()


def main():
    exp = Experiment(__file__, description=(
        "注意力实验 3：单头 vs 多头（同参数量）在字符级语言模型上的差别；\n"
        "MHA / GQA / MQA 的验证 loss 与 KV cache 大小；多头模型里每个头学到了什么。"))
    device = exp.device
    lm_steps = 300 if exp.quick else 600
    text = get_experiment_data("shakespeare")

    # 配置名 → (query 头数, KV 头数)；"4 heads (MHA)" 同时用于第 1、2 部分
    lm_variants = {"1 head": (1, 1), "4 heads (MHA)": (4, 4), "4 heads, 2 KV (GQA)": (4, 2), "4 heads, 1 KV (MQA)": (4, 1)}
    lm_runs = {name: [] for name in lm_variants}
    trained_mha = None
    spread = {"trained": [], "init": []}  # 每个种子的 4 头模型：后一半 probe batch 上逐 batch 的 log(max/min 距离)
    for seed in exp.seeds:
        _, probe_batch = char_lm_batches(text, BLOCK, BATCH, seed=seed + 1000, device=device)
        probes = [probe_batch("val")[0] for _ in range(PROBE_BATCHES)]  # 测头分工的固定数据，不影响训练/验证取批
        for name, (nh, nkv) in lm_variants.items():
            # 每个配置新建取批器：同一种子下各配置的训练 batch、验证 batch 完全相同，验证 loss 可按 batch 配对
            tokenizer, get_batch = char_lm_batches(text, BLOCK, BATCH, seed=seed, device=device)
            Experiment.seed_everything(seed)
            model = LabModel(LabConfig(vocab_size=tokenizer.vocab_size, hidden_size=HIDDEN, num_layers=LAYERS,
                                       n_heads=nh, n_kv_heads=nkv, max_seq_len=BLOCK)).to(device)
            hist = train_model(model, get_batch, steps=lm_steps, lr=2e-3, warmup_steps=lm_steps // 10,
                               eval_every=max(lm_steps // 4, 1), eval_batches=8, device=device, progress=False,
                               desc=name)
            lm_runs[name].append({"val_loss": hist["val_loss"][-1], "val_batches": hist["final_val_batches"],
                                  "params": model.num_params(),
                                  "kv_bytes": kv_cache_bytes_per_token(nkv, HIDDEN // nh, LAYERS)})
            print(f"  seed {seed} | {name:22s} val {hist['val_loss'][-1]:.3f}", flush=True)
            if name == "4 heads (MHA)":
                spread["trained"].append(head_distance_spread(model, probes))
                Experiment.seed_everything(seed)  # 同一个模型在训练之前（同一个初始化），用同样的方法量
                spread["init"].append(head_distance_spread(LabModel(model.config).to(device), probes))
                if seed == exp.seed:
                    trained_mha = model

    # ---- 表 ----
    rows = []
    for name, rs in lm_runs.items():
        rows.append([name, rs[0]["params"], rs[0]["kv_bytes"], format_mean_std([r["val_loss"] for r in rs])])
    exp.print_table(["variant", "params", "KV cache bytes/token", "val loss"], rows,
                    title=f"Char-level LM, hidden {HIDDEN}, {LAYERS} layers, {lm_steps} steps (float32 cache)")

    # ---- 每个头在看哪里：训练后 vs 同结构的初始化模型 ----
    x, _ = char_lm_batches(text, BLOCK, 8, seed=exp.seed + 1, device=device)[1]("val")

    def heads_of(model):
        model.eval()
        with torch.no_grad(), record_attention(model) as attn:
            model(x)
        return attn, {layer: dict(zip(("mean_distance", "entropy"), head_statistics(w.cpu())))
                      for layer, w in attn.items()}

    attn, head_stats = heads_of(trained_mha)
    Experiment.seed_everything(exp.seed)
    _, init_stats = heads_of(LabModel(trained_mha.config).to(device))
    exp.print_table(["layer", "head", "mean attention distance", "entropy"],
                    [[layer, h, s["mean_distance"][h], s["entropy"][h]] for layer, s in head_stats.items()
                     for h in range(len(s["mean_distance"]))], title="What each head of the trained 4-head model does")

    set_style()
    n_layers = len(attn)
    fig, axes = plt.subplots(n_layers, 4, figsize=(16, 4 * n_layers), layout="constrained", squeeze=False)
    chars = [repr(c)[1:-1] for c in tokenizer.decode(x[0, :24].tolist())]
    for li, (layer, w) in enumerate(attn.items()):
        for h in range(4):
            plot_attention_heatmap(w[0, h, :24, :24].cpu(), chars, chars,
                                   title=f"{layer} head {h}: dist {head_stats[layer]['mean_distance'][h]:.1f}",
                                   ax=axes[li][h])
    exp.save_figure(fig, "exp3_head_heatmaps.png")

    fig, ax = plt.subplots(figsize=(7, 4.5), layout="constrained")
    for name, rs in lm_runs.items():
        m, s = mean_std([r["val_loss"] for r in rs])
        ax.errorbar(rs[0]["kv_bytes"], m, yerr=s, fmt="o", capsize=4, label=name)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("KV cache bytes per token (float32)")
    ax.set_ylabel("val loss")
    ax.set_title("Quality vs KV cache size (1 head has the same cache as MHA)")
    ax.legend(fontsize=8)
    exp.save_figure(fig, "exp3_heads_and_kv.png")

    exp.save_metrics({"lm_steps": lm_steps, "lm": lm_runs, "head_stats": head_stats, "head_stats_at_init": init_stats,
                      "head_distance_log_spread": spread})

    # ---- 结论（比较都过噪声检验：多种子按种子配对，单种子按同一批验证 batch 配对）----
    loss = {name: mean_std([r["val_loss"] for r in rs]) for name, rs in lm_runs.items()}
    seeds_of = {name: [r["val_loss"] for r in rs] for name, rs in lm_runs.items()}
    batches_of = {name: rs[0]["val_batches"] for name, rs in lm_runs.items()}  # 第一个种子的逐 batch 验证 loss
    mha = "4 heads (MHA)"
    exp.conclude_verdict("字符级语言模型：4 个头的验证 loss 低于 1 个头",
                         compare_runs(seeds_of[mha], seeds_of["1 head"], "less", batches_of[mha], batches_of["1 head"]),
                         f"val loss 1 头 {loss['1 head'][0]:.3f}，4 头 {loss[mha][0]:.3f}")
    for name, share in (("4 heads, 2 KV (GQA)", "一半"), ("4 heads, 1 KV (MQA)", "四分之一")):
        short = name.split("(")[1].rstrip(")")
        exp.conclude_verdict(f"{short} 用{share}的 KV cache，验证 loss 比 MHA 高不到 {NONINFERIORITY_MARGIN}",
                             noninferior_runs(seeds_of[name], seeds_of[mha], NONINFERIORITY_MARGIN,
                                              a_batches=batches_of[name], b_batches=batches_of[mha]),
                             f"{short} − MHA = {loss[name][0] - loss[mha][0]:+.3f}")

    def per_seed(values):  # 每个种子：后一半 probe batch 上 log(max/min) 的均值
        return [sum(v) / len(v) for v in values]

    trained, init = per_seed(spread["trained"]), per_seed(spread["init"])
    exp.conclude_verdict("训练让头分了工：各头平均注意距离的 max/min（前一半数据选头、后一半数据测）比同一模型初始化时大",
                         compare_runs(trained, init, "greater", spread["trained"][0], spread["init"][0]),
                         "max/min（后一半数据，各种子）：训练后 " + "，".join(f"{math.exp(v):.2f}" for v in trained)
                         + "；初始化 " + "，".join(f"{math.exp(v):.3f}" for v in init)
                         + "；训练后各头（热力图那批数据）：" + "，".join(f"{d:.1f}" for s in head_stats.values()
                                                                  for d in s["mean_distance"]))
    exp.finish()


if __name__ == "__main__":
    main()
