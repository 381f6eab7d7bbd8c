"""实验 1：预训练的目标就是"下一个 token 的交叉熵"——它从 ln(V) 出发，一路降下去，生成的文本随之变像样。

真实的 MiniMindForCausalLM（小尺寸）在字符级 TinyShakespeare 上用 modules/common/training.py::train_model
（与 trainer/ 同一个 warmup + 余弦调度）训练：
  - 初始 loss 与 ln(V) 对比：随机初始化的模型 logits ≈ 0，预测近似均匀分布，交叉熵 = ln(V)；
  - loss vs 已见 token 数（训练 + 验证曲线）；
  - 沿途的几个检查点上用真实的 generate（贪心）续写同一个开头，并给出两个数字：
    该检查点的验证 loss，以及续写里不同的"训练集中出现过的英文单词"有多少个（和它们占不同词的比例）。
"""
import math
import re
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[4]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from model.model_minimind import MiniMindConfig, MiniMindForCausalLM  # noqa: E402
from modules.common.datasets import get_experiment_data  # noqa: E402
from modules.common.experiment_base import Experiment, format_mean_std, mean_std  # noqa: E402
from modules.common.text_data import char_lm_batches  # noqa: E402
from modules.common.training import train_model  # noqa: E402
from modules.common.visualization import set_style  # noqa: E402

HIDDEN, LAYERS, HEADS, KV_HEADS, BLOCK, BATCH, LR = 64, 2, 4, 2, 64, 16, 3e-3
PROMPT = "ROMEO:\n"
SAMPLE_CHARS = 160
WORD = re.compile(r"[A-Za-z]+")


def add_args(parser):
    parser.add_argument("--steps", type=int, default=None, help="训练步数，须是 16 的倍数（默认 quick 320 / full 960）")


def build_model(vocab_size: int) -> MiniMindForCausalLM:
    config = MiniMindConfig(hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                            num_key_value_heads=KV_HEADS, vocab_size=vocab_size, max_position_embeddings=256)
    return MiniMindForCausalLM(config)


