"""实验 3：MoE 路由——相同激活参数下 MoE 比稠密好吗？共享专家与负载均衡损失各起什么作用？

直接用 model/ 的 MiniMindForCausalLM（use_moe=True），小尺寸、字符级 TinyShakespeare。所有变体每个 token
激活的 FFN 参数相同（中间层合计 I）：
  dense                    稠密 SwiGLU，中间层 I
  moe3 top1 +aux           minimind-3 的配方：4 个路由专家（各 I）、无共享、top-1、批级 aux loss（系数 5e-4）
  moe3 top1 no-aux         同上但 aux 系数 0：top-1 归一化后路由权重恒为 1，路由器拿不到任何梯度
  moe3 shared+top1 +aux    1 个共享专家（I/2）+ 4 个路由专家（各 I/2）、top-1
  moe2-gate top1 no-aux    MiniMind2 的门（top-1 时不归一化，权重 = softmax 概率，路由器从 LM loss 学习），无 aux
  moe2-gate top1 +aux      同上 + MiniMind2 的序列级 aux loss（α = 0.1）
记录：验证 loss、每层每个专家分到的 token 比例（验证集上）、"死"专家（比例 < 公平份额的 1/4）、
训练过程中负载最重的专家份额，以及总参数 / 每 token 激活参数。另用 meta 设备算出真实尺寸的参数量。
"""
import sys
from contextlib import contextmanager
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[4]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from model.model_minimind import MiniMindConfig, MiniMindForCausalLM, MOEFeedForward  # noqa: E402
from modules.common.datasets import get_experiment_data  # noqa: E402
from modules.common.experiment_base import Experiment, format_mean_std, mean_std  # noqa: E402
from modules.common.text_data import char_lm_batches  # noqa: E402
from modules.common.training import train_model  # noqa: E402
from modules.common.visualization import set_style  # noqa: E402

N_EXPERTS = 4
# 名字 → (family, use_moe, n_shared_experts, aux 系数, 路由专家中间层 / I)
VARIANTS = {
    "dense": ("minimind3", False, 0, 0.0, 1.0),
    "moe3 top1 +aux": ("minimind3", True, 0, 5e-4, 1.0),
    "moe3 top1 no-aux": ("minimind3", True, 0, 0.0, 1.0),
    "moe3 shared+top1 +aux": ("minimind3", True, 1, 5e-4, 0.5),
    "moe2-gate top1 no-aux": ("minimind2", True, 0, 0.0, 1.0),
    "moe2-gate top1 +aux": ("minimind2", True, 0, 0.1, 1.0),
}
# 真实尺寸（只算参数量，在 meta 设备上构建，不分配内存）
REAL_SIZES = {
    "MiniMind2-Small 26M": dict(family="minimind2"),
    "MiniMind2 104M": dict(family="minimind2", hidden_size=768, num_hidden_layers=16),
    "MiniMind2-MoE 145M": dict(family="minimind2", hidden_size=640, use_moe=True),
    "minimind-3 64M": dict(family="minimind3"),
    "minimind-3-MoE 198M-A64M": dict(family="minimind3", use_moe=True),
}


def add_args(parser):
    parser.add_argument("--steps", type=int, default=None, help="每个变体的训练步数（默认 quick 150 / full 300）")
    parser.add_argument("--ffn-size", type=int, default=256, help="每个 token 激活的 FFN 中间层合计 I（默认 256）")


def build_config(variant: str, vocab_size: int, ffn_size: int) -> MiniMindConfig:
    family, use_moe, n_shared, aux, ratio = VARIANTS[variant]
    expert_size = int(ffn_size * ratio)
    return MiniMindConfig(family=family, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                          num_key_value_heads=2, vocab_size=vocab_size, max_position_embeddings=64,
                          intermediate_size=ffn_size - expert_size if n_shared else ffn_size,  # 共享专家用它
                          use_moe=use_moe, num_experts=N_EXPERTS, num_experts_per_tok=1,
                          moe_intermediate_size=expert_size, n_shared_experts=n_shared,
                          aux_loss_alpha=aux, seq_aux=family == "minimind2")


def count_params(model: MiniMindForCausalLM) -> dict:
    """总参数与每个 token 实际用到的参数（未被选中的路由专家不算）。"""
    total = sum(p.numel() for p in model.parameters())
    idle = 0
    for layer in model.model.layers:
        if isinstance(layer.mlp, MOEFeedForward):
            per_expert = sum(p.numel() for p in layer.mlp.experts[0].parameters())
            idle += (len(layer.mlp.experts) - model.config.num_experts_per_tok) * per_expert
    return {"total": total, "active": total - idle}


