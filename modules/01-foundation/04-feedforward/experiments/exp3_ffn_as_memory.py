"""实验 3：FFN 是键值记忆（Geva et al. 2021, "Transformer Feed-Forward Layers Are Key-Value Memories"）。

合成"事实回忆"任务：事实的"键"是一对 token (a, b)（a、b 各有 A 种取值，共 A² 条事实），
每条事实随机指定一个"值" token（M 种取值之一）。序列是 [a, b, →, 值]，只有"值"计分。
值是随机指定的，没有规律可循——唯一的办法是把 A² 条事实背下来。
  - 键是两个 token 的组合：单个 token 的嵌入背不下来（它对应 A 条不同的事实），
    注意力只能把 a、b 的向量加权混合，也表达不了"随机的组合 → 值"这种查表；需要 FFN 的非线性。
  - 1 层、hidden 很小的 LabModel，只扫 FFN 宽度（intermediate_size）：回忆准确率随宽度上升 = 容量。
  - 比的是容量（训练到头能背下多少），不是背得多快。1024 条事实对宽度 16 也不算多：训练够久（约 2400 步）它也能背全，
    所以完整模式用 48² = 2304 条事实、训练 1200 步。每隔 steps/12 步记一次回忆准确率，曲线写进 JSON 和图，
    用来区分"还在爬坡（步数不够）"和"停在半路（优化停滞）"。quick 模式为了 1 分钟内跑完，用 32² = 1024 条事实、800 步
    （宽度 16 这时还没背完，quick 里的"越宽背得越多"主要量的是背得多快）。
然后取一个训练好的模型，做 Geva 式的解读：对每条事实，找出在"→"位置上激活最强的 FFN 神经元，
把它的输出向量（down_proj 的第 i 列，乘以激活的符号）经过最终 RMSNorm 的增益和解嵌入（lm_head）投到词表上，
看它最推高哪个 token——是不是这条事实的值？与随机神经元的命中率对比。
最后检验记忆是否分布在许多神经元上：每条事实只保留激活最强的 TOP_K 个神经元，回忆还剩多少。
比较都过共享的噪声检验（modules/common/noise.py）：完整模式按种子配对；quick 模式只有一个种子，
按事实配对（同一种子下各宽度背的是同一组事实）。
复制（--replicates，modules/common/replicates.py；完整模式默认 2，quick 默认 1，按 CPU 预算在看判定之前定下）：
固定种子 42 的 2304 条事实、宽度 256，只换初始化种子（42、1042、…、7042），8 次训练里 1 次停在 0.575、7 次背全——
宽模型"停在半路"是初始化的噪声，不是这个种子的事实本身难背。所以每个种子的值 = R 次训练的平均：
第 r 次训练只把初始化种子换成 replicate_seed(seed, r)，事实仍是主种子的那一组；噪声检验仍按主种子配对（n = 3）。
完整模式在 CPU 上把 (种子, 复制) 的每一对分给单线程子进程同时跑（--workers，modules/common/parallel.py；
每一对的全部训练在顶层函数 train_run 里），数值与在一个进程里依次、单线程地跑逐位相同。
"""
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[4]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from modules.common.experiment_base import Experiment, format_mean_std, mean_std  # noqa: E402
from modules.common.facts import make_facts, recall_per_fact  # noqa: E402
from modules.common.lab_model import LabConfig, LabModel  # noqa: E402
from modules.common.noise import compare_runs  # noqa: E402
from modules.common.parallel import add_workers_argument, map_seeds, resolve_workers  # noqa: E402
from modules.common.replicates import (  # noqa: E402
    REPLICATE_SEED_STRIDE, add_replicates_argument, replicate_seed, resolve_replicates,
)
from modules.common.training import train_model  # noqa: E402
from modules.common.visualization import set_style  # noqa: E402

HIDDEN, HEADS, LR = 16, 2, 1e-2
TOP_K = 5  # 解读与"只保留最强的几个神经元"时看几个神经元
REPLICATES_QUICK, REPLICATES_FULL = 1, 2  # 每个种子平均几次训练（完整模式 2：2 核上单独运行仍在 10 分钟内）


