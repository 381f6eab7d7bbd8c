"""实验 3：梯度累积与 batch 大小。

A. 梯度累积 k × b 与一次算 k·b 的大 batch，梯度在数值上相同吗？
   真实的 MiniMindForCausalLM，同一批数据，比较参数梯度的最大绝对差：
     - 仓库的 BPE 分词器 + dataset/lm_dataset.py::PretrainDataset（句子长短不一，padding 位置 labels=-100）：
         · 均值的均值：每个 micro-batch 的 loss / k（MiniMind 原版的做法）；
         · 按 token 数加权：每个 micro-batch 的 loss × (本 micro-batch 计 loss 的 token 数 / 全部计 loss 的 token 数)
           （本仓库 trainer/trainer_utils.py::accumulate_gradients 的做法）；
     - 字符级 TinyShakespeare（没有 padding，每个 micro-batch 的 token 数相同）：均值的均值。
B. 相同 token 预算下，不同 batch 大小的 loss 曲线：LR 按 √(batch / 基准 batch) 缩放（Adam 的平方根规则）。
   每个 batch 大小的 warmup+余弦按它自己的总步数排：在这组运行里比较"相同步数"，LR 调度与 batch 大小混在一起。
C. 相同步数、相同 LR 调度下的 batch 大小（McCandlish et al. 2018 与 Kaplan et al. 2020 说的"每步的 loss"）：
   batch 4 / 16 / 64 都训练基准 batch（16）在 B 部分的步数（quick 64 / 完整 192），峰值 LR 都是 BASE_LR，
   warmup+余弦按同样的步数排——唯一的差别是每步看到的样本数。步数取这么多，是因为 batch 的作用要在模型离开
   "只学到字符频率"（一元熵约 3.31）的平台之后才显出来：平台上的梯度方向很容易估计，小 batch 就够
   （McCandlish 等人的梯度噪声尺度随 loss 下降而增大）；开发时 quick 先按最大 batch 的 16 步试过，三者都还停在平台上
   （种子 42：3.357 / 3.364 / 3.317）。
"""
import math
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[4]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from dataset.lm_dataset import IGNORE_INDEX, PretrainDataset  # noqa: E402
from model.model_minimind import MiniMindConfig, MiniMindForCausalLM  # noqa: E402
from model.tokenization import load_tokenizer  # noqa: E402
from modules.common.datasets import get_experiment_data  # noqa: E402
from modules.common.experiment_base import Experiment, format_mean_std, mean_std  # noqa: E402
from modules.common.noise import compare_runs  # noqa: E402
from modules.common.text_data import char_lm_batches  # noqa: E402
from modules.common.training import evaluate_batches, train_model  # noqa: E402
from modules.common.visualization import set_style  # noqa: E402

HIDDEN, LAYERS, HEADS, KV_HEADS, BLOCK = 48, 2, 4, 2, 64
SAMPLES = REPO_ROOT / "dataset" / "samples" / "pretrain.jsonl"
ACCUM_MICRO, ACCUM_STEPS = 4, 4  # k = 4 个 micro-batch，每个 b = 4 条 → 等价 batch 16
BASE_BATCH, BASE_LR = 16, 4e-3  # LR 在 batch 16 上选定，其余 batch 按 √ 缩放
BATCH_SIZES = [4, 16, 64]
VAL_BATCH, VAL_BATCHES = 32, 4
FINAL_VAL_BATCHES = 8  # 训练结束后在同一组固定验证批上评估：各 batch 大小按批配对（单种子时的评估噪声）


def add_args(parser):
    parser.add_argument("--tokens", type=int, default=None,
                        help="B 部分每个 batch 大小的训练 token 预算（默认 quick 65536 / full 196608）")


def build_model(vocab_size: int) -> MiniMindForCausalLM:
    config = MiniMindConfig(hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                            num_key_value_heads=KV_HEADS, vocab_size=vocab_size, max_position_embeddings=256)
    return MiniMindForCausalLM(config)


def counted_tokens(labels: torch.Tensor) -> int:
    """计 loss 的位置数：模型用 labels[:, 1:] 与 logits[:, :-1] 对齐，-100 不计。"""
    return int((labels[:, 1:] != IGNORE_INDEX).sum())


