"""基准（不是测试）：经 API 服务流式拿到的 tokens/s 与首 token 时间，对比进程内直接 model.generate。

    python scripts/bench_serve.py --random_init                     # 随机初始化的 MiniMind2-26M 形状（不需要权重）
    python scripts/bench_serve.py --quick                           # --quick 训练出的小模型
    python scripts/bench_serve.py --random_init --family minimind3 --max_new_tokens 256 --rounds 5

同一个进程里交替计时（进程内一次、经服务一次，重复 --rounds 轮，取中位数），同样的提示、同样的长度
（贪心 + ignore_eos，两边都恰好生成 --max_new_tokens 个 token）。服务跑在本进程的后台线程里、监听 127.0.0.1，
客户端用 requests 逐行读 SSE——HTTP、JSON、增量解码的开销都算在"经服务"里。
"""
import argparse
import json
import socket
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import requests  # noqa: E402
import torch  # noqa: E402

from model.model_minimind import MiniMindConfig, MiniMindForCausalLM  # noqa: E402
from model.tokenization import load_tokenizer  # noqa: E402
from trainer.model_loading import ModelLoadError, add_model_args, load_chat_model, resolve_model_args  # noqa: E402
from trainer.trainer_utils import fail  # noqa: E402

PROMPT = [{"role": "user", "content": "请介绍一下大语言模型是怎样训练出来的。"}]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="API 服务流式吞吐 vs 进程内 generate", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_model_args(p)
    p.add_argument("--random_init", action="store_true", help="不加载权重，按 --family/--hidden_size/--num_hidden_layers 随机初始化")
    p.add_argument("--max_new_tokens", type=int, default=128)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    if args.max_new_tokens <= 0 or args.rounds <= 0:
        p.error("--max_new_tokens 与 --rounds 必须是正整数")
    try:
        return resolve_model_args(args)
    except ModelLoadError as e:
        p.error(str(e))


def load(args):
    if not args.random_init:
        return load_chat_model(args)
    tokenizer = load_tokenizer(args.tokenizer)
    torch.manual_seed(0)
    config = MiniMindConfig(family=args.family, hidden_size=args.hidden_size, num_hidden_layers=args.num_hidden_layers,
                            use_moe=bool(args.use_moe), vocab_size=tokenizer.vocab_size, max_position_embeddings=4096)
    model = MiniMindForCausalLM(config).eval()
    with torch.no_grad():  # 比默认 0.02 大的初始化：贪心输出是五花八门的 token（像真实文本一样要逐段解码），而不是同一个 token 重复
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.3)
    return model, tokenizer


def time_in_process(model, prompt_ids, n):
    """(tokens/s, 首 token 秒数)：直接 model.generate，streamer 只记时间。"""
    marks = []
    start = time.perf_counter()
    model.generate(torch.tensor([prompt_ids]), max_new_tokens=n, eos_token_id=-1,
                   streamer=lambda token: marks.append(time.perf_counter()))
    return len(marks) / (marks[-1] - start), marks[0] - start


def time_through_server(base, n):
    """(tokens/s, 首段文本秒数)：POST stream=True，逐行读 SSE，token 数取服务返回的 usage。"""
    body = {"messages": PROMPT, "max_tokens": n, "temperature": 0, "stream": True, "ignore_eos": True,
            "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    first = end = None
    tokens = 0
    with requests.post(f"{base}/v1/chat/completions", json=body, stream=True, timeout=600) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith(b"data: ") or line == b"data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            elif first is None and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                first = time.perf_counter()
            end = time.perf_counter()
    if first is None:
        raise RuntimeError("服务没有返回任何文本")
    return tokens / (end - start), first - start


def main(argv=None):
    args = parse_args(argv)
    try:
        import uvicorn

        from scripts.chat_engine import ChatEngine
        from scripts.openai_server import build_app
    except ImportError as e:
        fail(f"缺少 API 服务的依赖（{e.name}）：pip install -r requirements-serve.txt")
    try:
        model, tokenizer = load(args)
    except ModelLoadError as e:
        fail(str(e))
    model = model.cpu().eval() if args.device == "cpu" else model
    engine = ChatEngine(model, tokenizer, context_length=model.config.max_position_embeddings)
    prompt_ids = engine.prepare(PROMPT, args.max_new_tokens).ids
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(build_app(engine), log_level="warning"))
    threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    params = sum(p.numel() for p in model.parameters())
    print(f"模型 {model.config.family} {params / 1e6:.1f}M 参数，设备 {next(model.parameters()).device}，"
          f"torch 线程 {torch.get_num_threads()}；提示 {len(prompt_ids)} token，生成 {args.max_new_tokens} token，"
          f"{args.rounds} 轮交替计时")
    time_in_process(model, prompt_ids, 8)  # 预热：两条路径各一次，不计入
    time_through_server(base, 8)
    direct, served = [], []
    for i in range(args.rounds):
        direct.append(time_in_process(model, prompt_ids, args.max_new_tokens))
        served.append(time_through_server(base, args.max_new_tokens))
        print(f"  第 {i + 1} 轮：进程内 {direct[-1][0]:7.1f} tok/s（首 token {direct[-1][1] * 1000:6.1f} ms）   "
              f"经服务 {served[-1][0]:7.1f} tok/s（首段文本 {served[-1][1] * 1000:6.1f} ms）")
    d_rate, d_first = statistics.median(r for r, _ in direct), statistics.median(f for _, f in direct)
    s_rate, s_first = statistics.median(r for r, _ in served), statistics.median(f for _, f in served)
    ratios = sorted(s[0] / d[0] for d, s in zip(direct, served))  # 同一轮内相邻两次计时之比：机器忙闲的漂移大多抵消
    print(f"中位数：进程内 {d_rate:.1f} tok/s，经服务 {s_rate:.1f} tok/s；逐轮比值（经服务 / 进程内）中位数 "
          f"{statistics.median(ratios):.3f}，范围 {ratios[0]:.3f}–{ratios[-1]:.3f}（目标 ≥ 0.9）")
    print(f"首 token：进程内 {d_first * 1000:.1f} ms，经服务 {s_first * 1000:.1f} ms（含 HTTP 往返与第一段完整字符的解码）")
    server.should_exit = True


if __name__ == "__main__":
    main()