def checkpoint_steps(steps: int) -> list[int]:
    """生成样本的检查点（已完成的更新步数）：0, steps/16, steps/8, steps/4, steps/2, steps——按 2 倍递增。"""
    return [0] + [steps // 2**k for k in (4, 3, 2, 1, 0)]


def valid_word_fraction(text: str, vocabulary: set[str]) -> float:
    """续写里出现的不同"词"（连续字母，小写）中，在训练文本里出现过的比例；一个词都没有时为 0。

    按不同的词（type）而不是出现次数计：贪心解码常把 "the the the" 复读下去，按次数算会虚高。
    """
    words = {w.lower() for w in WORD.findall(text)}
    return sum(w in vocabulary for w in words) / len(words) if words else 0.0


def distinct_valid_words(text: str, vocabulary: set[str]) -> int:
    """续写里出现的、训练文本中也有的不同的词的个数：从空行到复读 "the" 再到多样的真词，它一路变大。"""
    return len({w.lower() for w in WORD.findall(text)} & vocabulary)


@torch.no_grad()
def greedy_sample(model, tokenizer, device) -> str:
    prompt = torch.tensor([tokenizer.encode(PROMPT)], device=device)  # (1, P)
    # 字符级词表没有 EOS：eos_token_id=-1 永远不会出现，一直生成到 SAMPLE_CHARS 个字符
    out = model.generate(prompt, max_new_tokens=SAMPLE_CHARS, do_sample=False, eos_token_id=-1)  # (1, P + N)
    return tokenizer.decode(out[0, prompt.shape[1]:])


@torch.no_grad()
def mean_loss(model, get_batch, split: str, n_batches: int, device) -> float:
    model.eval()
    losses = [model(x.to(device), labels=y.to(device)).loss.item() for x, y in (get_batch(split) for _ in range(n_batches))]
    model.train()
    return sum(losses) / len(losses)


def train_with_samples(model, tokenizer, get_batch, steps, checkpoints, device, desc):
    """train_model 每 eval_every 步会取验证批做评估：在这一刻（模型刚更新完、处于 eval 模式）顺便生成样本。

    包装 get_batch 数训练批的个数就知道当前完成了多少步；不改训练循环本身，用的仍是 trainer/ 同款调度。
    """
    samples, done = {}, {"steps": 0}

    def get_batch_with_hook(split):
        if split == "train":
            done["steps"] += 1
        elif done["steps"] in checkpoints and done["steps"] not in samples:
            samples[done["steps"]] = greedy_sample(model, tokenizer, device)
        return get_batch(split)

    hist = train_model(model, get_batch_with_hook, steps=steps, lr=LR, eval_every=checkpoints[1], eval_batches=8,
                       device=device, desc=desc)
    return hist, samples


def main():
    exp = Experiment(__file__, extra_args=add_args, description=(
        "预训练实验 1：next-token 交叉熵从 ln(V) 出发下降；loss vs 已见 token、训练/验证曲线、\n"
        "沿途检查点的贪心续写（真实 generate）及其验证 loss 与合法单词比例。"))
    steps = exp.args.steps or (320 if exp.quick else 960)
    if steps < 16 or steps % 16:
        raise SystemExit(f"--steps 须是 16 的正整数倍（收到 {steps}）：检查点在 steps/16、steps/8 …… 处")
    text = get_experiment_data("shakespeare")
    checkpoints = checkpoint_steps(steps)
    tokens_per_step = BATCH * BLOCK

    runs = []  # 每个种子一项
    for seed in exp.seeds:
        Experiment.seed_everything(seed)
        tokenizer, get_batch = char_lm_batches(text, BLOCK, BATCH, seed=seed, device=exp.device)
        vocabulary = {w.lower() for w in WORD.findall(text[: int(len(text) * 0.9)])}  # 只用训练切分里的词
        model = build_model(tokenizer.vocab_size).to(exp.device)
        init_val = mean_loss(model, get_batch, "val", 8, exp.device)
        init_sample = greedy_sample(model, tokenizer, exp.device)
        hist, samples = train_with_samples(model, tokenizer, get_batch, steps, checkpoints, exp.device,
                                           desc=f"seed={seed}")
        if hist["diverged_at"] is not None:
            raise SystemExit(f"seed={seed} 在第 {hist['diverged_at']} 步发散；请减小学习率后重试")
        samples[0] = init_sample
        val_at = {s + 1: v for s, v in zip(hist["val_steps"], hist["val_loss"])}  # 完成 s+1 步之后的验证 loss
        val_at[0] = init_val
        runs.append({
            "seed": seed,
            "vocab_size": tokenizer.vocab_size,
            "initial_train_loss": hist["train_loss"][0],  # 第 0 步（尚未更新）的训练批 loss
            "initial_val_loss": init_val,
            "final_train_loss": sum(hist["train_loss"][-20:]) / len(hist["train_loss"][-20:]),
            "final_val_loss": hist["val_loss"][-1],
            "train_loss": hist["train_loss"],
            "val_steps": [0] + [s + 1 for s in hist["val_steps"]],
            "val_loss": [init_val] + hist["val_loss"],
            "checkpoints": [{"step": c, "tokens": c * tokens_per_step, "val_loss": val_at[c],
                             "valid_word_fraction": valid_word_fraction(samples[c], vocabulary),
                             "distinct_valid_words": distinct_valid_words(samples[c], vocabulary),
                             "sample": samples[c]}
                            for c in checkpoints],
            "tokens_per_s": hist["tokens_per_s"],
        })

    vocab_size = runs[0]["vocab_size"]
    ln_v = math.log(vocab_size)
    n_params = sum(p.numel() for p in build_model(vocab_size).parameters())
    init_vals = [r["initial_val_loss"] for r in runs]
    final_vals = [r["final_val_loss"] for r in runs]
    ckpt_val = [[r["checkpoints"][i]["val_loss"] for r in runs] for i in range(len(checkpoints))]
    ckpt_words = [[r["checkpoints"][i]["valid_word_fraction"] for r in runs] for i in range(len(checkpoints))]
    ckpt_distinct = [[r["checkpoints"][i]["distinct_valid_words"] for r in runs] for i in range(len(checkpoints))]

    exp.print_table(["quantity", "value"], [
        ["vocab size V", vocab_size], ["ln(V)", f"{ln_v:.4f}"],
        ["initial train loss (step 0)", format_mean_std([r["initial_train_loss"] for r in runs])],
        ["initial val loss", format_mean_std(init_vals)],
        ["final train loss (last 20 steps)", format_mean_std([r["final_train_loss"] for r in runs])],
        ["final val loss", format_mean_std(final_vals)],
        ["model parameters", n_params], ["tokens seen", steps * tokens_per_step],
    ], title=f"Next-token cross-entropy: MiniMind hidden {HIDDEN}, {LAYERS} layers, {len(exp.seeds)} seed(s)")
    exp.print_table(["step", "tokens seen", "val loss", "distinct valid words", "valid-word fraction"],
                    [[c, c * tokens_per_step, format_mean_std(ckpt_val[i]), format_mean_std(ckpt_distinct[i], 3),
                      format_mean_std(ckpt_words[i], 3)]
                     for i, c in enumerate(checkpoints)], title="Checkpoints along training")
    print(f"\n贪心续写（seed={runs[0]['seed']}，开头 {PROMPT!r}）：")
    for ck in runs[0]["checkpoints"]:
        print(f"--- step {ck['step']}（val loss {ck['val_loss']:.3f}，不同的合法词 {ck['distinct_valid_words']} 个，"
              f"合法词比例 {ck['valid_word_fraction']:.2f}）---")
        print(ck["sample"][:120].replace("\n", " / "))

    exp.save_metrics({
        "steps": steps,
        "model": {"hidden_size": HIDDEN, "num_layers": LAYERS, "n_heads": HEADS, "n_kv_heads": KV_HEADS,
                  "block_size": BLOCK, "batch_size": BATCH, "lr": LR, "params": n_params},
        "vocab_size": vocab_size, "ln_vocab": ln_v, "tokens_per_step": tokens_per_step,
        "initial_val_loss": {"mean": mean_std(init_vals)[0], "std": mean_std(init_vals)[1]},
        "final_val_loss": {"mean": mean_std(final_vals)[0], "std": mean_std(final_vals)[1]},
        "checkpoint_steps": checkpoints,
        "checkpoint_val_loss": [mean_std(v)[0] for v in ckpt_val],
        "checkpoint_valid_word_fraction": [mean_std(v)[0] for v in ckpt_words],
        "checkpoint_distinct_valid_words": [mean_std(v)[0] for v in ckpt_distinct],
        "runs": runs,
    })

    # ---- 图：左 loss vs 已见 token（训练 + 验证，虚线 ln V）；右 检查点的验证 loss 与合法词比例 ----
    set_style()
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    for r in runs:
        tokens = [(s + 1) * tokens_per_step for s in range(len(r["train_loss"]))]
        axes[0].plot(tokens, r["train_loss"], alpha=0.35, lw=0.8, label=f"train (seed {r['seed']})")
        axes[0].plot([s * tokens_per_step for s in r["val_steps"]], r["val_loss"], marker=".",
                     label=f"val (seed {r['seed']})")
    axes[0].axhline(ln_v, color="gray", ls="--", label=f"ln V = {ln_v:.2f}")
    axes[0].set_xlabel("tokens seen")
    axes[0].set_ylabel("cross-entropy (nats)")
    axes[0].set_title("Next-token loss vs tokens seen")
    axes[0].legend(fontsize=7)
    ck_tokens = [max(c, 0.5) * tokens_per_step for c in checkpoints]  # 对数轴上把第 0 步画在 0.5 步处
    axes[1].plot(ck_tokens, [mean_std(v)[0] for v in ckpt_val], marker="o", color="C0", label="val loss")
    axes[1].set_xscale("log")
    axes[1].set_xlabel("tokens seen (log; step 0 drawn at 0.5 step)")
    axes[1].set_ylabel("val loss", color="C0")
    twin = axes[1].twinx()
    twin.plot(ck_tokens, [mean_std(v)[0] for v in ckpt_distinct], marker="s", color="C3")
    twin.set_ylabel("distinct valid words in greedy sample", color="C3")
    twin.grid(False)
    axes[1].set_title("Checkpoints: val loss and sample quality")
    exp.save_figure(fig, "exp1_next_token_loss.png")

    # ---- 结论（全部由上面的测量算出）----
    init_mean, final_mean = mean_std(init_vals)[0], mean_std(final_vals)[0]
    rel = abs(init_mean - ln_v) / ln_v
    exp.conclude("随机初始化的模型，初始 loss ≈ ln(V)（相对误差 < 5%）",
                 rel < 0.05, f"初始验证 loss {init_mean:.4f} vs ln({vocab_size}) = {ln_v:.4f}，相对误差 {rel:.2%}")
    exp.conclude("训练后验证 loss 远低于 ln(V)（至少低 30%）",
                 final_mean < 0.7 * ln_v, f"最终验证 loss {final_mean:.4f} = ln V 的 {final_mean / ln_v:.0%}")
    means = [mean_std(v)[0] for v in ckpt_val]
    exp.conclude("沿途检查点的验证 loss 单调下降",
                 all(b < a for a, b in zip(means, means[1:])),
                 "检查点验证 loss：" + " → ".join(f"{c}:{m:.3f}" for c, m in zip(checkpoints, means)))
    distinct = [mean_std(v)[0] for v in ckpt_distinct]
    words = [mean_std(v)[0] for v in ckpt_words]
    exp.conclude("生成文本变像样：最后检查点的续写比前半程任何检查点都含有更多不同的合法英文单词",
                 distinct[-1] > max(distinct[:len(distinct) // 2]),
                 "不同的合法词个数：" + " → ".join(f"{c}:{d:.1f}" for c, d in zip(checkpoints, distinct))
                 + f"；合法词比例 step 0: {words[0]:.2f} → step {checkpoints[-1]}: {words[-1]:.2f}"
                 "（贪心解码爱复读，这只是粗略的质量指标）")
    exp.finish()


if __name__ == "__main__":
    main()
