"""实验 2：词表该多大？压缩率、序列长度与嵌入参数之间的权衡。

用仓库的 trainer/train_tokenizer.py::train_tokenizer 在两份语料上训练不同词表大小的字节级 BPE：
  - samples：dataset/samples 的 pretrain + sft + dpo（中英混合，约 87 KB；合并到 ~2364 个 token 就用完了）；
  - shakespeare：TinyShakespeare 前 90%（纯英文，约 1 MB），后 10% 留作测试。
在留出文本上量：
  - chars/token（每个 token 平均覆盖几个字符；越大越省序列长度）：中文（lora_identity 里的中文句子）、
    英文（lora_identity 里的英文句子、Shakespeare 后 10%）；
  - 一段固定文本（Shakespeare 留出部分的前 2000 个字符）切出多少 token；
  - MiniMind2-26M（MiniMindForCausalLM(MiniMindConfig(vocab_size=V))，嵌入与 lm_head 共享）里嵌入占多少参数。
若 ../shared/fixtures/minimind_tokenizer 存在（只在开发机上有），顺带量 MiniMind 官方 6400 词表的 chars/token。
BPE 训练是确定性的（没有随机数），所以完整模式也只跑一次。
"""
import math
import re
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[4]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from model.model_minimind import MiniMindConfig, MiniMindForCausalLM  # noqa: E402
from model.tokenization import TokenizerError, load_tokenizer  # noqa: E402
from modules.common.datasets import get_experiment_data  # noqa: E402
from modules.common.experiment_base import Experiment  # noqa: E402
from modules.common.visualization import set_style  # noqa: E402
from trainer.train_tokenizer import DEFAULT_DATA, iter_texts, train_tokenizer  # noqa: E402

HELD_OUT = REPO_ROOT / "dataset" / "samples" / "lora_identity.jsonl"
OFFICIAL_TOKENIZER = REPO_ROOT.parent / "shared" / "fixtures" / "minimind_tokenizer"
CJK = re.compile(r"[\u4e00-\u9fff]")
FIXED_TEXT_CHARS = 2000
MINIMIND_VOCAB = 6400
# 参数占比另外再看几个常见的大词表：Llama-1/2 32000、Llama-3 128256、Qwen2 151936
REFERENCE_VOCABS = (259, 1000, 2000, 4000, 6400, 16000, 32000, 64000, 128256, 151936)


def chars_per_token(tokenizer, texts) -> float:
    """留出文本的总字符数 / 总 token 数。"""
    n_chars = sum(len(t) for t in texts)
    n_tokens = sum(len(tokenizer.encode(t)) for t in texts)
    return n_chars / n_tokens


def embedding_share(vocab_size: int) -> dict:
    """MiniMind2-26M 换成词表 V 后的参数量与嵌入占比（嵌入与 lm_head 共享一个 V×H 矩阵，只算一次）。
    在 meta 设备上构造：只有形状、不分配内存，15 万词表也是瞬间完成。"""
    with torch.device("meta"):
        model = MiniMindForCausalLM(MiniMindConfig(vocab_size=vocab_size))
    total = sum(p.numel() for p in model.parameters())  # parameters() 对共享的权重只数一次
    embedding = model.model.embed_tokens.weight.numel()
    return {"vocab_size": vocab_size, "total": total, "embedding": embedding, "share": embedding / total}


