"""采样速度：一组 G 条回答放进一个 batch 一次生成，对比逐条生成 G 次（同一个 prompt、同样的 token 数）。

    python -m trainer.rl.bench_rollout                       # --quick 的尺寸（hidden 128、2 层）
    python -m trainer.rl.bench_rollout --hidden_size 512 --num_hidden_layers 8   # MiniMind2-Small 的尺寸

两种方式在同一进程里交替计时（各取最快的一轮），报告每秒生成的 token 数和倍数。
关掉 EOS（eos_token_id=-1），每条回答都恰好生成 --max_new_tokens 个 token，两边的工作量完全相同。
"""
import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

from model.model_minimind import MiniMindConfig, MiniMindForCausalLM  # noqa: E402
from model.tokenization import load_tokenizer  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hidden_size", type=int, default=128)
    p.add_argument("--num_hidden_layers", type=int, default=2)
    p.add_argument("--vocab_size", type=int, default=None, help="默认：仓库自带分词器的词表（--quick 模型用的就是它）")
    p.add_argument("--group", type=int, default=8, help="G：一组几条回答")
    p.add_argument("--prompt_len", type=int, default=24)
    p.add_argument("--max_new_tokens", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3, help="交替计时几轮（各取最快）")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv=None):
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    vocab = args.vocab_size or load_tokenizer().vocab_size
    model = MiniMindForCausalLM(MiniMindConfig(hidden_size=args.hidden_size, num_hidden_layers=args.num_hidden_layers,
                                               vocab_size=vocab)).eval()
    prompt = torch.randint(3, vocab, (1, args.prompt_len))
    kwargs = dict(max_new_tokens=args.max_new_tokens, do_sample=True, temperature=1.0, eos_token_id=-1)

    def batched():
        model.generate(prompt.repeat(args.group, 1), **kwargs)

    def one_by_one():
        for _ in range(args.group):
            model.generate(prompt, **kwargs)

    batched(), one_by_one()  # 预热
    best = {"batched": float("inf"), "single": float("inf")}
    for _ in range(args.rounds):  # 交替：机器忙闲的变化两边都受到
        best["batched"] = min(best["batched"], timed(batched))
        best["single"] = min(best["single"], timed(one_by_one))
    tokens = args.group * args.max_new_tokens
    rate = {k: tokens / v for k, v in best.items()}
    print(f"模型 hidden={args.hidden_size}、{args.num_hidden_layers} 层、词表 {vocab}；一组 G={args.group} 条，每条 {args.max_new_tokens} 个新 token，"
          f"prompt {args.prompt_len} 个 token；torch 线程数 {torch.get_num_threads()}")
    print(f"一个 batch 生成整组：{rate['batched']:,.0f} tokens/s")
    print(f"逐条生成 {args.group} 次：   {rate['single']:,.0f} tokens/s")
    print(f"batch 快 {rate['batched'] / rate['single']:.1f} 倍")
    return rate


if __name__ == "__main__":
    main()