def gradients(model) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in model.parameters()])  # (n_params,)


def full_batch_grad(model, input_ids, labels) -> torch.Tensor:
    model.zero_grad(set_to_none=True)
    model(input_ids, labels=labels).loss.backward()
    return gradients(model)


def accumulated_grad(model, input_ids, labels, k: int, token_weighted: bool) -> torch.Tensor:
    """把 (k·b, T) 切成 k 个 (b, T) 的 micro-batch，loss 反向传播 k 次、梯度累加，最后一次性取出。"""
    model.zero_grad(set_to_none=True)
    total = counted_tokens(labels)
    for ids, lab in zip(input_ids.chunk(k), labels.chunk(k)):  # 各 (b, T)
        loss = model(ids, labels=lab).loss  # 本 micro-batch 里计 loss 的 token 的平均
        weight = counted_tokens(lab) / total if token_weighted else 1.0 / k
        (loss * weight).backward()
    return gradients(model)


def grad_diff(g: torch.Tensor, ref: torch.Tensor) -> dict:
    return {"max_abs_diff": (g - ref).abs().max().item(),
            "rel_l2_diff": ((g - ref).norm() / ref.norm()).item()}


def accumulation_check(seed: int, text: str) -> dict:
    """A 部分：同一批数据，大 batch vs 梯度累积的三种情形。"""
    Experiment.seed_everything(seed)
    tokenizer = load_tokenizer()
    dataset = PretrainDataset(SAMPLES, tokenizer, max_seq_len=BLOCK)
    n = ACCUM_MICRO * ACCUM_STEPS
    idx = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:n].tolist()
    items = [dataset[i] for i in idx]
    input_ids = torch.stack([it["input_ids"] for it in items])  # (k·b, T)
    labels = torch.stack([it["labels"] for it in items])  # (k·b, T)，padding 处为 -100
    micro_tokens = [counted_tokens(lab) for lab in labels.chunk(ACCUM_STEPS)]

    model = build_model(tokenizer.vocab_size)
    ref = full_batch_grad(model, input_ids, labels)
    padded = {
        "mean of means": grad_diff(accumulated_grad(model, input_ids, labels, ACCUM_STEPS, False), ref),
        "token-weighted": grad_diff(accumulated_grad(model, input_ids, labels, ACCUM_STEPS, True), ref),
    }

    char_tok, get_batch = char_lm_batches(text, BLOCK, n, seed=seed)
    char_model = build_model(char_tok.vocab_size)
    char_ids, char_labels = get_batch("train")  # (k·b, T)，没有 -100
    char_ref = full_batch_grad(char_model, char_ids, char_labels)
    no_pad = grad_diff(accumulated_grad(char_model, char_ids, char_labels, ACCUM_STEPS, False), char_ref)
    return {"micro_batch_tokens": micro_tokens, "grad_norm": ref.norm().item(),
            "bpe_padded": padded, "char_no_padding_mean_of_means": no_pad}


