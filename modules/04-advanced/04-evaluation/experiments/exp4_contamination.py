"""实验 4：测试集污染——把一部分测试题泄漏进训练集，分数跳多少？能不能查出来？

设定（虚构事实题，eval_lab.fact_items）：每个种子造 --practice 条"训练事实"和 --test 道"测试题"（不同的人名）。
所有模型都在训练事实上训练（学会题目格式与地名）；泄漏率 r 的模型额外把 r 比例的测试题（连同正确答案，
与评测时模型看到的文字完全相同）混进训练集，重复次数与训练事实相同（eval_lab.REPEATS）。
没泄漏的测试题是随机造的事实，模型不可能会：它们的准确率就是"真实能力"≈ 瞎猜 1/4。
打分用 sum（lm-eval 的 acc，trainer/evaluation/multiple_choice.py）。
检测两种办法：
  n-gram 重叠（GPT-3、lm-eval 的 decontamination 的做法）：测试题文字里有多少个 N_GRAM 字符的片段在训练语料里出现过；
  Min-K% prob（Shi et al. 2023）：只看模型对这段文字最没把握的 K% 个 token 的平均对数概率——背过的文字连难 token 都不难。
  后者只需要模型，不需要训练语料：闭源模型也能查。
完整模式 3 个种子；quick 模式 1 个种子，噪声用逐题配对（unit="batches"）。

设计的修改（2026-12-06，看过 quick 的判定之后）：quick 原来每个模型只训练 300 步（完整 400 步）。seed 11 的普查里
"泄漏 50% 让总分上涨"未确立：300 步的模型还没背下泄漏的题（泄漏题准确率 0.433，总分 0.333 vs 0.250，Δ = +0.083，
2·SE = 0.105；种子 1 上早先也在噪声以内，0.358 vs 0.292）。要检验的是"逐字泄漏、模型背下了"的情形（完整模式 400 步时
泄漏题准确率 0.983），300 步落在刚开始背的边上，所以 quick 改成与完整模式一样训练 TRAIN_STEPS = 400 步
（同一种子 11：泄漏题 0.917，总分 0.592 vs 0.250，Δ = +0.342，2·SE = 0.117）。完整模式不变；quick 在种子 42、1、7、5
与没用过的 13 上各跑一次确认（结果见讲义实验 4）。
"""
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # eval_lab（目录名带连字符，不能当包导入）

import eval_lab  # noqa: E402  （它把仓库根目录放进 sys.path）
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from modules.common.experiment_base import Experiment, format_mean_std  # noqa: E402
from modules.common.noise import compare_runs  # noqa: E402
from modules.common.visualization import plt, set_style  # noqa: E402
from trainer.evaluation.multiple_choice import evaluate_mc  # noqa: E402

N_GRAM = 20         # 字符 n-gram 的长度（事先定的）
DIRTY_SHARE = 0.5   # 一道题有一半以上的 n-gram 在训练语料里出现过，就判为"脏"（事先定的）
MIN_K = 0.2         # Min-K% 的 K：取最低的 20% 个 token（Shi et al. 2023 的常用值）
TRAIN_STEPS = 400   # 每个模型的训练步数，quick 与完整相同：300 步时泄漏的题还没背下（见文件开头"设计的修改"）


def char_ngrams(text: str, n: int = N_GRAM) -> set:
    return {text[i:i + n] for i in range(len(text) - n + 1)}


def overlap_share(text: str, corpus_grams: set) -> float:
    """text 的字符 n-gram 里有多少比例出现在训练语料中。"""
    grams = char_ngrams(text)
    return len(grams & corpus_grams) / len(grams)


@torch.no_grad()
def token_logprobs(model, tokenizer, texts) -> list[list[float]]:
    """每段文字每个 token（BOS 之后）的 log p(token | 前文)。loglik.score_requests 只给出续写的总和，
    Min-K% 要逐 token 的值：一次前向，位置 t 的 log_softmax 取第 t+1 个 token（同 loglik 的移位）。"""
    out = []
    for text in texts:
        ids = torch.tensor([[tokenizer.bos_token_id] + tokenizer.encode(text)])  # (1, T)
        logprobs = F.log_softmax(model(ids).logits.float(), dim=-1)  # (1, T, V)
        out.append(logprobs[0, :-1].gather(1, ids[0, 1:, None])[:, 0].tolist())  # (T-1,)
    return out