def main():
    def extra_args(parser):
        parser.add_argument("--vocab-sizes", type=int, nargs="+", default=None,
                            help="目标词表大小（含 3 个特殊 token，每个 ≥ 259；默认 quick 259 1000 2000 6400 16000，"
                                 "完整再加 512 4000 8000 32000）")
        parser.add_argument("--official-tokenizer", type=Path, default=OFFICIAL_TOKENIZER,
                            help="MiniMind 官方分词器目录（可选；不存在就跳过这一项对比）")

    exp = Experiment(__file__, description=(
        "分词器实验 2：词表越大，每个 token 覆盖的字符越多、序列越短，但嵌入矩阵越大；\n"
        "量化这笔账，看 MiniMind2-26M 为什么用 6400。"), extra_args=extra_args)
    targets = exp.args.vocab_sizes or ([259, 1000, 2000, 6400, 16000] if exp.quick
                                       else [259, 512, 1000, 2000, 4000, 6400, 8000, 16000, 32000])
    if min(targets) < 259:
        raise SystemExit(f"错误：--vocab-sizes 每个都必须 ≥ 259（256 个字节 + 3 个特殊 token），收到 {min(targets)}")
    targets = sorted(set(targets))

    held_out = list(iter_texts([HELD_OUT]))
    eval_sets = {
        "zh (samples held-out)": [t for t in held_out if CJK.search(t)],
        "en (samples held-out)": [t for t in held_out if not CJK.search(t)],
    }
    shakespeare = get_experiment_data("shakespeare")
    split = int(0.9 * len(shakespeare))
    eval_sets["en (Shakespeare held-out)"] = [line for line in shakespeare[split:].splitlines() if line.strip()]
    fixed_text = shakespeare[split:split + FIXED_TEXT_CHARS]
    print("留出文本：" + "；".join(f"{name} {sum(len(t) for t in texts)} 字符" for name, texts in eval_sets.items()))

    rows, results = [], []
    with tempfile.TemporaryDirectory() as tmp:
        shakespeare_train = Path(tmp) / "shakespeare_train.txt"
        shakespeare_train.write_text(shakespeare[:split], encoding="utf-8")
        corpora = {"samples": DEFAULT_DATA, "shakespeare": [shakespeare_train]}
        jobs = [(corpus, v) for corpus in corpora for v in targets]
        for corpus, target in tqdm(jobs, desc="train BPE", leave=False):
            tok = train_tokenizer(corpora[corpus], target)
            cpt = {name: chars_per_token(tok, texts) for name, texts in eval_sets.items()}
            results.append({"corpus": corpus, "target": target, "vocab_size": tok.vocab_size,
                            "chars_per_token": cpt, "fixed_text_tokens": len(tok.encode(fixed_text)),
                            "embedding_share": embedding_share(tok.vocab_size)["share"]})
            rows.append([corpus, target, tok.vocab_size, *cpt.values(), len(tok.encode(fixed_text)),
                         f"{results[-1]['embedding_share']:.1%}"])

    official = None
    if exp.args.official_tokenizer.is_dir():
        try:
            tok = load_tokenizer(exp.args.official_tokenizer)
        except TokenizerError as e:
            raise SystemExit(f"错误：--official-tokenizer 无法加载：{e}")
        official = {"vocab_size": tok.vocab_size,
                    "chars_per_token": {name: chars_per_token(tok, texts) for name, texts in eval_sets.items()},
                    "fixed_text_tokens": len(tok.encode(fixed_text))}
        rows.append(["MiniMind official", "-", tok.vocab_size, *official["chars_per_token"].values(),
                     official["fixed_text_tokens"], f"{embedding_share(tok.vocab_size)['share']:.1%}"])
    else:
        print(f"（没有找到 {exp.args.official_tokenizer}，跳过与 MiniMind 官方分词器的对比）")
    exp.print_table(["corpus", "target V", "actual V", *[f"chars/tok {n}" for n in eval_sets],
                     f"tokens({FIXED_TEXT_CHARS} chars)", "emb share"], rows, title="Vocab size trade-off")

    shares = [embedding_share(v) for v in REFERENCE_VOCABS]
    exp.print_table(["V", "total params", "embedding params", "embedding share"],
                    [[s["vocab_size"], f"{s['total'] / 1e6:.2f}M", f"{s['embedding'] / 1e6:.2f}M", f"{s['share']:.1%}"]
                     for s in shares], title="MiniMind2-26M (hidden 512, 8 layers, tied embeddings) with vocab V")

    # 每份语料、每个"语料内"的留出集：实际词表大小不同的点，chars/token 是否随 V 单调上升
    in_domain = {"samples": ("zh (samples held-out)", "en (samples held-out)"),
                 "shakespeare": ("en (Shakespeare held-out)",)}
    curves = {}
    for corpus, names in in_domain.items():
        points = {}
        for r in results:
            if r["corpus"] == corpus:
                points[r["vocab_size"]] = r  # 目标超过语料能合并的上限时，实际 V 相同，只留一个点
        for name in names:
            curves[f"{corpus} -> {name}"] = sorted((v, r["chars_per_token"][name]) for v, r in points.items())
    zh_out_of_domain = [r["chars_per_token"]["zh (samples held-out)"] for r in results if r["corpus"] == "shakespeare"]
    samples_max_v = max(r["vocab_size"] for r in results if r["corpus"] == "samples")
    share_6400 = embedding_share(MINIMIND_VOCAB)
    share_32000 = embedding_share(32000)

    set_style()
    fig, axes = plt.subplots(1, 2, figsize=(12.5, 4.4))
    for label, points in curves.items():
        axes[0].plot([v for v, _ in points], [c for _, c in points], "o-", label=label)
    sh = sorted({r["vocab_size"]: r["chars_per_token"]["zh (samples held-out)"]
                 for r in results if r["corpus"] == "shakespeare"}.items())
    axes[0].plot([v for v, _ in sh], [c for _, c in sh], "x--", color="gray", label="shakespeare -> zh (out of domain)")
    if official:
        for name, marker in (("zh (samples held-out)", "*"), ("en (samples held-out)", "P")):
            axes[0].plot([official["vocab_size"]], [official["chars_per_token"][name]], marker, color="black",
                         markersize=12, label=f"MiniMind official -> {name}")
    axes[0].set(xscale="log", xlabel="actual vocab size", ylabel="characters per token (held-out)",
                title="Bigger vocab -> fewer tokens per text")
    axes[0].legend(fontsize=7)
    axes[1].plot([s["vocab_size"] for s in shares], [100 * s["share"] for s in shares], "o-")
    axes[1].axvline(MINIMIND_VOCAB, color="red", linestyle=":", label=f"MiniMind V={MINIMIND_VOCAB}")
    axes[1].set(xscale="log", xlabel="vocab size V", ylabel="embedding share of params (%)",
                title="MiniMind2-26M: embedding share vs V")
    axes[1].legend()
    exp.save_figure(fig, "exp2_vocab_size_tradeoff.png")

    exp.save_metrics({
        "targets": targets, "results": results, "official": official,
        "eval_chars": {name: sum(len(t) for t in texts) for name, texts in eval_sets.items()},
        "fixed_text_chars": len(fixed_text), "curves": {k: [list(p) for p in v] for k, v in curves.items()},
        "samples_max_vocab": samples_max_v, "embedding_shares": shares,
        "embedding_share_6400": share_6400, "embedding_share_32000": share_32000,
    })

    increasing = {k: all(b[1] > a[1] for a, b in zip(p, p[1:])) for k, p in curves.items() if len(p) > 1}
    exp.conclude("在语料内的留出文本上，词表越大，每个 token 覆盖的字符越多（chars/token 单调上升）",
                 holds=bool(increasing) and all(increasing.values()),
                 evidence="；".join(f"{k}: " + " → ".join(f"{v}:{c:.2f}" for v, c in curves[k]) for k in increasing))
    exp.conclude("小语料撑不起大词表：samples 语料合并到上限后，再调大目标词表也不会变大",
                 holds=samples_max_v < max(targets),
                 evidence=f"目标最大 {max(targets)}，samples 实际最大 {samples_max_v}")
    sh_curve = curves["shakespeare -> en (Shakespeare held-out)"]
    if len(sh_curve) >= 3:
        def gain_per_doubling(a, b):  # chars/token 的增长倍数，折算到"词表每翻一倍"
            return (b[1] / a[1]) ** (1 / math.log2(b[0] / a[0]))
        first_gain, last_gain = gain_per_doubling(*sh_curve[:2]), gain_per_doubling(*sh_curve[-2:])
        exp.conclude("收益递减：越往后，词表每翻一倍换来的压缩越少",
                     holds=last_gain < first_gain,
                     evidence=f"Shakespeare：V {sh_curve[0][0]}→{sh_curve[1][0]} 每翻一倍 chars/token ×{first_gain:.2f}，"
                              f"V {sh_curve[-2][0]}→{sh_curve[-1][0]} 每翻一倍 ×{last_gain:.2f}")
    samples_zh = max(c for _, c in curves["samples -> zh (samples held-out)"])
    exp.conclude("只在英文上训练的分词器几乎不压缩中文：chars/token 不到中英语料分词器的一半",
                 holds=max(zh_out_of_domain) < 0.5 * samples_zh,
                 evidence=f"中文留出集 chars/token：shakespeare 分词器最高 {max(zh_out_of_domain):.2f}，"
                          f"samples 分词器 {samples_zh:.2f}；shakespeare 分词器最小词表时 {min(zh_out_of_domain):.2f}")
    exp.conclude("MiniMind2-26M 用 6400 词表时嵌入只占约 1/8 参数；换成 32000 会超过 1/3",
                 holds=share_6400["share"] < 0.15 and share_32000["share"] > 1 / 3,
                 evidence=f"V=6400：{share_6400['embedding'] / 1e6:.2f}M / {share_6400['total'] / 1e6:.2f}M = "
                          f"{share_6400['share']:.1%}；V=32000：{share_32000['share']:.1%}")
    exp.finish()


if __name__ == "__main__":
    main()