def batch_size_run(seed: int, text: str, batch: int, steps: int, lr: float, device) -> dict:
    """用 batch 大小 batch、峰值 LR lr 训练 steps 步。验证批固定为 VAL_BATCH 条。

    warmup+余弦按 steps 排（train_model 的默认）：B 部分各 batch 的步数不同，"第 s 步"处在调度的不同位置；
    C 部分各 batch 的步数与 LR 相同，调度逐步相同。
    最终验证 loss 在 FINAL_VAL_BATCHES 个固定验证批上算（与 batch 大小、训练中评估了几次都无关），逐批值用于配对。"""
    Experiment.seed_everything(seed)
    tokenizer, train_batches = char_lm_batches(text, BLOCK, batch, seed=seed, device=device)
    _, val_batches = char_lm_batches(text, BLOCK, VAL_BATCH, seed=seed, device=device)

    def get_batch(split):
        return train_batches(split) if split == "train" else val_batches(split)

    model = build_model(tokenizer.vocab_size)
    hist = train_model(model, get_batch, steps=steps, lr=lr, eval_every=max(1, steps // 8),
                       eval_batches=VAL_BATCHES, device=device, desc=f"batch={batch} seed={seed}")
    if hist["diverged_at"] is not None:
        raise SystemExit(f"batch={batch}（seed={seed}）在第 {hist['diverged_at']} 步发散；请减小 BASE_LR")
    _, fixed_val = char_lm_batches(text, BLOCK, VAL_BATCH, seed=10_000 + seed, device=device)  # 每次新建：批相同
    final_batches = evaluate_batches(model, fixed_val, FINAL_VAL_BATCHES, device)
    return {"batch": batch, "lr": lr, "steps": steps, "tokens_per_step": batch * BLOCK,
            "val_steps": hist["val_steps"], "val_loss": hist["val_loss"],
            "final_val_loss": sum(final_batches) / len(final_batches), "final_val_batches": final_batches,
            "train_loss": hist["train_loss"], "lr_per_step": hist["lr"], "tokens_per_s": hist["tokens_per_s"],
            "wall_s": hist["wall_s"]}


def main():
    exp = Experiment(__file__, extra_args=add_args, description=(
        "预训练实验 3：梯度累积 k×b 与大 batch k·b 的梯度是否相同（含 padding 时要按 token 数加权），\n"
        "以及相同 token 预算下不同 batch 大小（LR 按 √ 缩放）的 loss 曲线。"))
    tokens = exp.args.tokens or (65_536 if exp.quick else 196_608)
    if tokens < max(BATCH_SIZES) * BLOCK * 10:
        raise SystemExit(f"--tokens 至少为 {max(BATCH_SIZES) * BLOCK * 10}（收到 {tokens}）：最大的 batch 也要训练 10 步")
    text = get_experiment_data("shakespeare")

    # ---- A：梯度累积（每个种子一份不同的数据和初始化）----
    checks = [accumulation_check(seed, text) for seed in exp.seeds]
    cases = {"BPE + padding, mean of means (upstream MiniMind)": [c["bpe_padded"]["mean of means"] for c in checks],
             "BPE + padding, token-weighted (as trainer/ does)": [c["bpe_padded"]["token-weighted"] for c in checks],
             "char, no padding, mean of means": [c["char_no_padding_mean_of_means"] for c in checks]}
    exp.print_table(["accumulation (k=4 x b=4 vs batch 16)", "max |grad diff|", "relative L2 diff"],
                    [[name, f"{max(d['max_abs_diff'] for d in ds):.2e}", f"{max(d['rel_l2_diff'] for d in ds):.2e}"]
                     for name, ds in cases.items()],
                    title=f"A. Gradient accumulation vs one big batch (worst over {len(checks)} seed(s))")
    print(f"（第一个种子里 4 个 micro-batch 计 loss 的 token 数：{checks[0]['micro_batch_tokens']}——"
          f"不相等，所以\"均值的均值\"给短句的 token 更大的权重）")

    # ---- B：batch 大小，相同 token 预算（LR 按 √batch 缩放）----
    runs = {b: [batch_size_run(seed, text, b, tokens // (b * BLOCK), BASE_LR * math.sqrt(b / BASE_BATCH), exp.device)
                for seed in exp.seeds] for b in BATCH_SIZES}
    final = {b: [r["final_val_loss"] for r in rs] for b, rs in runs.items()}
    s_max = runs[max(BATCH_SIZES)][0]["steps"]  # 最大 batch 的步数：在这一步比较"相同步数"

    # ---- C：batch 大小，相同步数（基准 batch 在 B 部分的步数）、相同 LR 调度（峰值 BASE_LR）----
    # 基准 batch 在 B 部分的那次运行（峰值 BASE_LR、steps_same 步）就是 C 部分要的那次，直接复用
    steps_same = runs[BASE_BATCH][0]["steps"]
    same_steps = {b: runs[b] if b == BASE_BATCH else
                  [batch_size_run(seed, text, b, steps_same, BASE_LR, exp.device) for seed in exp.seeds]
                  for b in BATCH_SIZES}
    final_same_steps = {b: [r["final_val_loss"] for r in rs] for b, rs in same_steps.items()}

    def train_loss_at(r, step):  # 第 step 步附近（最后 5 步）的平均训练 loss
        window = r["train_loss"][max(0, step - 5):step]
        return sum(window) / len(window)

    at_steps = {b: [train_loss_at(r, s_max) for r in rs] for b, rs in runs.items()}
    exp.print_table(["batch", "peak LR", "steps", "final val loss (same tokens)", f"train loss @ step {s_max}",
                     "tokens/s"],
                    [[b, f"{rs[0]['lr']:.2e}", rs[0]["steps"], format_mean_std(final[b]), format_mean_std(at_steps[b]),
                      f"{mean_std([r['tokens_per_s'] for r in rs])[0]:.0f}"] for b, rs in runs.items()],
                    title=f"B. Batch size at a fixed budget of {tokens} tokens (LR ∝ √batch)")
    exp.print_table(["batch", "peak LR", "steps", "tokens seen", f"final val loss (same {steps_same} steps)"],
                    [[b, f"{BASE_LR:.1e}", steps_same, steps_same * b * BLOCK, format_mean_std(final_same_steps[b])]
                     for b in BATCH_SIZES],
                    title=f"C. Batch size at the same {steps_same} steps and the same LR schedule (peak {BASE_LR:g})")

    exp.save_metrics({
        "model": {"hidden_size": HIDDEN, "num_layers": LAYERS, "n_heads": HEADS, "n_kv_heads": KV_HEADS,
                  "block_size": BLOCK},
        "accumulation": {"k": ACCUM_STEPS, "micro_batch": ACCUM_MICRO,
                         "max_abs_diff": {name: max(d["max_abs_diff"] for d in ds) for name, ds in cases.items()},
                         "rel_l2_diff": {name: max(d["rel_l2_diff"] for d in ds) for name, ds in cases.items()},
                         "per_seed": checks},
        "batch_sizes": {"tokens": tokens, "base_batch": BASE_BATCH, "base_lr": BASE_LR, "lr_scaling": "sqrt",
                        "final_val_loss": {str(b): mean_std(v)[0] for b, v in final.items()},
                        "final_val_loss_std": {str(b): mean_std(v)[1] for b, v in final.items()},
                        "compare_step": s_max,
                        "train_loss_at_compare_step": {str(b): mean_std(v)[0] for b, v in at_steps.items()},
                        "runs": {str(b): rs for b, rs in runs.items()}},
        "same_steps": {"steps": steps_same, "lr": BASE_LR,
                       "final_val_loss": {str(b): mean_std(v)[0] for b, v in final_same_steps.items()},
                       "final_val_loss_std": {str(b): mean_std(v)[1] for b, v in final_same_steps.items()},
                       "runs": {str(b): rs for b, rs in same_steps.items()}},
    })

    # ---- 图：左 累积误差（对数轴）；中 相同 token 预算的 val loss vs 已见 token；右 相同步数与调度的 val loss vs 步数 ----
    set_style()
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.5))
    names = list(cases)
    axes[0].bar(range(len(names)), [max(d["max_abs_diff"] for d in cases[n]) for n in names],
                color=["C3", "C2", "C0"])
    axes[0].axhline(1e-5, color="gray", ls="--", label="1e-5")
    axes[0].set_yscale("log")
    axes[0].set_xticks(range(len(names)), ["BPE+pad\nmean of means\n(upstream)", "BPE+pad\ntoken-weighted\n(trainer/)",
                                              "char\nmean of means"])
    axes[0].set_ylabel("max |grad(accum) - grad(big batch)|")
    axes[0].set_title("Gradient accumulation k=4 x b=4 vs batch 16")
    axes[0].legend(fontsize=8)
    for b, rs in runs.items():
        r = rs[0]
        val_mean = [sum(x["val_loss"][i] for x in rs) / len(rs) for i in range(len(r["val_loss"]))]
        axes[1].plot([(s + 1) * r["tokens_per_step"] for s in r["val_steps"]], val_mean, marker=".",
                     label=f"batch {b} (lr {r['lr']:.1e})")
    for b, rs in same_steps.items():
        r = rs[0]
        val_mean = [sum(x["val_loss"][i] for x in rs) / len(rs) for i in range(len(r["val_loss"]))]
        axes[2].plot([s + 1 for s in r["val_steps"]], val_mean, marker=".", label=f"batch {b}")
    axes[1].ticklabel_format(axis="x", style="sci", scilimits=(0, 0))
    axes[1].set_xlabel("tokens seen")
    axes[1].set_ylabel("val loss")
    axes[1].set_title("Same token budget: val loss vs tokens")
    axes[1].legend(fontsize=8)
    axes[2].set_xlabel("optimizer step")
    axes[2].set_ylabel(f"val loss (mean of {len(exp.seeds)} seed(s))")
    axes[2].set_title(f"Same {steps_same} steps, same LR schedule (peak {BASE_LR:g})")
    axes[2].legend(fontsize=8)
    exp.save_figure(fig, "exp3_batch_and_accumulation.png")

    # ---- 结论（全部由上面的测量算出）----
    diff = {n: max(d["max_abs_diff"] for d in cases[n]) for n in names}
    exp.conclude("按 token 数加权的梯度累积与大 batch 梯度相同（最大绝对差 < 1e-5）",
                 diff[names[1]] < 1e-5, f"最大绝对差 {diff[names[1]]:.2e}（梯度范数约 {checks[0]['grad_norm']:.3f}）")
    exp.conclude("有 padding（-100）时，\"均值的均值\"（loss / k）与大 batch 梯度不同：误差比按 token 加权大 100 倍以上",
                 diff[names[0]] > 100 * max(diff[names[1]], 1e-12),
                 f"均值的均值 {diff[names[0]]:.2e} vs 按 token 加权 {diff[names[1]]:.2e}")
    exp.conclude("没有 padding、每个 micro-batch token 数相同时，\"均值的均值\"就是精确的（< 1e-5）",
                 diff[names[2]] < 1e-5, f"字符级数据上最大绝对差 {diff[names[2]]:.2e}")
    fm = {b: mean_std(v)[0] for b, v in final.items()}
    # "batch 越小越低"是单调的顺序：每一对相邻的 batch 大小单独检验（多种子按种子配对，单种子按同一组固定验证批配对）
    for small, big in zip(BATCH_SIZES, BATCH_SIZES[1:]):
        exp.conclude_verdict(f"相同 token 预算下，batch {small}（{runs[small][0]['steps']} 步）的最终验证 loss 低于 "
                             f"batch {big}（{runs[big][0]['steps']} 步）",
                             compare_runs(final[small], final[big], "less", runs[small][0]["final_val_batches"],
                                          runs[big][0]["final_val_batches"]),
                             f"batch {small}: {fm[small]:.4f}，batch {big}: {fm[big]:.4f}")
    # 相同步数、相同 LR 调度：每一对相邻的 batch 大小单独检验（多种子按种子配对，单种子按同一组固定验证批配对）。
    # B 部分"第 s_max 步的训练 loss"不做结论：那里各 batch 的调度不同（第 s_max 步时最大的 batch 已退火完，
    # 小 batch 还在 warmup 附近），差别不能归给 batch 大小；表里与图里仍列出它作对照
    fs = {b: mean_std(v)[0] for b, v in final_same_steps.items()}
    for small, big in zip(BATCH_SIZES, BATCH_SIZES[1:]):
        exp.conclude_verdict(f"相同步数（{steps_same} 步）、相同 LR 调度（峰值 {BASE_LR:g}）下，batch {big} 的最终验证 loss "
                             f"低于 batch {small}",
                             compare_runs(final_same_steps[big], final_same_steps[small], "less",
                                          same_steps[big][0]["final_val_batches"],
                                          same_steps[small][0]["final_val_batches"]),
                             f"batch {small}: {fs[small]:.4f}，batch {big}: {fs[big]:.4f}"
                             f"（batch 大 4 倍，每步的 token 数 {small * BLOCK} → {big * BLOCK}）")
    exp.finish()


if __name__ == "__main__":
    main()
