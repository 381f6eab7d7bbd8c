"""实验 2：残差流（residual stream）——所有块共用的一条"总线"。

Pre-Norm 的块只做两件事：读 norm(x)，把注意力输出 a 和 FFN 输出 f 加回 x。于是
    x_L = embed + Σ_l (a_l + f_l)
主干上的向量是所有块写入量的累加和。本实验量三件事：
  1. 主干解剖：未训练 vs 简短训练后，每个块之后主干的 RMS，以及每个块写了多少
     （‖a‖/‖x‖ 与 ‖f‖/‖x + a‖，用 forward hook 挂在 layer.self_attn 与 layer.mlp 上测）；
  2. 初始化时主干随深度的增长：4/8/16/32 层，默认初始化（std 0.02，MiniMind）vs
     scaled_init（写回主干的 o_proj/down_proj 用 0.02/√(2L)，GPT-2）；
  3. 两种初始化在相同步数下的验证 loss。GPT-2（Radford et al. 2019）为几十层的模型引入 scaled_init；
     8 层时它带来的好处是否超过 0.05 nats，用"不差于"检验（noise.noninferior）：默认初始化的 loss 至多比 scaled_init 高
     SCALED_INIT_MARGIN（界在看结果之前定好），按种子配对。quick 模式不判定这一条：120 步时模型还在离开字符频率平台的
     途中，两次单独训练的 loss 差随种子在 −0.02～+0.12 之间变（种子 42 / 1 / 7），这是训练轨迹的噪声，
     同一批验证 batch 的批次噪声量不到它；quick 只打印这个差。
"""
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[4]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from modules.common.datasets import get_experiment_data  # noqa: E402
from modules.common.experiment_base import Experiment, format_mean_std, mean_std  # noqa: E402
from modules.common.lab_model import LabConfig, LabModel  # noqa: E402
from modules.common.noise import noninferior  # noqa: E402
from modules.common.text_data import char_lm_batches  # noqa: E402
from modules.common.training import train_model  # noqa: E402
from modules.common.visualization import set_style  # noqa: E402

HIDDEN, LAYERS, HEADS, BLOCK, BATCH, LR = 64, 8, 4, 64, 12, 3e-3
INIT_DEPTHS = (4, 8, 16, 32)
INITS = {"default init": False, "scaled init": True}  # 名字 → LabConfig.scaled_init
SCALED_INIT_MARGIN = 0.05  # "scaled_init 没有明显优势"：默认初始化的验证 loss 至多高这么多（nats）


def add_args(parser):
    parser.add_argument("--steps", type=int, default=None, help="每个模型的训练步数（默认 quick 120 / full 300）")


def build(vocab_size: int, num_layers: int, scaled_init: bool) -> LabModel:
    return LabModel(LabConfig(vocab_size=vocab_size, hidden_size=HIDDEN, num_layers=num_layers, n_heads=HEADS,
                              max_seq_len=BLOCK, scaled_init=scaled_init))


def rms(t: torch.Tensor) -> float:
    return t.detach().float().pow(2).mean().sqrt().item()


@torch.no_grad()
def stream_anatomy(model: LabModel, input_ids: torch.Tensor) -> dict:
    """一次前向，用 hook 量主干与每条支路：
    stream_rms[0] 是嵌入（第 0 块的输入），stream_rms[l+1] 是第 l 块之后的主干；
    attn_write[l] = rms(a_l) / rms(x_l)，ffn_write[l] = rms(f_l) / rms(x_l + a_l)：这一块往主干里写了"多大一笔"。"""
    block_in, attn_out, ffn_out, block_out = {}, {}, {}, {}
    handles = []
    for i, layer in enumerate(model.model.layers):
        handles.append(layer.register_forward_pre_hook(lambda m, args, i=i: block_in.__setitem__(i, args[0])))
        handles.append(layer.self_attn.register_forward_hook(lambda m, args, out, i=i: attn_out.__setitem__(i, out)))
        handles.append(layer.mlp.register_forward_hook(lambda m, args, out, i=i: ffn_out.__setitem__(i, out)))
        handles.append(layer.register_forward_hook(lambda m, args, out, i=i: block_out.__setitem__(i, out)))
    was_training = model.training
    model.eval()
    try:
        model(input_ids)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    n = len(model.model.layers)
    return {
        "stream_rms": [rms(block_in[0])] + [rms(block_out[i]) for i in range(n)],
        "attn_write": [rms(attn_out[i]) / rms(block_in[i]) for i in range(n)],
        "ffn_write": [rms(ffn_out[i]) / rms(block_in[i] + attn_out[i]) for i in range(n)],
    }