@contextmanager
def record_routing(model: MiniMindForCausalLM):
    """记下每层路由器每次前向选中的专家：{"train": {层: [每步各专家份额]}, "eval": {层: 各专家累计次数}}。"""
    log = {"train": {}, "eval": {}}
    handles = []
    for i, layer in enumerate(model.model.layers):
        if not isinstance(layer.mlp, MOEFeedForward):
            continue

        def hook(gate, inputs, outputs, layer_id=i):
            counts = torch.bincount(outputs[0].reshape(-1), minlength=gate.n_routed_experts).float().cpu()  # (E,)
            if gate.training:
                log["train"].setdefault(layer_id, []).append((counts / counts.sum()).tolist())
            else:
                log["eval"][layer_id] = log["eval"].get(layer_id, torch.zeros_like(counts)) + counts
        handles.append(layer.mlp.gate.register_forward_hook(hook))
    try:
        yield log
    finally:
        for h in handles:
            h.remove()


def load_stats(share: np.ndarray) -> dict:
    """share: (E,) 各专家的 token 份额。归一化熵 1 = 完全均衡，0 = 全部挤到一个专家。"""
    E = len(share)
    p = share[share > 0]
    return {"max_share": float(share.max()), "norm_entropy": float(-(p * np.log(p)).sum() / np.log(E)),
            "dead": int((share < 1 / (4 * E)).sum())}


