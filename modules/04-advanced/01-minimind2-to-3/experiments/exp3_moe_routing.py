"""实验 3：MoE 路由——相同激活参数下 MoE 什么时候比稠密好？共享专家与负载均衡损失各起什么作用？

直接用 model/ 的 MiniMindForCausalLM（use_moe=True）。学习曲线与路由部分用小尺寸（hidden 32、2 层）、字符级 TinyShakespeare，
所有变体每个 token 激活的 FFN 参数相同（中间层合计 I）：
  dense                    稠密 SwiGLU，中间层 I
  moe3 top1 +aux           minimind-3 的配方：4 个路由专家（各 I）、无共享、top-1、批级 aux loss（系数 5e-4）
  moe3 top1 no-aux         同上但 aux 系数 0：top-1 归一化后路由权重恒为 1，路由器拿不到任何梯度
  moe3 shared+top1 +aux    1 个共享专家（I/2）+ 4 个路由专家（各 I/2）、top-1
  moe2-gate top1 no-aux    MiniMind2 的门（top-1 时不归一化，权重 = softmax 概率，路由器从 LM loss 学习），无 aux
  moe2-gate top1 +aux      同上 + MiniMind2 的序列级 aux loss（α = 0.1）
三部分：
  容量      MoE 多出来的是总参数（容量），每个 token 的计算不变。在"容量受限"的任务上测它：背 576 条随机事实
            （modules/common/facts.py：键 (a, b) → 随机的值，没有规律，只能背）。模型很小（hidden 8、1 层），稠密 FFN
            中间层 8，MoE 是 4 个各 8 宽的专家、top-1（minimind-3 配方）——每 token 激活相同，总 FFN 宽度 4 倍。
            两者每步都读全部事实、训练同样的步数，比较答对的事实比例（回忆准确率）。
  学习曲线  dense vs moe3 top1 +aux 训练较长（完整模式 1500 步），每 1/10 记一次验证 loss：MoE 的总参数多 4 倍，
            但每个专家只看到约 1/4 的 token（Switch Transformer、DeepSeekMoE：MoE 的收益随训练 token 增多才显出来），
            看差距（MoE − 稠密）怎样随训练步变化、最后谁更低。
            这一部分是"数据受限"的对照：字符级语言模型的 loss 受数据和训练 token 限制，多出来的参数不一定用得上。
  路由      五个 MoE 变体各训练较短（完整模式 200 步）：验证集上每层每个专家分到的 token 比例、"死"专家
            （比例 < 公平份额的 1/4）、训练中负载最重的专家份额、验证 loss。
另用 meta 设备算出真实尺寸的总参数 / 每 token 激活参数。
完整模式 5 个种子；在 CPU 上把 (种子, 部分) 的每一对分给单线程子进程同时跑（--workers，modules/common/parallel.py；
每一对的全部训练在顶层函数 run_part 里），数值与在一个进程里依次、单线程地跑逐位相同。
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
from modules.common.facts import make_facts, recall_per_fact  # noqa: E402
from modules.common.noise import compare_runs  # noqa: E402
from modules.common.parallel import add_workers_argument, map_seeds, resolve_workers  # noqa: E402
from modules.common.text_data import char_lm_batches  # noqa: E402
from modules.common.training import train_model  # noqa: E402
from modules.common.visualization import set_style  # noqa: E402

N_EXPERTS = 4
SIZE = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
SEQ_LEN, BATCH_SIZE, LR, EVAL_BATCHES = 64, 48, 1e-2, 8
# 名字 → (family, use_moe, n_shared_experts, aux 系数, 路由专家中间层 / I)
VARIANTS = {
    "dense": ("minimind3", False, 0, 0.0, 1.0),
    "moe3 top1 +aux": ("minimind3", True, 0, 5e-4, 1.0),
    "moe3 top1 no-aux": ("minimind3", True, 0, 0.0, 1.0),
    "moe3 shared+top1 +aux": ("minimind3", True, 1, 5e-4, 0.5),
    "moe2-gate top1 no-aux": ("minimind2", True, 0, 0.0, 1.0),
    "moe2-gate top1 +aux": ("minimind2", True, 0, 0.1, 1.0),
}
CURVE_VARIANTS = ("dense", "moe3 top1 +aux")
MEMORY_VARIANTS = ("dense", "moe3 top1 +aux")
# 容量部分：事实 (a, b) → 值，A = 24（576 条事实），M = 32 种值（随机猜 1/32）；模型 hidden 8、1 层，每 token 激活的 FFN 宽 8。
# 学习率与上面相同（LR），不加 weight decay（任务就是背诵）
MEMORY_SIZE = dict(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2)
MEMORY_N_A, MEMORY_N_VALUES, MEMORY_FFN = 24, 32, 8
MEMORY_FULL_RECALL = 0.9  # 在看结果之前定下："背不完" = 回忆准确率低于 0.9
ROUTING_VARIANTS = tuple(v for v in VARIANTS if VARIANTS[v][1])
SHARED_MARGIN = 0.05  # 非劣界（nats），在看结果之前定下："共享专家版的验证 loss 至多比宽专家版高 0.05"
# 学习曲线的两条比较在 quick（200 步、一个种子）里随种子翻转：MoE 在第 200 步大多还落后，但种子 7 上领先；quick 按验证 batch
# 配对，量不到换种子重新训练的噪声。quick 只打印测量值与原因（conclude_verdict 的 quick_reason），完整模式照常判定
QUICK_REASON_CURVE_END = ("quick 种子 42、1、11 上 ❌（MoE 在第 200 步还落后）、种子 7 上 ✅：单个种子按验证 batch 配对，"
                          "量不到换种子重新训练的噪声")
QUICK_REASON_CURVE_GAP = ("quick 种子 42、1 上 ❔、种子 7、11 上 ✅：单个种子按验证 batch 配对，"
                          "量不到换种子重新训练的噪声")
# 真实尺寸（只算参数量，在 meta 设备上构建，不分配内存）
REAL_SIZES = {
    "MiniMind2-Small 26M": dict(family="minimind2"),
    "MiniMind2 104M": dict(family="minimind2", hidden_size=768, num_hidden_layers=16),
    "MiniMind2-MoE 145M": dict(family="minimind2", hidden_size=640, use_moe=True),
    "minimind-3 64M": dict(family="minimind3"),
    "minimind-3-MoE 198M-A64M": dict(family="minimind3", use_moe=True),
}


def add_args(parser):
    parser.add_argument("--steps", type=int, default=None,
                        help="学习曲线部分（dense vs moe3 top1 +aux）的训练步数（默认 quick 200 / full 1500）")
    parser.add_argument("--routing-steps", type=int, default=None,
                        help="路由部分（五个 MoE 变体）的训练步数（默认 quick 100 / full 200）")
    parser.add_argument("--ffn-size", type=int, default=64, help="每个 token 激活的 FFN 中间层合计 I（默认 64）")
    parser.add_argument("--memory-steps", type=int, default=None,
                        help="容量部分（背随机事实，dense vs moe3 top1 +aux）的训练步数（默认 quick 1000 / full 2000）")
    add_workers_argument(parser)


def build_config(variant: str, vocab_size: int, ffn_size: int, size: dict = SIZE, seq_len: int = SEQ_LEN) -> MiniMindConfig:
    family, use_moe, n_shared, aux, ratio = VARIANTS[variant]
    expert_size = int(ffn_size * ratio)
    return MiniMindConfig(family=family, **size, vocab_size=vocab_size, max_position_embeddings=seq_len,
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
    """记下每层路由器每次前向选中的专家：{"train": {层: [每步各专家份额]}, "eval": {层: [每个验证 batch 各专家计数]}}。"""
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
                log["eval"].setdefault(layer_id, []).append(counts)
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


def train_variant(variant: str, text: str, seed: int, steps: int, ffn_size: int, device) -> tuple[dict, dict]:
    """训练一个变体，返回 (这次运行的记录, 参数量)。同一种子下各变体读同一串训练 / 验证 batch，可以按 batch 配对。"""
    Experiment.seed_everything(seed)
    tokenizer, get_batch = char_lm_batches(text, SEQ_LEN, batch_size=BATCH_SIZE, seed=seed, device=device)
    model = MiniMindForCausalLM(build_config(variant, tokenizer.vocab_size, ffn_size)).to(device)
    with record_routing(model) as log:
        hist = train_model(model, get_batch, steps=steps, lr=LR, eval_every=max(1, steps // 10),
                           eval_batches=EVAL_BATCHES, device=device, desc=f"{variant} {steps} steps seed={seed}")
    run = {"val_steps": hist["val_steps"], "val_curve": hist["val_loss"], "val_curve_batches": hist["val_batches"],
           "val_loss": hist["val_loss"][-1], "val_batches": hist["final_val_batches"],
           "aux_loss_last": hist["aux_loss"][-1] if hist["aux_loss"] else 0.0}
    if log["eval"]:
        # 只看最后一次验证（最后 EVAL_BATCHES 次路由器前向）；逐 batch 的归一化熵用来在单种子时按 batch 配对
        final = {layer: torch.stack(counts[-EVAL_BATCHES:]) for layer, counts in log["eval"].items()}  # (nb, E)
        shares = {layer: (c.sum(0) / c.sum()).numpy() for layer, c in final.items()}
        run["share"] = {layer: s.tolist() for layer, s in shares.items()}
        run["layer_stats"] = {layer: load_stats(s) for layer, s in shares.items()}
        run["max_share"] = max(st["max_share"] for st in run["layer_stats"].values())
        run["norm_entropy"] = float(np.mean([st["norm_entropy"] for st in run["layer_stats"].values()]))
        run["dead"] = sum(st["dead"] for st in run["layer_stats"].values())
        run["entropy_batches"] = [float(np.mean([load_stats((c[b] / c[b].sum()).numpy())["norm_entropy"]
                                                 for c in final.values()])) for b in range(EVAL_BATCHES)]
        run["train_max_share"] = np.max(np.array([log["train"][layer] for layer in log["train"]]), axis=-1
                                        ).max(axis=0).tolist()  # 每步：所有层里最重专家的份额
    return run, count_params(model)


def train_memory(variant: str, seed: int, steps: int, device) -> tuple[dict, dict]:
    """容量部分：背 A² 条随机事实。训练与验证都是全部事实（任务本身就是背诵）。
    同一种子下各变体背同一组事实，所以可以逐条事实配对。返回 (这次运行的记录, 参数量)。"""
    input_ids, labels, vocab = make_facts(MEMORY_N_A, MEMORY_N_VALUES, seed)
    input_ids, labels = input_ids.to(device), labels.to(device)  # (N, 4)

    def get_batch(split):
        return input_ids, labels

    Experiment.seed_everything(seed)
    model = MiniMindForCausalLM(build_config(variant, vocab["vocab_size"], MEMORY_FFN, MEMORY_SIZE,
                                             input_ids.shape[1])).to(device)
    hist = train_model(model, get_batch, steps=steps, lr=LR, weight_decay=0.0, eval_every=max(1, steps // 10),
                       eval_batches=1, device=device, desc=f"memory {variant} {steps} steps seed={seed}")
    correct = recall_per_fact(model, input_ids)  # 逐条事实：1.0 = 答对
    return {"recall": sum(correct) / len(correct), "correct": correct, "val_loss": hist["val_loss"][-1],
            "val_steps": [s + 1 for s in hist["val_steps"]], "val_curve": hist["val_loss"]}, count_params(model)


PARTS = ("memory", "curve", "routing")  # 每个种子的三部分；CPU 上 (种子, 部分) 各交给一个单线程子进程


def run_part(job: tuple, text: str, memory_steps: int, steps: int, routing_steps: int, ffn_size: int, device) -> dict:
    """一件活：job = (种子, 部分)，训练这一部分的全部变体，返回 {变体: (这次运行的记录, 参数量)}。
    在顶层定义，map_seeds 才能把它交给单线程子进程；每次训练自己设随机种子，与别的活的先后无关。"""
    seed, part = job
    if part == "memory":
        return {v: train_memory(v, seed, memory_steps, device) for v in MEMORY_VARIANTS}
    variants, n_steps = (CURVE_VARIANTS, steps) if part == "curve" else (ROUTING_VARIANTS, routing_steps)
    return {v: train_variant(v, text, seed, n_steps, ffn_size, device) for v in variants}


def main():
    # 完整模式 5 个种子：3 个种子时另一台机器上的重跑有两条方向不变（3/3）却丢了余量，种子数按测得的散布事先定下（见 README）
    exp = Experiment(__file__, extra_args=add_args, full_seeds=5, description=(
        "minimind2→3 实验 3：相同激活参数下的稠密 vs MoE——容量受限的随机事实记忆、数据受限的语言模型学习曲线；\n"
        "有无共享专家、有无负载均衡 aux loss、两代的门；\n"
        "比较验证 loss 随训练步的差距、专家负载分布与死专家，并给出真实尺寸的总参数 / 激活参数。"))
    steps = exp.args.steps if exp.args.steps is not None else (200 if exp.quick else 1500)
    routing_steps = exp.args.routing_steps if exp.args.routing_steps is not None else (100 if exp.quick else 200)
    memory_steps = exp.args.memory_steps if exp.args.memory_steps is not None else (1000 if exp.quick else 2000)
    ffn_size = exp.args.ffn_size
    if steps < 20 or routing_steps < 1 or memory_steps < 1 or ffn_size < 2 or ffn_size % 2:
        raise SystemExit(f"--steps 至少为 20（学习曲线要 10 个验证点），--routing-steps 和 --memory-steps 至少为 1，"
                         f"--ffn-size 必须是 >= 2 的偶数（收到 {steps}、{routing_steps}、{memory_steps}、{ffn_size}）")
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

    # ---- 训练：每个种子三部分（容量、学习曲线、路由），(种子, 部分) 各是一件活，CPU 上分给单线程子进程 ----
    jobs = [(seed, part) for part in PARTS for seed in exp.seeds]
    workers = resolve_workers(exp.args.workers, exp.quick, exp.device, len(jobs))
    done = dict(zip(jobs, map_seeds(run_part, jobs, workers, text, memory_steps, steps, routing_steps, ffn_size,
                                    exp.device)))

    def collect(part, variants):
        """({变体: [每个种子的记录]}, {变体: 参数量})"""
        runs = {v: [done[(seed, part)][v][0] for seed in exp.seeds] for v in variants}
        return runs, {v: done[(exp.seeds[0], part)][v][1] for v in variants}

    # ---- 第一部分：容量受限的任务——背随机事实，dense vs minimind-3 配方的 MoE（同激活参数）----
    memory, memory_params = collect("memory", MEMORY_VARIANTS)
    n_facts = MEMORY_N_A ** 2
    exp.print_table(["variant", "total params", "active params", "recall accuracy", "val loss"],
                    [[v, memory_params[v]["total"], memory_params[v]["active"],
                      format_mean_std([r["recall"] for r in memory[v]], 3),
                      format_mean_std([r["val_loss"] for r in memory[v]], 3)] for v in MEMORY_VARIANTS],
                    title=f"Recall of {n_facts} random facts (a, b) -> value, hidden {MEMORY_SIZE['hidden_size']}, "
                          f"{MEMORY_SIZE['num_hidden_layers']} layer, active FFN {MEMORY_FFN}, {memory_steps} steps; "
                          f"chance = {1 / MEMORY_N_VALUES:.3f}")

    # ---- 第二部分：学习曲线（数据受限的对照），dense vs minimind-3 配方的 MoE ----
    curve, params = collect("curve", CURVE_VARIANTS)
    dense, moe = CURVE_VARIANTS
    val_steps = [s + 1 for s in curve[dense][0]["val_steps"]]  # 第几步之后评估（从 1 数）
    n_seeds = len(exp.seeds)
    # gaps[i][j]：第 i 个种子、第 j 个验证点的 MoE − 稠密（负数 = MoE 更好）
    gaps = [[a - b for a, b in zip(curve[moe][i]["val_curve"], curve[dense][i]["val_curve"])] for i in range(n_seeds)]
    mid = len(val_steps) // 2 - 1  # 训练一半时的验证点
    rows = [[val_steps[j], format_mean_std([r["val_curve"][j] for r in curve[dense]], 4),
             format_mean_std([r["val_curve"][j] for r in curve[moe]], 4),
             format_mean_std([g[j] for g in gaps], 2)] for j in range(len(val_steps))]
    exp.print_table(["step", f"val loss {dense}", f"val loss {moe}", "gap (moe − dense)"], rows,
                    title=f"Learning curve at equal active FFN size I={ffn_size}, {steps} steps")

    # ---- 第三部分：五个 MoE 变体的路由 ----
    results, routing_params = collect("routing", ROUTING_VARIANTS)
    params.update(routing_params)

    def m(variant, key):
        return mean_std([r[key] for r in results[variant]])[0]

    def agg(variant, key):
        return [r[key] for r in results[variant]]

    rows = [[v, f"{params[v]['total'] / 1e3:.1f}k", f"{params[v]['active'] / 1e3:.1f}k",
             format_mean_std(agg(v, "val_loss"), 4), format_mean_std(agg(v, "max_share"), 3),
             format_mean_std(agg(v, "norm_entropy"), 3), format_mean_std(agg(v, "dead"), 2)] for v in ROUTING_VARIANTS]
    exp.print_table(["variant", "total params", "active params", "val loss", "max expert share", "load entropy",
                     f"dead experts ({SIZE['num_hidden_layers'] * N_EXPERTS} total)"], rows,
                    title=f"MoE routing variants at equal active FFN size I={ffn_size}, {routing_steps} steps")

    # ---- 图 1：各专家的负载份额（第一个种子，两层并排）；图 2：训练中最重专家份额、学习曲线、差距 ----
    fig, axes = plt.subplots(1, len(ROUTING_VARIANTS), figsize=(2.6 * len(ROUTING_VARIANTS), 3.6), sharey=True)
    for ax, v in zip(axes, ROUTING_VARIANTS):
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
    fig.suptitle(f"Expert load on validation tokens after {routing_steps} steps (seed {exp.seeds[0]}; dashed = uniform)")
    exp.save_figure(fig, "exp3_expert_load.png")

    fig, axes = plt.subplots(1, 4, figsize=(21, 4))
    for v in ROUTING_VARIANTS:
        share_curve = np.mean(np.array([r["train_max_share"] for r in results[v]]), axis=0)
        window = min(10, len(share_curve))
        smooth = np.convolve(share_curve, np.ones(window) / window, mode="valid")
        axes[0].plot(np.arange(len(smooth)) + window, smooth, label=v)
    axes[0].axhline(1 / N_EXPERTS, color="gray", ls="--", lw=1, label="uniform")
    axes[0].set_xlabel("step")
    axes[0].set_ylabel(f"max expert share ({window}-step avg)")
    axes[0].set_title("Load imbalance during training")
    axes[0].legend(fontsize=7)
    for v, color in zip(CURVE_VARIANTS, ("tab:gray", "tab:orange")):
        means = np.mean([r["val_curve"] for r in curve[v]], axis=0)
        axes[1].plot(val_steps, means, marker="o", color=color, label=f"{v} ({params[v]['total'] / 1e3:.0f}k params)")
    axes[1].set_xlabel("step")
    axes[1].set_ylabel("val loss")
    axes[1].set_title(f"Dense vs MoE at equal active params (I={ffn_size})")
    axes[1].legend(fontsize=8)
    gap_mean, gap_std = np.mean(gaps, axis=0), np.std(gaps, axis=0)
    axes[2].plot(val_steps, gap_mean, marker="o", color="tab:purple", label=f"mean over {n_seeds} seed(s)")
    axes[2].fill_between(val_steps, gap_mean - gap_std, gap_mean + gap_std, color="tab:purple", alpha=0.2)
    axes[2].axhline(0, color="gray", ls="--", lw=1)
    axes[2].set_xlabel("step")
    axes[2].set_ylabel("val loss gap (moe − dense)")
    axes[2].set_title("Below 0 = MoE ahead")
    axes[2].legend(fontsize=8)
    for v, color in zip(MEMORY_VARIANTS, ("tab:gray", "tab:orange")):
        means = np.mean([r["val_curve"] for r in memory[v]], axis=0)
        recall = np.mean([r["recall"] for r in memory[v]])
        axes[3].plot(memory[v][0]["val_steps"], means, marker="o", color=color,
                     label=f"{v} ({memory_params[v]['total'] / 1e3:.1f}k params, recall {recall:.2f})")
    axes[3].set_xlabel("step")
    axes[3].set_ylabel("loss on all facts")
    axes[3].set_title(f"Memorizing {n_facts} random facts (capacity-bound)")
    axes[3].legend(fontsize=8)
    exp.save_figure(fig, "exp3_moe_loss_and_balance.png")

    summary = {v: {k: m(v, k) for k in ("val_loss", "max_share", "norm_entropy", "dead")} for v in ROUTING_VARIANTS}
    exp.save_metrics({"memory": {"steps": memory_steps, "n_a": MEMORY_N_A, "n_values": MEMORY_N_VALUES, "n_facts": n_facts,
                                 "chance": 1 / MEMORY_N_VALUES, "ffn_size": MEMORY_FFN,
                                 "lr": LR, "full_recall": MEMORY_FULL_RECALL, "model": MEMORY_SIZE,
                                 "params": memory_params, "runs": memory},
                      "steps": steps, "routing_steps": routing_steps, "ffn_size": ffn_size, "n_experts": N_EXPERTS,
                      "dead_threshold": 1 / (4 * N_EXPERTS), "shared_margin": SHARED_MARGIN,
                      "model": {**SIZE, "seq_len": SEQ_LEN, "batch_size": BATCH_SIZE, "lr": LR},
                      "variants": {v: {"family": f, "use_moe": u, "n_shared_experts": s, "aux_coef": a,
                                       "expert_intermediate_size": int(ffn_size * r)}
                                   for v, (f, u, s, a, r) in VARIANTS.items()},
                      "params": params, "real_sizes": real,
                      "curve": {"val_steps": val_steps, "gaps": gaps, "mid_index": mid, "runs": curve},
                      "runs": results, "summary": summary})

    # ---- 结论（全部由上面的测量算出；比较都过噪声检验 modules/common/noise.py）----
    # 单种子时按验证 batch 配对：同一种子下 dense 与 MoE 读的是同一批验证数据
    def batches(v, j):
        return curve[v][0]["val_curve_batches"][j]

    # 容量：单种子时按事实配对（同一种子下 dense 与 MoE 背同一组事实）
    dense_recall, moe_recall = ([r["recall"] for r in memory[v]] for v in MEMORY_VARIANTS)
    exp.conclude(f"容量受限：相同激活参数的稠密背不完 {n_facts} 条事实（每个种子的回忆准确率都低于 {MEMORY_FULL_RECALL:g}）",
                 all(x < MEMORY_FULL_RECALL for x in dense_recall),
                 f"稠密回忆准确率 {format_mean_std(dense_recall, 3)}（{memory_steps} 步）")
    exp.conclude_verdict("容量受限的任务上，相同激活参数下，minimind-3 配方的 MoE（top-1 +aux）背对的事实多于稠密",
                         compare_runs(moe_recall, dense_recall, "greater",
                                      memory[MEMORY_VARIANTS[1]][0]["correct"], memory[MEMORY_VARIANTS[0]][0]["correct"]),
                         f"回忆准确率 {format_mean_std(moe_recall, 3)} vs {format_mean_std(dense_recall, 3)}；"
                         f"总参数 {memory_params[MEMORY_VARIANTS[1]]['total']} vs {memory_params[MEMORY_VARIANTS[0]]['total']}，"
                         f"激活参数 {memory_params[MEMORY_VARIANTS[1]]['active']} vs {memory_params[MEMORY_VARIANTS[0]]['active']}")
    exp.conclude_verdict(f"对照：数据受限的 TinyShakespeare 上训练 {steps} 步后，相同激活参数下，"
                         f"minimind-3 配方的 MoE（top-1 +aux）验证 loss 低于稠密",
                         compare_runs([r["val_loss"] for r in curve[moe]], [r["val_loss"] for r in curve[dense]], "less",
                                      batches(moe, -1), batches(dense, -1)),
                         f"{format_mean_std([r['val_loss'] for r in curve[moe]], 4)} vs "
                         f"{format_mean_std([r['val_loss'] for r in curve[dense]], 4)}；总参数 {params[moe]['total']} vs "
                         f"{params[dense]['total']}，激活参数 {params[moe]['active']} vs {params[dense]['active']}",
                         quick_reason=QUICK_REASON_CURVE_END)
    batch_gap = {j: [a - b for a, b in zip(batches(moe, j), batches(dense, j))] for j in (mid, -1)}
    exp.conclude_verdict(f"MoE 相对稠密的差距随训练变小：第 {val_steps[-1]} 步的 (MoE − 稠密) 小于第 {val_steps[mid]} 步的",
                         compare_runs([g[-1] for g in gaps], [g[mid] for g in gaps], "less", batch_gap[-1], batch_gap[mid]),
                         f"差距 {np.mean([g[mid] for g in gaps]):+.4f}（第 {val_steps[mid]} 步）→ "
                         f"{np.mean([g[-1] for g in gaps]):+.4f}（第 {val_steps[-1]} 步）", quick_reason=QUICK_REASON_CURVE_GAP)
    for gate, on, off in (("minimind-3 的门", "moe3 top1 +aux", "moe3 top1 no-aux"),
                          ("MiniMind2 的门", "moe2-gate top1 +aux", "moe2-gate top1 no-aux")):
        exp.conclude_verdict(f"{gate}：去掉 aux loss 后负载更不均衡（归一化熵更低）",
                             compare_runs(agg(off, "norm_entropy"), agg(on, "norm_entropy"), "less",
                                          results[off][0]["entropy_batches"], results[on][0]["entropy_batches"]),
                             f"熵 {m(off, 'norm_entropy'):.3f}（无 aux）vs {m(on, 'norm_entropy'):.3f}（有 aux）；最重专家份额 "
                             f"{m(off, 'max_share'):.3f} vs {m(on, 'max_share'):.3f}；死专家 {m(off, 'dead'):.1f} vs {m(on, 'dead'):.1f}")
    with_aux = [v for v in ROUTING_VARIANTS if VARIANTS[v][3] > 0]
    exp.conclude("加了 aux loss 的变体都没有死专家（每个种子、每层）",
                 all(r["dead"] == 0 for v in with_aux for r in results[v]),
                 "，".join(f"{v} {m(v, 'dead'):.1f}" for v in with_aux))
    # 非劣检验："不差于"= 共享专家版的 loss 至多比宽专家版高 SHARED_MARGIN（界在看结果之前定下），即 shared < wide + margin
    shared, wide = "moe3 shared+top1 +aux", "moe3 top1 +aux"
    exp.conclude_verdict(f"共享专家 + 更窄的路由专家（同激活参数）不差于 4 个宽路由专家：验证 loss 至多高 {SHARED_MARGIN:g} nats",
                         compare_runs(agg(shared, "val_loss"), [x + SHARED_MARGIN for x in agg(wide, "val_loss")], "less",
                                      results[shared][0]["val_batches"],
                                      [x + SHARED_MARGIN for x in results[wide][0]["val_batches"]]),
                         f"{format_mean_std(agg(shared, 'val_loss'), 4)} vs {format_mean_std(agg(wide, 'val_loss'), 4)}"
                         f"（{routing_steps} 步）")
    exp.finish()


if __name__ == "__main__":
    main()