def average(dicts: list[dict]) -> dict:
    """多个种子的 stream_anatomy 逐项取均值。"""
    return {k: [sum(d[k][i] for d in dicts) / len(dicts) for i in range(len(dicts[0][k]))] for k in dicts[0]}


def main():
    exp = Experiment(__file__, extra_args=add_args, description=(
        "残差实验 2：残差流是所有块共用的总线。量每个块之后主干的 RMS 与每条支路写入的大小（训练前后），\n"
        "以及默认初始化 vs GPT-2 的 scaled_init（o_proj/down_proj 的 std 除以 √(2L)）下主干随深度的增长和训练 loss。"))
    steps = exp.args.steps or (120 if exp.quick else 300)
    if steps < 10:
        raise SystemExit(f"--steps 至少为 10（收到 {steps}）：步数太少看不出训练效果")
    text = get_experiment_data("shakespeare")

    anatomy = {"untrained": [], "trained": []}  # 默认初始化模型训练前/后，每个种子一份
    growth = {name: {d: [] for d in INIT_DEPTHS} for name in INITS}  # rms(x_L) / rms(embed)，初始化时
    runs = {name: {"val_loss": [], "curves": []} for name in INITS}
    for seed in exp.seeds:
        tokenizer, get_batch = char_lm_batches(text, BLOCK, BATCH, seed=seed, device=exp.device)
        _, probe_batches = char_lm_batches(text, BLOCK, BATCH, seed=seed + 1000, device=exp.device)
        probe, _ = probe_batches("val")  # 固定的一批，专门做测量
        vocab = tokenizer.vocab_size

        for name, scaled in INITS.items():
            for depth in INIT_DEPTHS:
                Experiment.seed_everything(seed)
                stream = stream_anatomy(build(vocab, depth, scaled).to(exp.device), probe)["stream_rms"]
                growth[name][depth].append(stream[-1] / stream[0])

            Experiment.seed_everything(seed)
            model = build(vocab, LAYERS, scaled).to(exp.device)
            if not scaled:
                anatomy["untrained"].append(stream_anatomy(model, probe))
            hist = train_model(model, get_batch, steps=steps, lr=LR, eval_batches=8, device=exp.device,
                               desc=f"{name} seed={seed}")
            if hist["diverged_at"] is not None:
                raise SystemExit(f"{name}（seed={seed}）在第 {hist['diverged_at']} 步发散；请减小步数后重试")
            if not scaled:
                anatomy["trained"].append(stream_anatomy(model, probe))
            runs[name]["val_loss"].append(hist["val_loss"][-1])
            runs[name]["curves"].append({"train_loss": hist["train_loss"], "val_steps": hist["val_steps"],
                                         "val_loss": hist["val_loss"]})

    anat = {state: average(v) for state, v in anatomy.items()}
    growth_mean = {name: {d: mean_std(v)[0] for d, v in by_depth.items()} for name, by_depth in growth.items()}
    val = {name: mean_std(r["val_loss"])[0] for name, r in runs.items()}

    exp.print_table(
        ["block", "stream rms (untrained)", "|attn|/|x| (untrained)", "|ffn|/|x| (untrained)",
         "stream rms (trained)", "|attn|/|x| (trained)", "|ffn|/|x| (trained)"],
        [[i, anat["untrained"]["stream_rms"][i + 1], anat["untrained"]["attn_write"][i],
          anat["untrained"]["ffn_write"][i], anat["trained"]["stream_rms"][i + 1],
          anat["trained"]["attn_write"][i], anat["trained"]["ffn_write"][i]] for i in range(LAYERS)],
        title=f"Residual stream anatomy, {LAYERS} layers, default init, before / after {steps} steps "
              f"(embedding rms: {anat['untrained']['stream_rms'][0]:.4g} / {anat['trained']['stream_rms'][0]:.4g})")
    exp.print_table(["layers"] + [f"rms(x_L)/rms(embed): {n}" for n in INITS],
                    [[d] + [f"{growth_mean[n][d]:.3g}" for n in INITS] for d in INIT_DEPTHS],
                    title="Stream growth at init")
    exp.print_table(["init", f"val loss @ {steps}"], [[n, format_mean_std(r["val_loss"])] for n, r in runs.items()],
                    title=f"{LAYERS}-layer training, {len(exp.seeds)} seed(s)")
    exp.save_metrics({
        "steps": steps,
        "model": {"hidden_size": HIDDEN, "num_layers": LAYERS, "n_heads": HEADS, "block_size": BLOCK,
                  "batch_size": BATCH, "lr": LR, "scaled_init_std": 0.02 / (2 * LAYERS) ** 0.5},
        "anatomy": anat,
        "init_growth": {"depths": list(INIT_DEPTHS), "mean": {n: [growth_mean[n][d] for d in INIT_DEPTHS]
                                                              for n in INITS},
                        "runs": {n: {str(d): v for d, v in by_d.items()} for n, by_d in growth.items()}},
        "val_loss": {name: {"mean": val[name], "std": mean_std(r["val_loss"])[1], "runs": r["val_loss"]}
                     for name, r in runs.items()},
        "curves": {name: r["curves"] for name, r in runs.items()},
    })

    # ---- 图：主干 RMS / 支路写入比例 / 初始化增长 / 训练曲线 ----
    set_style()
    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    ax = axes[0, 0]
    for state, style in (("untrained", "--"), ("trained", "-")):
        ax.plot(range(LAYERS + 1), anat[state]["stream_rms"], style, marker="o", label=state)
    ax.set_yscale("log")
    ax.set_xticks(range(LAYERS + 1), labels=["emb"] + [str(i) for i in range(LAYERS)])
    ax.set_xlabel("after block")
    ax.set_ylabel("rms of residual stream (log)")
    ax.set_title("Residual stream RMS across depth")
    ax.legend()
    ax = axes[0, 1]
    for state, style in (("untrained", "--"), ("trained", "-")):
        ax.plot(range(LAYERS), anat[state]["attn_write"], style, marker="o", color="C0", label=f"attn, {state}")
        ax.plot(range(LAYERS), anat[state]["ffn_write"], style, marker="s", color="C1", label=f"ffn, {state}")
    ax.set_yscale("log")
    ax.set_xlabel("block")
    ax.set_ylabel("rms(branch out) / rms(stream in) (log)")
    ax.set_title("How much each branch writes into the stream")
    ax.legend(fontsize=8)
    ax = axes[1, 0]
    for name in INITS:
        ax.plot(INIT_DEPTHS, [growth_mean[name][d] for d in INIT_DEPTHS], "o-", label=name)
    ax.set_xscale("log", base=2)
    ax.set_xticks(INIT_DEPTHS, labels=[str(d) for d in INIT_DEPTHS])
    ax.set_xlabel("number of layers")
    ax.set_ylabel("rms(final stream) / rms(embedding)")
    ax.set_title("Stream growth at init: default vs scaled init")
    ax.legend()
    ax = axes[1, 1]
    for i, name in enumerate(INITS):
        curve = runs[name]["curves"][0]
        ax.plot(curve["train_loss"], color=f"C{i}", alpha=0.35, lw=1)
        ax.plot(curve["val_steps"], curve["val_loss"], "o-", color=f"C{i}", label=f"{name} (val)")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(f"Training, {LAYERS} layers (seed {exp.seeds[0]}; faint = train)")
    ax.legend()
    fig.tight_layout()
    exp.save_figure(fig, "exp2_residual_stream.png")

    # ---- 结论（全部由上面的测量算出）----
    for state in ("untrained", "trained"):
        s = anat[state]["stream_rms"]
        exp.conclude(f"主干是累加和：{state} 模型最后一块之后的主干 RMS 大于第一块之后",
                     s[-1] > s[1], f"rms 第 0 块后 {s[1]:.4g} → 第 {LAYERS - 1} 块后 {s[-1]:.4g}（{s[-1] / s[1]:.3g} 倍）")
    write = [a + f for a, f in zip(anat["trained"]["attn_write"], anat["trained"]["ffn_write"])]
    exp.conclude("训练后第 0 块写得最多（把嵌入放大成主干的主体），之后各块只在主干上做小修改（写入 < 主干的 50%）",
                 max(range(LAYERS), key=write.__getitem__) == 0 and max(write[1:]) < 0.5,
                 f"训练后 (|attn|+|ffn|)/|x|：第 0 块 {write[0]:.3g}，第 1~{LAYERS - 1} 块最大 {max(write[1:]):.3g}；"
                 f"嵌入 rms {anat['trained']['stream_rms'][0]:.3g} → 第 0 块后 {anat['trained']['stream_rms'][1]:.3g}")
    default, scaled = growth_mean["default init"], growth_mean["scaled init"]
    exp.conclude("默认初始化（std 0.02）时主干随深度增长：层数越多，rms(x_L)/rms(embed) 越大",
                 all(default[b] > default[a] for a, b in zip(INIT_DEPTHS, INIT_DEPTHS[1:])),
                 "层数 " + "/".join(map(str, INIT_DEPTHS)) + "：" + " → ".join(f"{default[d]:.3g}" for d in INIT_DEPTHS))
    exp.conclude("scaled_init（0.02/√(2L)）把初始化时的主干增长压小：每个深度都比默认初始化小",
                 all(scaled[d] < default[d] for d in INIT_DEPTHS),
                 "scaled：" + " → ".join(f"{scaled[d]:.3g}" for d in INIT_DEPTHS)
                 + f"；{INIT_DEPTHS[-1]} 层时 {scaled[INIT_DEPTHS[-1]]:.3g} vs 默认 {default[INIT_DEPTHS[-1]]:.3g}")
    diff = val["scaled init"] - val["default init"]
    default_run, scaled_run = runs["default init"], runs["scaled init"]
    better = "scaled init" if diff < 0 else "default init"
    # quick 不判定（quick_reason）：两次单独训练的差是训练轨迹的噪声（见文件开头），批次噪声量不到；以完整模式按种子配对的检验为准
    exp.conclude_verdict(
        f"这个规模（{LAYERS} 层）上 scaled_init 没有带来明显的 loss 优势（没有比默认初始化低 {SCALED_INIT_MARGIN} 以上）",
        noninferior(default_run["val_loss"], scaled_run["val_loss"], SCALED_INIT_MARGIN, "less"),
        f"default {format_mean_std(default_run['val_loss'])} vs scaled {format_mean_std(scaled_run['val_loss'])}，"
        f"差 {diff:+.3f}（本次 {better} 更低）",
        quick_reason=(f"{steps} 步、各训练一次，scaled − default 随种子在 −0.09～+0.12 之间变"
                      "（种子 42/1/7/5：+0.056/−0.021/+0.117/−0.085），是单次训练的轨迹噪声，只有一个种子时没有种子噪声可估"))
    exp.finish()


if __name__ == "__main__":
    main()
