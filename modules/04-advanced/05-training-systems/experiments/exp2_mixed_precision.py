"""实验 2：混合精度（Micikevicius et al., 2017）——fp32、bf16 autocast、fp16 autocast 加/不加 loss scaling。

  1. 同一个小模型、同一批数据各训练一遍，看 loss 曲线和最后的验证 loss：bf16 与"fp16 + 动态 loss scaling"
     应与 fp32 差不多（等价检验，事先定的等价界 0.05 nats）。权重始终是 float32 的"主权重"，autocast 只改计算精度。
  2. 梯度下溢：fp16 能表示的最小正数是 2⁻²⁴ ≈ 6e-8，更小的梯度会变成 0。
     a) 把这次 fp32 训练末尾的真实梯度（参数梯度 + 每个块输出的激活梯度）转成 fp16：不缩放时有多少非零值变成 0，
        乘上 GradScaler 的初始 scale 2¹⁶ 之后又有多少；bf16 与 fp32 指数位一样多，几乎不下溢。
     b) 真正用 fp16 autocast 做一次反向：同一批数据、同一组权重，不缩放 vs 缩放 2¹⁶，逐批比较"fp32 非零、fp16 为 0"的比例。
CPU 上 bf16/fp16 的矩阵乘法没有硬件加速，比 fp32 慢得多：这里只比数值，不比速度。

用法：python exp2_mixed_precision.py [--quick] [--steps N]
"""
import math
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[4]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402

from model.model_minimind import MiniMindConfig, MiniMindForCausalLM  # noqa: E402
from modules.common.datasets import get_experiment_data  # noqa: E402
from modules.common.experiment_base import Experiment, format_mean_std, mean_std  # noqa: E402
from modules.common.noise import compare, equivalent_runs  # noqa: E402
from modules.common.text_data import char_lm_batches  # noqa: E402
from modules.common.training import evaluate_batches, lr_at  # noqa: E402
from modules.common.visualization import plt, set_style  # noqa: E402

# 变体：(autocast 的 dtype，是否用 GradScaler)
VARIANTS = {
    "fp32": (torch.float32, False),
    "bf16 autocast": (torch.bfloat16, False),
    "fp16 + loss scaling": (torch.float16, True),
    "fp16 no scaling": (torch.float16, False),
}
MARGIN = 0.05  # 事先定好的等价界（nats）
INIT_SCALE = 2.0 ** 16  # GradScaler 的默认初始 scale
BATCH_SIZE, BLOCK = 8, 64
EVAL_BATCHES = 8


def add_args(parser):
    parser.add_argument("--steps", type=int, default=None, help="每个变体训练的步数（默认 quick 20、完整 100）")


def build_model(vocab_size: int, seed: int, device):
    torch.manual_seed(seed)
    config = MiniMindConfig(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, vocab_size=vocab_size)
    return MiniMindForCausalLM(config).to(device).train()