def add_args(parser):
    parser.add_argument("--n-a", type=int, default=None,
                        help="键的每个 token 有几种取值 A（事实条数 = A²；默认完整模式 48，quick 32）")
    parser.add_argument("--n-values", type=int, default=32, help="值 token 的种类 M（随机猜的准确率 = 1/M，默认 32）")
    parser.add_argument("--steps", type=int, default=None, help="每个模型的训练步数（默认完整模式 1200，quick 800）")
    add_replicates_argument(parser, REPLICATES_QUICK, REPLICATES_FULL, "每次只换初始化，事实不变")
    add_workers_argument(parser)


def token_name(i: int, n_a: int, n_values: int) -> str:
    if i < n_a:
        return f"a{i}"
    if i < 2 * n_a:
        return f"b{i - n_a}"
    if i < 2 * n_a + n_values:
        return f"v{i - 2 * n_a}"
    return "->"


@torch.no_grad()
def recall_with_top_neurons(model: LabModel, input_ids: torch.Tensor, k: int) -> list[float]:
    """每条事实在"→"位置只保留 |系数| 最大的 k 个 FFN 神经元（其余系数置 0），逐条事实返回是否仍答对。
    如果每条事实只存在一两个神经元里，保留最强的 k 个就够了；回忆明显下降说明它由更多神经元共同写出。"""
    mlp = model.model.layers[-1].mlp

    def keep_top(module, args):
        coef = args[0].clone()  # (N, T, I)
        at_arrow = coef[:, 2]  # (N, I)
        top = at_arrow.abs().topk(k, dim=-1).indices  # (N, k)
        keep = torch.zeros_like(at_arrow, dtype=torch.bool).scatter_(1, top, True)
        coef[:, 2] = at_arrow * keep
        return (coef,)

    handle = mlp.down_proj.register_forward_pre_hook(keep_top)
    try:
        return recall_per_fact(model, input_ids)
    finally:
        handle.remove()


@torch.no_grad()
def ffn_memory_readout(model: LabModel, input_ids: torch.Tensor, top_k: int = TOP_K) -> dict:
    """Geva 式解读：每条事实在"→"位置的 FFN 系数 a_i（SwiGLU：silu(gate)·up），
    神经元 i 写入残差流的向量是 a_i · down_proj[:, i]；把 sign(a_i)·down_proj[:, i] 乘最终 norm 的增益后经 lm_head
    投到词表，argmax 就是这个神经元"推高"的 token。"""
    model.eval()
    mlp = model.model.layers[-1].mlp
    captured = {}
    handle = mlp.down_proj.register_forward_hook(lambda m, inp, out: captured.update(coef=inp[0].detach()))
    model(input_ids[:, :3])
    handle.remove()
    model.train()
    coef = captured["coef"][:, 2]  # (N, I)：每条事实在"→"位置的神经元系数
    values = mlp.down_proj.weight.T  # (I, H)：第 i 行 = 神经元 i 的输出向量
    gain = model.model.norm.weight if hasattr(model.model.norm, "weight") else torch.ones(values.shape[1])
    logits_per_neuron = (values * gain) @ model.lm_head.weight.T  # (I, V)：每个神经元正向写入时推高哪些 token
    promoted_pos = logits_per_neuron.argmax(-1)  # (I,)
    promoted_neg = (-logits_per_neuron).argmax(-1)  # (I,)：系数为负时，推高的是反方向
    promoted = torch.where(coef > 0, promoted_pos[None], promoted_neg[None])  # (N, I)
    target = input_ids[:, 3:4]  # (N, 1)
    hits = promoted == target  # (N, I)
    order = coef.abs().argsort(dim=1, descending=True)  # (N, I)：按激活强度排序
    top_hits = hits.gather(1, order[:, :top_k])  # (N, k)
    return {"coef": coef, "order": order, "promoted": promoted, "logits_per_neuron": logits_per_neuron,
            "top1_hits": top_hits[:, 0].float().tolist(),  # 逐条事实：最强神经元是否推高正确的值
            "random_hits": hits.float().mean(1).tolist(),  # 逐条事实：随机取一个神经元命中的概率
            "top1_hit_rate": top_hits[:, 0].float().mean().item(),
            "topk_any_hit_rate": top_hits.any(1).float().mean().item(),
            "random_neuron_hit_rate": hits.float().mean().item()}