def main():
    exp = Experiment(__file__, extra_args=add_args, description=(
        "minimind2→3 实验 3：相同激活参数下的稠密 vs MoE，有无共享专家、有无负载均衡 aux loss、两代的门；\n"
        "比较验证 loss、专家负载分布与死专家，并给出真实尺寸的总参数 / 激活参数。"))
    steps = exp.args.steps if exp.args.steps is not None else (150 if exp.quick else 300)
    ffn_size = exp.args.ffn_size
    if steps < 1 or ffn_size < 2 or ffn_size % 2:
        raise SystemExit(f"--steps 至少为 1，--ffn-size 必须是 >= 2 的偶数（收到 {steps}、{ffn_size}）")
    text = get_experiment_data("shakespeare")
    set_style()

    # ---- 真实尺寸的参数量（meta 设备：只有形状，不占内存）----
    real = {}
    for name, kwargs in REAL_SIZES.items():
        with torch.device("meta"):
            real[name] = count_params(MiniMindForCausalLM(MiniMindConfig(**kwargs)))
    exp.print_table(["model", "total params (M)", "active per token (M)"],
                    [[n, f"{c['total'] / 1e6:.2f}", f"{c['active'] / 1e6:.2f}"] for n, c in real.items()],
                    title="Real model sizes (computed on the meta device)")

    results = {v: [] for v in VARIANTS}
    params = {}
    for variant in VARIANTS:
        for seed in exp.seeds:
            Experiment.seed_everything(seed)
            tokenizer, get_batch = char_lm_batches(text, 64, batch_size=12, seed=seed, device=exp.device)
            model = MiniMindForCausalLM(build_config(variant, tokenizer.vocab_size, ffn_size)).to(exp.device)
            params[variant] = count_params(model)
            with record_routing(model) as log:
                hist = train_model(model, get_batch, steps=steps, lr=3e-3, eval_every=steps, eval_batches=8,
                                   device=exp.device, desc=f"{variant} seed={seed}")
            run = {"val_loss": hist["val_loss"][-1], "aux_loss_last": hist["aux_loss"][-1] if hist["aux_loss"] else 0.0}
            if log["eval"]:
                shares = {layer: (c / c.sum()).numpy() for layer, c in log["eval"].items()}
                run["share"] = {layer: s.tolist() for layer, s in shares.items()}
                run["layer_stats"] = {layer: load_stats(s) for layer, s in shares.items()}
                run["max_share"] = max(st["max_share"] for st in run["layer_stats"].values())
                run["norm_entropy"] = float(np.mean([st["norm_entropy"] for st in run["layer_stats"].values()]))
                run["dead"] = sum(st["dead"] for st in run["layer_stats"].values())
                run["train_max_share"] = np.max(np.array([log["train"][layer] for layer in log["train"]]), axis=-1
                                                ).max(axis=0).tolist()  # 每步：所有层里最重专家的份额
            results[variant].append(run)

    def m(variant, key):
        return mean_std([r[key] for r in results[variant]])[0]

    moe_variants = [v for v in VARIANTS if VARIANTS[v][1]]
    rows = []
    for v in VARIANTS:
        moe = v in moe_variants
        rows.append([v, f"{params[v]['total'] / 1e3:.1f}k", f"{params[v]['active'] / 1e3:.1f}k",
                     format_mean_std([r["val_loss"] for r in results[v]], 4),
                     format_mean_std([r["max_share"] for r in results[v]], 3) if moe else "-",
                     format_mean_std([r["norm_entropy"] for r in results[v]], 3) if moe else "-",
                     format_mean_std([r["dead"] for r in results[v]], 2) if moe else "-"])
    exp.print_table(["variant", "total params", "active params", "val loss", "max expert share", "load entropy",
                     f"dead experts ({2 * N_EXPERTS} total)"], rows,
                    title=f"Dense vs MoE at equal active FFN size I={ffn_size}, {steps} steps")

    # ---- 图 1：各专家的负载份额（第一个种子，两层并排）；图 2：训练中最重专家份额 ----
    fig, axes = plt.subplots(1, len(moe_variants), figsize=(2.6 * len(moe_variants), 3.6), sharey=True)
    for ax, v in zip(axes, moe_variants):
        share = np.array([results[v][0]["share"][layer] for layer in sorted(results[v][0]["share"])])  # (L, E)
        width = 0.8 / len(share)
        for layer, s in enumerate(share):
            ax.bar(np.arange(N_EXPERTS) + (layer - (len(share) - 1) / 2) * width, s, width=width, label=f"layer {layer}")
        ax.axhline(1 / N_EXPERTS, color="gray", ls="--", lw=1)
        ax.set_title(v, fontsize=8)
        ax.set_xticks(range(N_EXPERTS))
        ax.set_xlabel("expert")
    axes[0].set_ylabel("fraction of val tokens")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"Expert load on validation tokens (seed {exp.seeds[0]}; dashed = uniform)")
    exp.save_figure(fig, "exp3_expert_load.png")

    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for v in moe_variants:
        curve = np.mean(np.array([r["train_max_share"] for r in results[v]]), axis=0)
        smooth = np.convolve(curve, np.ones(10) / 10, mode="valid")
        axes[0].plot(np.arange(len(smooth)) + 10, smooth, label=v)
    axes[0].axhline(1 / N_EXPERTS, color="gray", ls="--", lw=1, label="uniform")
    axes[0].set_xlabel("step")
    axes[0].set_ylabel("max expert share (10-step avg)")
    axes[0].set_title("Load imbalance during training")
    axes[0].legend(fontsize=7)
    names = list(VARIANTS)
    means = [m(v, "val_loss") for v in names]
    bars = axes[1].bar(range(len(names)), means, yerr=[mean_std([r["val_loss"] for r in results[v]])[1] for v in names],
                       capsize=3)
    axes[1].bar_label(bars, fmt="%.3f", fontsize=7)
    axes[1].set_ylim(min(means) - 0.05, max(means) + 0.05)
    axes[1].set_xticks(range(len(names)), [n.replace(" ", "\n") for n in names], fontsize=7)
    axes[1].set_ylabel("val loss")
    axes[1].set_title("Validation loss at equal active parameters")
    exp.save_figure(fig, "exp3_moe_loss_and_balance.png")

    summary = {v: {"val_loss": m(v, "val_loss"), **({k: m(v, k) for k in ("max_share", "norm_entropy", "dead")}
                                                    if v in moe_variants else {})} for v in VARIANTS}
    exp.save_metrics({"steps": steps, "ffn_size": ffn_size, "n_experts": N_EXPERTS, "dead_threshold": 1 / (4 * N_EXPERTS),
                      "model": {"hidden_size": 64, "num_layers": 2, "n_heads": 4, "n_kv_heads": 2},
                      "variants": {v: {"family": f, "use_moe": u, "n_shared_experts": s, "aux_coef": a,
                                       "expert_intermediate_size": int(ffn_size * r)}
                                   for v, (f, u, s, a, r) in VARIANTS.items()},
                      "params": params, "real_sizes": real, "runs": results, "summary": summary})

    # ---- 结论（全部由上面的测量算出）----
    exp.conclude("相同激活参数下，minimind-3 配方的 MoE（top-1 +aux）验证 loss 低于稠密",
                 m("moe3 top1 +aux", "val_loss") < m("dense", "val_loss"),
                 f"{m('moe3 top1 +aux', 'val_loss'):.4f} vs {m('dense', 'val_loss'):.4f}；总参数 "
                 f"{params['moe3 top1 +aux']['total']} vs {params['dense']['total']}，激活参数 "
                 f"{params['moe3 top1 +aux']['active']} vs {params['dense']['active']}")
    for gate, on, off in (("minimind-3 的门", "moe3 top1 +aux", "moe3 top1 no-aux"),
                          ("MiniMind2 的门", "moe2-gate top1 +aux", "moe2-gate top1 no-aux")):
        exp.conclude(f"{gate}：去掉 aux loss 后负载更不均衡（归一化熵更低）",
                     m(off, "norm_entropy") < m(on, "norm_entropy"),
                     f"熵 {m(off, 'norm_entropy'):.3f}（无 aux）vs {m(on, 'norm_entropy'):.3f}（有 aux）；最重专家份额 "
                     f"{m(off, 'max_share'):.3f} vs {m(on, 'max_share'):.3f}；死专家 {m(off, 'dead'):.1f} vs {m(on, 'dead'):.1f}")
    exp.conclude("加了 aux loss 的变体都没有死专家",
                 all(m(v, "dead") == 0 for v in moe_variants if VARIANTS[v][3] > 0),
                 "，".join(f"{v} {m(v, 'dead'):.1f}" for v in moe_variants if VARIANTS[v][3] > 0))
    exp.conclude("共享专家 + 更窄的路由专家（同激活参数）不差于 4 个宽路由专家",
                 m("moe3 shared+top1 +aux", "val_loss") <= m("moe3 top1 +aux", "val_loss"),
                 f"{m('moe3 shared+top1 +aux', 'val_loss'):.4f} vs {m('moe3 top1 +aux', 'val_loss'):.4f}")
    exp.finish()


if __name__ == "__main__":
    main()