def train_variant(text, dtype, use_scaler: bool, steps: int, seed: int, device) -> dict:
    """一个变体的训练：autocast 前向，（可选）GradScaler 缩放 loss、反向、检查 inf 后再 step。"""
    tokenizer, get_batch = char_lm_batches(text, BLOCK, BATCH_SIZE, seed=seed, device=device)
    model = build_model(tokenizer.vocab_size, seed, device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1, betas=(0.9, 0.95))
    scaler = torch.amp.GradScaler(device.type, init_scale=INIT_SCALE, enabled=use_scaler)
    history = {"train_loss": [], "scale": [], "skipped_steps": 0}
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, lr=3e-3, warmup_steps=max(1, steps // 10), total_steps=steps)
        input_ids, labels = get_batch("train")
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            loss = model(input_ids, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()  # 不启用时 scale() 原样返回 loss
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scale_before = scaler.get_scale() if use_scaler else 1.0
        scaler.step(optimizer)  # 梯度里有 inf/NaN 时跳过这一步
        scaler.update()  # 跳过时 scale 减半；连续 2000 步没问题时加倍
        if use_scaler and scaler.get_scale() < scale_before:
            history["skipped_steps"] += 1
        history["train_loss"].append(loss.item())
        history["scale"].append(scale_before)
    history["val_batches"] = evaluate_batches(model, get_batch, EVAL_BATCHES, device)
    history["val_loss"] = sum(history["val_batches"]) / EVAL_BATCHES
    return history, model, get_batch


def fp32_gradients(model, input_ids, labels) -> dict:
    """一次 fp32 反向的参数梯度和每个块输出的激活梯度（扁平化）。"""
    activation_grads = []

    def keep_output_grad(_module, _inputs, output):  # 块返回 (hidden_states, present)
        output[0].register_hook(lambda g: activation_grads.append(g.detach().flatten()))

    handles = [layer.register_forward_hook(keep_output_grad) for layer in model.model.layers]
    model.zero_grad(set_to_none=True)
    model(input_ids, labels=labels).loss.backward()
    for h in handles:
        h.remove()
    return {"parameters": torch.cat([p.grad.flatten() for p in model.parameters()]),
            "activations": torch.cat(activation_grads)}


def flush_share(grad: torch.Tensor, dtype, scale: float) -> float:
    """非零的 fp32 梯度乘上 scale 后转成 dtype，变成 0 的比例。"""
    nonzero = grad[grad != 0]
    return ((nonzero * scale).to(dtype) == 0).float().mean().item()


def autocast_zero_share(model, input_ids, labels, scale: float, reference: torch.Tensor) -> float:
    """真正的 fp16 autocast 反向（loss 乘 scale 再除回来）：fp32 梯度非零、这里却是 0 的比例。"""
    model.zero_grad(set_to_none=True)
    with torch.autocast(input_ids.device.type, dtype=torch.float16):
        loss = model(input_ids, labels=labels).loss
    (loss * scale).backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters()])
    mask = reference != 0
    return (grads[mask] == 0).float().mean().item()