def train_run(run_seeds: tuple[int, int], n_a: int, n_values: int, steps: int, widths: tuple[int, ...],
              device) -> dict:
    """一次训练：run_seeds = (主种子, 初始化种子)。事实由主种子决定，每个宽度的模型用初始化种子初始化；
    每个宽度训练一个模型，再对最宽的模型做解读。初始化种子 = replicate_seed(主种子, r)，r = 0 时就是主种子本身。
    在顶层定义，map_seeds 才能把它交给单线程子进程（完整模式在 CPU 上几对 (种子, 复制) 同时跑）。
    返回：params / acc / curve / correct（按宽度）、最宽模型的 readout 与 top_only、以及这个种子的 input_ids。"""
    seed, init_seed = run_seeds
    input_ids, labels, vocab = make_facts(n_a, n_values, seed)
    input_ids, labels = input_ids.to(device), labels.to(device)
    curve_every = steps // 12  # 每隔这么多步记一次回忆准确率（判断曲线是否走平）

    def get_batch(split):  # 训练与"验证"都是全部事实：任务本身就是背诵
        return input_ids, labels

    run = {"params": {}, "acc": {}, "curve": {}, "correct": {}}
    for w in widths:
        Experiment.seed_everything(init_seed)
        config = LabConfig(vocab_size=vocab["vocab_size"], hidden_size=HIDDEN, num_layers=1, n_heads=HEADS,
                           max_seq_len=4, ffn="none" if w == 0 else "swiglu",
                           ffn_ratio=None if w == 0 else w / HIDDEN)
        model = LabModel(config).to(device)
        run["params"][w] = model.num_params()
        curve = []

        def record_recall(n_done, trained):
            if n_done % curve_every == 0:
                hits = recall_per_fact(trained, input_ids)
                curve.append(sum(hits) / len(hits))

        hist = train_model(model, get_batch, steps=steps, lr=LR, weight_decay=0.0, eval_every=steps,
                           eval_batches=1, device=device, desc=f"width={w} seed={seed} init={init_seed}", after_step=record_recall)
        if hist["diverged_at"] is not None:
            raise SystemExit(f"width={w}（seed={seed}，init={init_seed}）在第 {hist['diverged_at']} 步发散；请减小学习率后重试")
        correct = recall_per_fact(model, input_ids)
        run["acc"][w] = sum(correct) / len(correct)
        run["curve"][w] = curve
        run["correct"][w] = correct
        if w == widths[-1]:  # 最宽的模型：神经元解读，以及只保留最强 TOP_K 个神经元时的回忆
            run["readout"] = ffn_memory_readout(model, input_ids)
            run["top_only"] = recall_with_top_neurons(model, input_ids, TOP_K)
    run["input_ids"] = input_ids.cpu()
    return run


def average_lists(lists: list[list[float]]) -> list[float]:
    """逐元素平均几条等长的列表（几次复制的曲线或逐条事实的结果）；只有一条时原样返回（R = 1 与不复制逐位相同）。"""
    if len(lists) == 1:
        return lists[0]
    return [sum(values) / len(values) for values in zip(*lists)]


