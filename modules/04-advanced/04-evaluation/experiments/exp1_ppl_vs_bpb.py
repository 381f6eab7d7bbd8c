"""实验 1：困惑度不能跨分词器比较——同一段留出文本，不同词表的模型，按 token 困惑度和按 bits per byte 排名。

每个词表大小 V：用 trainer/train_tokenizer.py 在 TinyShakespeare 前 90% 上训练字节级 BPE（V=259 就是纯字节：
256 个字节 + 3 个特殊 token，没有合并），再在同一份训练文本上训练同样大小的 LabModel，
训练预算相同（同样的步数、每步同样多的 token）——这是"同样算力"的比较，词表大的模型每步看到的文字更多。
评测用 trainer/evaluation/perplexity.py::evaluate_text（滑动窗口），在后 10% 的留出文本上：
  token 困惑度 ppl = exp(NLL / token 数)          分母随分词器变
  bpb            = NLL / (ln 2 × 字节数)          分母是文字本身，可以跨分词器比较
留出文本切成 --docs 段，每段单独评测：quick 模式（1 个种子）用逐段配对作噪声（unit="batches"），完整模式 3 个种子。
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # eval_lab（目录名带连字符，不能当包导入）

import eval_lab  # noqa: E402  （它把仓库根目录放进 sys.path）
import numpy as np  # noqa: E402

from modules.common.experiment_base import Experiment, format_mean_std  # noqa: E402
from modules.common.noise import compare_runs  # noqa: E402
from modules.common.visualization import plt, set_style  # noqa: E402
from trainer.evaluation.perplexity import evaluate_text  # noqa: E402

EVAL_MAX_LEN = 128  # 评测窗口（token）；训练窗口是 eval_lab.train_lm 的 block=64


def held_out_docs(test_text: str, n_docs: int, chars: int) -> list[str]:
    """留出文本的前 n_docs × chars 个字符，按行边界切成 n_docs 段。"""
    docs, start = [], 0
    for _ in range(n_docs):
        end = test_text.index("\n", start + chars) + 1
        docs.append(test_text[start:end])
        start = end
    return docs


def main():
    def extra_args(parser):
        parser.add_argument("--vocab-sizes", type=int, nargs="+", default=None,
                            help="词表大小（≥ 259；默认 259 2048）")
        parser.add_argument("--steps", type=int, default=None, help="每个模型的训练步数（默认 quick 250，完整 300）")
        parser.add_argument("--docs", type=int, default=None, help="留出文本切成几段评测（默认 quick 8，完整 16）")

    exp = Experiment(__file__, description=(
        "评测实验 1：同一段文字，不同词表的模型——token 困惑度说小词表好，bits per byte 说什么？"), extra_args=extra_args)
    vocabs = sorted(set(exp.args.vocab_sizes or [259, 2048]))
    steps = exp.args.steps or (250 if exp.quick else 300)
    n_docs = exp.args.docs or (8 if exp.quick else 16)
    if vocabs[0] < 259 or len(vocabs) < 2:
        raise SystemExit(f"错误：--vocab-sizes 至少两个、每个 ≥ 259（256 个字节 + 3 个特殊 token），收到 {vocabs}")
    train_text, test_text = eval_lab.shakespeare_split()
    docs = held_out_docs(test_text, n_docs, 3000)
    n_bytes = sum(len(d.encode("utf-8")) for d in docs)
    print(f"留出文本：{n_docs} 段，共 {n_bytes} 字节")

    tokenizers = {v: eval_lab.bpe_tokenizer(train_text, v) for v in vocabs}
    paragraphs = [p for p in train_text.split("\n\n") if p.strip()]
    results = {v: [] for v in vocabs}  # 每个种子：{ppl, bpb, tokens, per_doc_ppl, per_doc_bpb}
    for seed in exp.seeds:
        for v, tok in tokenizers.items():
            exp.seed_everything(seed)
            model, _ = eval_lab.train_lm(tok, eval_lab.token_stream(tok, paragraphs, seed), steps, seed,
                                         max_seq_len=EVAL_MAX_LEN, desc=f"V={v} seed {seed}")
            per_doc = [evaluate_text(model, tok, [d], max_len=EVAL_MAX_LEN, batch_size=32) for d in docs]
            whole = evaluate_text(model, tok, docs, max_len=EVAL_MAX_LEN, batch_size=32)
            results[v].append({"ppl": whole["ppl"], "bpb": whole["bpb"], "bits_per_token": whole["bits_per_token"],
                               "tokens": whole["tokens"], "per_doc_ppl": [r["ppl"] for r in per_doc],
                               "per_doc_bpb": [r["bpb"] for r in per_doc]})
            print(f"种子 {seed} V={v}：ppl {whole['ppl']:.2f}，bpb {whole['bpb']:.3f}，{whole['tokens']} token")

    def values(v, key):
        return [r[key] for r in results[v]]

    rows = [[v, tokenizers[v].vocab_size, results[v][0]["tokens"], f"{n_bytes / results[v][0]['tokens']:.2f}",
             format_mean_std(values(v, "ppl")), format_mean_std(values(v, "bits_per_token"), 3),
             format_mean_std(values(v, "bpb"), 3)] for v in vocabs]
    exp.print_table(["V", "actual V", "held-out tokens", "bytes/token", "token ppl", "bits/token", "bits/byte"],
                    rows, title=f"Same held-out text ({n_bytes} bytes), {steps} training steps each")
    by_ppl = sorted(vocabs, key=lambda v: np.mean(values(v, "ppl")))
    by_bpb = sorted(vocabs, key=lambda v: np.mean(values(v, "bpb")))
    print(f"按 token 困惑度排名（好→差）：{by_ppl}；按 bpb：{by_bpb}")

    set_style()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    x = np.arange(len(vocabs))
    for ax, key, label in ((axes[0], "ppl", "token perplexity (lower = better?)"),
                           (axes[1], "bpb", "bits per byte (lower = better)")):
        ax.bar(x, [np.mean(values(v, key)) for v in vocabs], yerr=[np.std(values(v, key)) for v in vocabs],
               capsize=4, color=[f"C{i}" for i in range(len(vocabs))])
        ax.set_xticks(x, [f"V={v}" for v in vocabs])
        ax.set(ylabel=label, title=label.split(" (")[0])
    axes[0].set_yscale("log")
    fig.suptitle(f"Same text, same training budget ({steps} steps x 16 x 64 tokens)")
    exp.save_figure(fig, "exp1_ppl_vs_bpb.png")

    exp.save_metrics({"config": {"vocab_sizes": vocabs, "steps": steps, "docs": n_docs, "bytes": n_bytes,
                                 "eval_max_len": EVAL_MAX_LEN},
                      "results": {str(v): results[v] for v in vocabs}, "rank_by_ppl": by_ppl, "rank_by_bpb": by_bpb})

    small, big = vocabs[0], vocabs[-1]
    single = len(exp.seeds) == 1
    exp.conclude(f"词表越大，同一段文字切出的 token 越少（{small} → {big}）",
                 holds=all(results[a][0]["tokens"] > results[b][0]["tokens"] for a, b in zip(vocabs, vocabs[1:])),
                 evidence=" → ".join(f"V={v}: {results[v][0]['tokens']}" for v in vocabs) + " token")
    identity = max(abs(r["ppl"] - 2 ** (r["bpb"] * n_bytes / r["tokens"])) / r["ppl"] for v in vocabs for r in results[v])
    exp.conclude("换算关系 ppl = 2^(bpb × 字节数 / token 数) 对每个模型都成立：两者只差一个取决于分词器的指数",
                 holds=identity < 1e-6, evidence=f"最大相对误差 {identity:.1e}")
    exp.conclude_verdict(
        f"按 token 困惑度，V={small} 的模型\"更好\"（ppl 比 V={big} 低）",
        compare_runs(values(small, "ppl"), values(big, "ppl"), "less",
                     results[small][0]["per_doc_ppl"] if single else None, results[big][0]["per_doc_ppl"] if single else None),
        evidence=f"ppl {format_mean_std(values(small, 'ppl'))} vs {format_mean_std(values(big, 'ppl'))}")
    exp.conclude_verdict(
        f"按 bits per byte，排名反过来：V={big} 的模型更好（bpb 比 V={small} 低）",
        compare_runs(values(big, "bpb"), values(small, "bpb"), "less",
                     results[big][0]["per_doc_bpb"] if single else None, results[small][0]["per_doc_bpb"] if single else None),
        evidence=f"bpb {format_mean_std(values(big, 'bpb'), 3)} vs {format_mean_std(values(small, 'bpb'), 3)}"
                 f"（同样的训练预算，V={big} 每步看到约 {n_bytes / results[big][0]['tokens']:.1f} 倍字节/token 的文字）")
    exp.finish()


if __name__ == "__main__":
    main()