def log2_quantiles(grad: torch.Tensor, max_values: int = 100_000) -> list:
    """非零梯度 log2|g| 的 1%、50%、99% 分位数；值太多时等间隔取 max_values 个（torch.quantile 有长度上限）。"""
    values = grad[grad != 0].abs().log2()
    values = values[::max(1, values.numel() // max_values)]
    return torch.quantile(values, torch.tensor([0.01, 0.5, 0.99])).tolist()


def main():
    exp = Experiment(__file__, description=__doc__, extra_args=add_args)
    device = exp.device
    steps = exp.args.steps or (20 if exp.quick else 100)
    if steps < 5:
        sys.exit(f"--steps={steps} 太少：至少 5 步（warmup 之后才有 loss 曲线可看）")
    text = get_experiment_data("shakespeare")

    # ---- 1. 训练 ----
    runs = {name: [] for name in VARIANTS}
    final_models = {}
    for seed in exp.seeds:
        for name, (dtype, use_scaler) in VARIANTS.items():
            exp.seed_everything(seed)
            history, model, get_batch = train_variant(text, dtype, use_scaler, steps, seed, device)
            runs[name].append(history)
            final_models[name] = (model, get_batch)
            print(f"  seed {seed} {name}: val loss {history['val_loss']:.4f}", flush=True)
    val = {name: [h["val_loss"] for h in hs] for name, hs in runs.items()}
    exp.print_table(["variant", "val loss", "skipped steps", "final scale"],
                    [[name, format_mean_std(val[name]), sum(h["skipped_steps"] for h in hs), hs[-1]["scale"][-1]]
                     for name, hs in runs.items()], title=f"{steps} 步之后（{len(exp.seeds)} 个种子）")

    # ---- 2a. 把 fp32 训练末尾的真实梯度转成低精度 ----
    model, get_batch = final_models["fp32"]
    shares = {}
    grads = fp32_gradients(model, *get_batch("train"))
    for kind, g in grads.items():
        shares[kind] = {"fp16 scale 1": flush_share(g, torch.float16, 1.0),
                        f"fp16 scale 2^{int(math.log2(INIT_SCALE))}": flush_share(g, torch.float16, INIT_SCALE),
                        "bf16 scale 1": flush_share(g, torch.bfloat16, 1.0)}
    exp.print_table(["gradients", *shares["parameters"]],
                    [[kind, *s.values()] for kind, s in shares.items()],
                    title="fp32 训练末尾的梯度转成低精度后变成 0 的比例")

    # ---- 2b. 真正的 fp16 反向：逐批配对 ----
    unscaled, scaled = [], []
    for _ in range(4):
        input_ids, labels = get_batch("train")
        reference = fp32_gradients(model, input_ids, labels)["parameters"]
        unscaled.append(autocast_zero_share(model, input_ids, labels, 1.0, reference))
        scaled.append(autocast_zero_share(model, input_ids, labels, INIT_SCALE, reference))
    exp.print_table(["batch", "zero share, no scaling", f"zero share, scale 2^{int(math.log2(INIT_SCALE))}"],
                    [[i, u, s] for i, (u, s) in enumerate(zip(unscaled, scaled))],
                    title="fp16 autocast 反向：fp32 非零、fp16 为 0 的参数梯度比例")

    exp.save_metrics({"steps": steps, "batch_size": BATCH_SIZE, "block": BLOCK, "margin": MARGIN,
                      "val_loss": val, "runs": runs, "flush_share": shares,
                      "autocast_zero_share": {"no scaling": unscaled, "scaled": scaled},
                      "grad_log2_quantiles": {kind: log2_quantiles(g) for kind, g in grads.items()}})

    # ---- 图 ----
    set_style()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for name, hs in runs.items():
        mean_curve = [mean_std(vals)[0] for vals in zip(*(h["train_loss"] for h in hs))]
        axes[0].plot(mean_curve, label=f"{name} (val {mean_std(val[name])[0]:.3f})")
    axes[0].set_xlabel("step")
    axes[0].set_ylabel("train loss")
    axes[0].set_title("Same run, four precisions")
    axes[0].legend(fontsize=8)
    for kind, g in grads.items():
        axes[1].hist(g[g != 0].abs().log2().clamp(min=-60).cpu().numpy(), bins=80, alpha=0.6, label=f"{kind} grads")
    axes[1].axvline(-24, color="red", linestyle="--", label="fp16 min subnormal 2^-24")
    axes[1].axvline(-24 - math.log2(INIT_SCALE), color="green", linestyle=":", label="2^-24 / scale 2^16")
    axes[1].set_xlabel("log2 |gradient|")
    axes[1].set_ylabel("count")
    axes[1].set_title("fp32 gradients at the end of training")
    axes[1].legend(fontsize=7)
    exp.save_figure(fig, "exp2_mixed_precision.png")

    # ---- 结论 ----
    ref = val["fp32"]
    ref_batches = runs["fp32"][0]["val_batches"]
    for name in ("bf16 autocast", "fp16 + loss scaling"):
        verdict = equivalent_runs(val[name], ref, MARGIN, a_batches=runs[name][0]["val_batches"], b_batches=ref_batches)
        exp.conclude_verdict(f"{name} 的验证 loss 与 fp32 相差不到 {MARGIN} nats", verdict,
                             evidence=f"{format_mean_std(val[name])} vs fp32 {format_mean_std(ref)}")
    act = shares["activations"]
    exp.conclude("fp32 训练末尾的激活梯度转成 fp16 时有一部分下溢成 0，乘 2^16 后下溢的更少",
                 act["fp16 scale 1"] > act["fp16 scale 2^16"],
                 evidence=f"不缩放 {act['fp16 scale 1']:.3%}，缩放 2^16 {act['fp16 scale 2^16']:.3%}")
    exp.conclude("bf16 的指数范围与 fp32 相同：同一批梯度转成 bf16 几乎不下溢（比 fp16 少）",
                 all(s["bf16 scale 1"] < s["fp16 scale 1"] for s in shares.values()),
                 evidence="，".join(f"{kind} bf16 {s['bf16 scale 1']:.3%} vs fp16 {s['fp16 scale 1']:.3%}"
                                   for kind, s in shares.items()))
    exp.conclude_verdict("真正的 fp16 反向里，不做 loss scaling 时变成 0 的参数梯度比缩放 2^16 时多",
                         compare(unscaled, scaled, "greater", unit="batches"),
                         evidence=f"平均 {format_mean_std(unscaled)} vs {format_mean_std(scaled)}（同一批数据、同一组权重）")
    exp.finish()


if __name__ == "__main__":
    main()