def main():
    exp = Experiment(__file__, extra_args=add_args, description=(
        "FFN 实验 3：FFN 是键值记忆。随机事实 (a, b) → 值 的回忆准确率随 FFN 宽度上升；\n"
        "并找出为某条事实激活最强的神经元，看它的输出向量推高的是不是这条事实的值（Geva et al. 2021）。"))
    n_a = exp.args.n_a if exp.args.n_a is not None else (32 if exp.quick else 48)
    n_values = exp.args.n_values
    if n_a < 2 or n_values < 2:
        raise SystemExit(f"--n-a 和 --n-values 都至少为 2（收到 {n_a}, {n_values}）")
    steps = exp.args.steps if exp.args.steps is not None else (800 if exp.quick else 1200)
    if steps < 12:
        raise SystemExit(f"--steps 必须 >= 12（收到 {steps}）")
    curve_every = steps // 12  # 每隔这么多步记一次回忆准确率（判断曲线是否走平）
    widths = (0, 16, 256) if exp.quick else (0, 16, 64, 256)  # 0 = 没有 FFN（attention-only）
    n_facts = n_a * n_a
    replicates = resolve_replicates(exp.args.replicates, exp.quick, REPLICATES_QUICK, REPLICATES_FULL)
    run_seeds = [(seed, replicate_seed(seed, r)) for seed in exp.seeds for r in range(replicates)]
    workers = resolve_workers(exp.args.workers, exp.quick, exp.device, len(run_seeds))

    all_runs = map_seeds(train_run, run_seeds, workers, n_a, n_values, steps, widths, exp.device)
    per_seed = [all_runs[i * replicates:(i + 1) * replicates] for i in range(len(exp.seeds))]  # [主种子][复制]
    # 每个主种子的值 = 它的 replicates 次训练的平均（逐条事实的结果、曲线也逐元素平均）
    replicate_acc = {w: [[run["acc"][w] for run in reps] for reps in per_seed] for w in widths}
    acc = {w: [sum(a) / len(a) for a in replicate_acc[w]] for w in widths}
    curves = {w: [average_lists([run["curve"][w] for run in reps]) for reps in per_seed] for w in widths}
    params = all_runs[0]["params"]
    first = per_seed[0]  # 第一个种子：逐条事实的结果（quick 模式按事实配对的噪声）；解读表和图用它的第一次训练
    per_fact = {w: average_lists([run["correct"][w] for run in first]) for w in widths}
    per_fact["top1_hits"] = average_lists([run["readout"]["top1_hits"] for run in first])
    per_fact["random_hits"] = average_lists([run["readout"]["random_hits"] for run in first])
    per_fact["top_only"] = average_lists([run["top_only"] for run in first])

    def replicate_mean(values_of) -> list[float]:  # 每个主种子：values_of(一次训练) 在它的几次复制上的平均
        return [sum(values_of(run) for run in reps) / len(reps) for reps in per_seed]
    probe = {"top1_hit_rate": replicate_mean(lambda run: run["readout"]["top1_hit_rate"]),  # 最宽模型，每个种子一个值
             "random_hit_rate": replicate_mean(lambda run: run["readout"]["random_neuron_hit_rate"]),
             f"top{TOP_K}_only_accuracy": replicate_mean(lambda run: sum(run["top_only"]) / len(run["top_only"]))}

    chance = 1 / n_values
    exp.print_table(["FFN width", "params", "recall accuracy"],
                    [["none (attention-only)" if w == 0 else w, params[w], format_mean_std(acc[w])] for w in widths],
                    title=f"Recall of {n_facts} random facts (a, b) -> value, hidden {HIDDEN}, 1 layer, {steps} steps, "
                          f"{len(exp.seeds)} seed(s) x {replicates} init(s); chance = {chance:.3f}")
    if replicates > 1:  # 每次训练的值：同一主种子内只换初始化，看停滞是不是初始化的噪声
        exp.print_table(["seed", "init seed"] + [f"width {w}" for w in widths],
                        [[seed, init_seed] + [f"{all_runs[i]['acc'][w]:.3f}" for w in widths]
                         for i, (seed, init_seed) in enumerate(run_seeds)],
                        title="Recall accuracy of every single training (same facts per seed, only the init changes)")

    # ---- Geva 式解读：最宽的模型 ----
    input_ids = first[0]["input_ids"]
    readout = first[0]["readout"]
    examples = []
    for n in range(3):  # 前 3 条事实各列出激活最强的 3 个神经元
        fact = input_ids[n].tolist()
        for i in readout["order"][n, :3].tolist():
            examples.append([f"({token_name(fact[0], n_a, n_values)}, {token_name(fact[1], n_a, n_values)})",
                             token_name(fact[3], n_a, n_values), i, f"{readout['coef'][n, i].item():+.3f}",
                             token_name(readout["promoted"][n, i].item(), n_a, n_values)])
    exp.print_table(["fact key", "value", "neuron", "coefficient", "promotes"], examples,
                    title=f"Top-3 neurons at '->' for the first 3 facts (width {widths[-1]})")
    exp.print_table(["neurons examined", "promote the fact's value"],
                    [["most active neuron", f"{readout['top1_hit_rate']:.3f}"],
                     ["any of the 5 most active", f"{readout['topk_any_hit_rate']:.3f}"],
                     ["a random neuron", f"{readout['random_neuron_hit_rate']:.3f}"]],
                    title=f"How often a neuron's output vector, projected to the vocabulary, promotes the correct value "
                          f"({n_facts} facts, width {widths[-1]})")

    exp.save_metrics({
        "n_facts": n_facts, "n_a": n_a, "n_values": n_values, "chance": chance, "steps": steps, "widths": list(widths),
        "replicates": replicates, "replicate_seed_stride": REPLICATE_SEED_STRIDE,
        "replicate_accuracy": {str(w): replicate_acc[w] for w in widths},  # [主种子][复制]：每次训练的准确率
        "model": {"hidden_size": HIDDEN, "num_layers": 1, "n_heads": HEADS, "lr": LR, "weight_decay": 0.0},
        "params": {str(w): params[w] for w in widths},
        "accuracy": {str(w): {"mean": mean_std(acc[w])[0], "std": mean_std(acc[w])[1], "runs": acc[w]} for w in widths},
        "readout": {k: readout[k] for k in ("top1_hit_rate", "topk_any_hit_rate", "random_neuron_hit_rate")},
        "widest_per_seed": probe,
        "recall_curve": {"steps": [curve_every * (i + 1) for i in range(steps // curve_every)],
                         "runs": {str(w): curves[w] for w in widths}},
    })

    # ---- 图：左 准确率 vs 宽度；右 一条事实的 top 神经元各自推高的值 token 的 logit ----
    set_style()
    fig, axes = plt.subplots(1, 3, figsize=(19, 4.5), layout="constrained")
    ffn_widths = [w for w in widths if w > 0]
    axes[0].errorbar(ffn_widths, [mean_std(acc[w])[0] for w in ffn_widths],
                     yerr=[mean_std(acc[w])[1] for w in ffn_widths], marker="o", capsize=3, label="SwiGLU FFN")
    axes[0].axhline(mean_std(acc[0])[0], color="gray", ls="--", label="attention-only (no FFN)")
    axes[0].axhline(chance, color="black", ls=":", label=f"chance 1/{n_values}")
    axes[0].set_xscale("log", base=2)
    axes[0].set_xlabel("FFN width (intermediate_size)")
    axes[0].set_ylabel("recall accuracy")
    axes[0].set_ylim(0, 1.05)
    axes[0].set_title(f"Recall of {n_facts} random facts vs FFN width")
    axes[0].legend(fontsize=8)

    n = 0  # 第一条事实
    fact = input_ids[n].tolist()
    top = readout["order"][n, :5].tolist()
    value_ids = list(range(2 * n_a, 2 * n_a + n_values))
    coef_n = readout["coef"][n]  # (I,)
    # 每个神经元实际写入的 aᵢ·vᵢ 投到值 token 上；最后一行是全部 I 个神经元之和（整个 FFN 的写入）
    rows = [coef_n[i] * readout["logits_per_neuron"][i, value_ids] for i in top]
    rows.append(coef_n @ readout["logits_per_neuron"][:, value_ids])
    grid = torch.stack(rows)  # (6, M)
    grid = grid - grid.mean(dim=1, keepdim=True)  # 只有值 token 之间的相对高低决定谁胜出：减去每行的均值
    grid = grid / grid.abs().amax(dim=1, keepdim=True)  # 再除以每行的最大绝对值，便于比较形状
    image = axes[1].imshow(grid.detach().numpy(), aspect="auto", cmap="RdBu_r", vmin=-1, vmax=1)
    fig.colorbar(image, ax=axes[1], fraction=0.046, pad=0.04)
    correct = fact[3] - 2 * n_a
    axes[1].add_patch(plt.Rectangle((correct - 0.5, -0.5), 1, len(rows), fill=False, edgecolor="black", lw=2))
    axes[1].set_xticks(range(0, n_values, max(1, n_values // 8)))
    axes[1].set_yticks(range(len(rows)), labels=[f"neuron {i}" for i in top] + [f"all {len(coef_n)} neurons"])
    axes[1].set_xlabel(f"value token index (black box: correct value v{correct})")
    axes[1].set_title(f"Fact ({token_name(fact[0], n_a, n_values)}, {token_name(fact[1], n_a, n_values)}): "
                      "a_i * v_i projected to values (row-centered, normalized)", fontsize=10)
    axes[1].grid(False)

    curve_steps = [curve_every * (i + 1) for i in range(steps // curve_every)]
    for w in widths:  # 各种子的曲线取均值：走平了才说明比的是容量，而不是背得多快
        mean_curve = torch.tensor(curves[w]).mean(0).tolist()
        axes[2].plot(curve_steps, mean_curve, marker=".", label="attention-only" if w == 0 else f"width {w}")
    axes[2].axhline(chance, color="black", ls=":", label=f"chance 1/{n_values}")
    axes[2].set_xlabel("training step")
    axes[2].set_ylabel(f"recall accuracy (mean of {len(exp.seeds)} seed(s) x {replicates} init(s))")
    axes[2].set_ylim(0, 1.05)
    axes[2].set_title("Recall during training (cosine LR schedule)")
    axes[2].legend(fontsize=8)
    exp.save_figure(fig, "exp3_ffn_as_memory.png")

    # ---- 结论（全部由测量算出；比较过噪声检验：多种子按种子配对，单种子按事实配对）----
    means = {w: mean_std(acc[w])[0] for w in widths}
    smallest, largest = ffn_widths[0], ffn_widths[-1]
    averaged = f"（每个种子 {replicates} 次初始化的平均）" if replicates > 1 else ""
    exp.conclude_verdict(f"FFN 越宽，背下的事实越多：宽度 {largest} 的回忆准确率高于宽度 {smallest}",
                         compare_runs(acc[largest], acc[smallest], "greater", per_fact[largest], per_fact[smallest]),
                         f"准确率{averaged}：" + "，".join(f"{w}: {means[w]:.3f}" for w in ffn_widths))
    exp.conclude_verdict("只有注意力（没有 FFN）几乎背不下这些随机事实：准确率不到最宽 FFN 的一半",
                         compare_runs([2 * a for a in acc[0]], acc[largest], "less",
                                      [2 * c for c in per_fact[0]], per_fact[largest]),
                         f"attention-only {means[0]:.3f} vs 宽度 {largest} {means[largest]:.3f}{averaged}；随机猜 {chance:.3f}"
                         f"（检验的是 2 × attention-only < 宽度 {largest}）")
    top1, rand = probe["top1_hit_rate"], probe["random_hit_rate"]
    exp.conclude_verdict("激活最强的神经元，其输出向量经解嵌入后推高这条事实的值的频率，高于随机神经元",
                         compare_runs(top1, rand, "greater", per_fact["top1_hits"], per_fact["random_hits"]),
                         f"宽度 {largest}，各种子：最强神经元命中 " + "，".join(f"{v:.3f}" for v in top1)
                         + "；随机神经元 " + "，".join(f"{v:.3f}" for v in rand)
                         + f"；第一个种子前 {TOP_K} 个中任一命中 {readout['topk_any_hit_rate']:.3f}")
    top_only = probe[f"top{TOP_K}_only_accuracy"]
    exp.conclude_verdict(f"记忆是分布式的：每条事实只保留激活最强的 {TOP_K} 个神经元（共 {largest} 个）时，"
                         "回忆准确率低于用全部神经元",
                         compare_runs(top_only, acc[largest], "less", per_fact["top_only"], per_fact[largest]),
                         f"宽度 {largest}，各种子：只保留 {TOP_K} 个 " + "，".join(f"{v:.3f}" for v in top_only)
                         + " vs 全部 " + "，".join(f"{v:.3f}" for v in acc[largest])
                         + f"；第一个种子最强神经元直接推高正确值的比例 {readout['top1_hit_rate']:.3f}")
    exp.finish()


if __name__ == "__main__":
    main()