def min_k_prob(logprobs: list[float], k: float = MIN_K) -> float:
    """Min-K% prob：最低的 k 比例个 token 对数概率的平均（越高越像"见过"）。"""
    worst = sorted(logprobs)[:max(1, int(len(logprobs) * k))]
    return float(np.mean(worst))


def auc(positive, negative) -> float:
    """ROC AUC = 随机取一个正样本、一个负样本，正样本分数更高的概率（平分算一半）。"""
    pos, neg = np.asarray(positive)[:, None], np.asarray(negative)[None, :]
    return float((pos > neg).mean() + 0.5 * (pos == neg).mean())


def main():
    def extra_args(parser):
        parser.add_argument("--practice", type=int, default=60, help="训练事实条数（默认 60）")
        parser.add_argument("--test", type=int, default=120, help="测试题数（默认 120）")
        parser.add_argument("--leak-rates", type=float, nargs="+", default=None,
                            help="泄漏率（默认 quick 0 0.5，完整 0 0.25 0.5）")
        parser.add_argument("--steps", type=int, default=TRAIN_STEPS, help=f"训练步数（默认 {TRAIN_STEPS}，quick 与完整相同）")

    exp = Experiment(__file__, description=(
        "评测实验 4：把测试题泄漏进训练集，看分数随泄漏率上涨多少；再用 n-gram 重叠和 Min-K% prob 把泄漏的题找出来。"),
        extra_args=extra_args)
    rates = sorted(set(exp.args.leak_rates or ([0.0, 0.5] if exp.quick else [0.0, 0.25, 0.5])))
    steps = exp.args.steps
    if rates[0] != 0.0 or not all(0 < r < 1 for r in rates[1:]):
        raise SystemExit(f"错误：--leak-rates 必须包含 0（干净的对照），其余在 (0, 1) 内，收到 {rates}")
    if exp.args.test < 20 or exp.args.practice < 20:
        raise SystemExit("错误：--test 与 --practice 至少 20")
    if steps < 1:
        raise SystemExit(f"错误：--steps 至少 1，收到 {steps}")
    tokenizer = eval_lab.samples_tokenizer()
    top = rates[-1]

    runs = []
    for seed in exp.seeds:
        facts = eval_lab.fact_items(exp.args.practice + exp.args.test, seed)
        practice, test = facts[:exp.args.practice], facts[exp.args.practice:]
        order = list(range(len(test)))
        random.Random(seed).shuffle(order)  # 泄漏哪些题：嵌套的前缀，r 小的泄漏集是 r 大的子集
        run = {"rates": {}}
        for rate in rates:
            leaked = set(order[:round(rate * len(test))])
            docs = [eval_lab.item_text(it) for it in practice] + [eval_lab.item_text(test[i]) for i in sorted(leaked)]
            exp.seed_everything(seed)
            model, _ = eval_lab.train_lm(tokenizer, eval_lab.token_stream(tokenizer, docs * eval_lab.REPEATS, seed),
                                         steps, seed, desc=f"seed {seed} leak {rate:g}")
            correct = [int(c) for c in evaluate_mc(model, tokenizer, test, modes=("sum",), batch_size=64,
                                                   max_len=128)["sum"]["correct"]]
            entry = {"leaked": sorted(leaked), "correct": correct, "acc": float(np.mean(correct)),
                     "acc_leaked": float(np.mean([correct[i] for i in leaked])) if leaked else None,
                     "acc_clean": float(np.mean([c for i, c in enumerate(correct) if i not in leaked]))}
            if rate == top:  # 检测只在泄漏最多的模型上做
                corpus = char_ngrams("\n".join(docs))
                texts = [eval_lab.item_text(it) for it in test]
                entry["overlap"] = [overlap_share(t, corpus) for t in texts]
                per_token = token_logprobs(model, tokenizer, texts)
                entry["min_k"] = [min_k_prob(lp) for lp in per_token]
                entry["mean_logprob"] = [float(np.mean(lp)) for lp in per_token]
            run["rates"][rate] = entry
        runs.append(run)
        print(f"种子 {seed}：" + "；".join(f"泄漏 {r:g} 总分 {e['acc']:.3f}" for r, e in run["rates"].items()))

    def at(rate, key):
        return [r["rates"][rate][key] for r in runs]

    rows = [[f"{rate:g}", format_mean_std(at(rate, "acc"), 3),
             format_mean_std(at(rate, "acc_leaked"), 3) if rate > 0 else "-", format_mean_std(at(rate, "acc_clean"), 3)]
            for rate in rates]
    exp.print_table(["leak rate", "benchmark acc", "acc on leaked items", "acc on clean items"], rows,
                    title="Score vs leak rate (sum scoring, random guess = 0.25)")

    det = []
    for r in runs:
        e = r["rates"][top]
        is_leaked = [i in set(e["leaked"]) for i in range(len(e["correct"]))]
        flagged = [o >= DIRTY_SHARE for o in e["overlap"]]
        split = {name: ([v for v, l in zip(e[name], is_leaked) if l], [v for v, l in zip(e[name], is_leaked) if not l])
                 for name in ("overlap", "min_k", "mean_logprob")}
        det.append({"flag_recall": float(np.mean([f for f, l in zip(flagged, is_leaked) if l])),
                    "flag_false_positive": float(np.mean([f for f, l in zip(flagged, is_leaked) if not l])),
                    "auc_overlap": auc(*split["overlap"]), "auc_min_k": auc(*split["min_k"]),
                    "auc_mean_logprob": auc(*split["mean_logprob"]),
                    "min_k_leaked": float(np.mean(split["min_k"][0])), "min_k_clean": float(np.mean(split["min_k"][1])),
                    "split": split})
    exp.print_table(["detector", "AUC leaked vs clean", "leaked mean", "clean mean"], [
        [f"{N_GRAM}-char n-gram overlap", format_mean_std([d["auc_overlap"] for d in det], 3),
         format_mean_std([np.mean(d["split"]["overlap"][0]) for d in det], 3),
         format_mean_std([np.mean(d["split"]["overlap"][1]) for d in det], 3)],
        [f"Min-{MIN_K:.0%} prob", format_mean_std([d["auc_min_k"] for d in det], 3),
         format_mean_std([d["min_k_leaked"] for d in det], 3), format_mean_std([d["min_k_clean"] for d in det], 3)],
        ["mean token log-prob", format_mean_std([d["auc_mean_logprob"] for d in det], 3),
         format_mean_std([np.mean(d["split"]["mean_logprob"][0]) for d in det], 3),
         format_mean_std([np.mean(d["split"]["mean_logprob"][1]) for d in det], 3)],
    ], title=f"Detecting the leaked items (model with leak rate {top:g})")

    set_style()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for name, key, style in (("benchmark", "acc", "o-"), ("clean items", "acc_clean", "s--")):
        axes[0].errorbar(rates, [np.mean(at(r, key)) for r in rates], yerr=[np.std(at(r, key)) for r in rates],
                         fmt=style, capsize=3, label=name)
    leaked_rates = rates[1:]
    axes[0].errorbar(leaked_rates, [np.mean(at(r, "acc_leaked")) for r in leaked_rates],
                     yerr=[np.std(at(r, "acc_leaked")) for r in leaked_rates], fmt="^:", capsize=3, label="leaked items")
    axes[0].axhline(0.25, color="gray", linestyle=":", label="random guess")
    axes[0].set(xlabel="share of test items leaked into training", ylabel="accuracy (sum scoring)", ylim=(0, 1.05),
                title="Contamination inflates the score")
    axes[0].legend(fontsize=8)
    d0 = det[0]["split"]["min_k"]
    bins = np.linspace(min(min(d0[0]), min(d0[1])), max(max(d0[0]), max(d0[1])), 25)
    axes[1].hist(d0[1], bins=bins, alpha=0.6, label="clean items")
    axes[1].hist(d0[0], bins=bins, alpha=0.6, label="leaked items")
    axes[1].set(xlabel=f"Min-{MIN_K:.0%} prob (mean log-prob of the hardest tokens)", ylabel="items",
                title=f"Min-K% prob separates leaked items (seed {exp.seeds[0]}, leak {top:g})")
    axes[1].legend(fontsize=8)
    exp.save_figure(fig, "exp4_contamination.png")

    exp.save_metrics({
        "config": {"practice": exp.args.practice, "test": exp.args.test, "leak_rates": rates, "steps": steps,
                   "repeats": eval_lab.REPEATS, "n_gram": N_GRAM, "dirty_share": DIRTY_SHARE, "min_k": MIN_K},
        "accuracy": {f"{r:g}": at(r, "acc") for r in rates},
        "accuracy_leaked": {f"{r:g}": at(r, "acc_leaked") for r in leaked_rates},
        "accuracy_clean": {f"{r:g}": at(r, "acc_clean") for r in rates},
        "detection": [{k: v for k, v in d.items() if k != "split"} for d in det],
        "scores_seed0": {k: {"leaked": v[0], "clean": v[1]} for k, v in det[0]["split"].items()},
    })

    single = len(exp.seeds) == 1
    first = runs[0]["rates"]
    exp.conclude_verdict(
        f"泄漏 {top:.0%} 的测试题让总分上涨（同一批题，与不泄漏的模型比）",
        compare_runs(at(top, "acc"), at(0.0, "acc"), "greater",
                     first[top]["correct"] if single else None, first[0.0]["correct"] if single else None),
        evidence=f"{format_mean_std(at(top, 'acc'), 3)} vs {format_mean_std(at(0.0, 'acc'), 3)}")
    leaked_ids = first[top]["leaked"]
    clean_ids = [i for i in range(len(first[top]["correct"])) if i not in set(leaked_ids)]
    n_pair = min(len(leaked_ids), len(clean_ids))  # quick 模式：泄漏题与干净题按随机顺序两两配对
    exp.conclude_verdict(
        "泄漏的题答得比没泄漏的题好（同一个模型）",
        compare_runs(at(top, "acc_leaked"), at(top, "acc_clean"), "greater",
                     [first[top]["correct"][i] for i in leaked_ids[:n_pair]] if single else None,
                     [first[top]["correct"][i] for i in clean_ids[:n_pair]] if single else None),
        evidence=f"泄漏题 {format_mean_std(at(top, 'acc_leaked'), 3)} vs 干净题 {format_mean_std(at(top, 'acc_clean'), 3)}"
                 "（干净题是随机造的事实，答对只能靠猜）")
    exp.conclude(
        f"{N_GRAM} 字符 n-gram 重叠（≥{DIRTY_SHARE:.0%} 判脏）查出了全部逐字泄漏的题",
        holds=all(d["flag_recall"] == 1.0 for d in det),
        evidence="；".join(f"种子 {s}：召回 {d['flag_recall']:.2f}" for s, d in zip(exp.seeds, det)))
    exp.conclude(
        "同一模板的短题会被 n-gram 重叠误判：一部分干净题也被判脏",
        holds=all(d["flag_false_positive"] > 0 for d in det),
        evidence="；".join(f"种子 {s}：干净题误报率 {d['flag_false_positive']:.2f}" for s, d in zip(exp.seeds, det))
                 + "（题干模板 \"Where does … live?\" 和地名在训练事实里都出现过）")
    leaked_mk = det[0]["split"]["min_k"][0]
    clean_mk = det[0]["split"]["min_k"][1]
    exp.conclude_verdict(
        "Min-K% prob 不看训练语料也能区分：泄漏题的分数高于干净题",
        compare_runs([d["min_k_leaked"] for d in det], [d["min_k_clean"] for d in det], "greater",
                     leaked_mk[:n_pair] if single else None, clean_mk[:n_pair] if single else None),
        evidence=f"Min-K% 平均 {format_mean_std([d['min_k_leaked'] for d in det], 3)} vs "
                 f"{format_mean_std([d['min_k_clean'] for d in det], 3)}；AUC {format_mean_std([d['auc_min_k'] for d in det], 3)}")
    exp.finish()


if __name__ == "__main__":
    main()
