"""用官方 openai 包和 API 服务多轮对话（流式输出）：和调用任何 OpenAI 兼容的大模型是同一套写法。

    python scripts/serve_openai_api.py --quick &                 # 先启动服务
    python scripts/chat_openai_api.py                            # 交互式，多轮；空行或 Ctrl-D 退出
    python scripts/chat_openai_api.py --prompt "你好" --temperature 0

思考过程（minimind-3 的 <think>…</think>，服务放在 reasoning_content 里）用灰色显示，不回传给下一轮。
"""
import argparse
import sys

DIM, RESET = "\033[2m", "\033[0m"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="与 MiniMind 的 API 服务多轮对话", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--base_url", default="http://127.0.0.1:8998/v1")
    p.add_argument("--api_key", default="none", help="服务用 --api_key 启动时填同样的值")
    p.add_argument("--model", default=None, help="默认用服务 /v1/models 列出的第一个")
    p.add_argument("--system", default=None, help="可选的系统提示")
    p.add_argument("--prompt", action="append", default=None, help="依次问这几句（可重复）然后退出；不给则交互")
    p.add_argument("--temperature", type=float, default=0.85)
    p.add_argument("--top_p", type=float, default=0.85)
    p.add_argument("--max_tokens", type=int, default=512)
    p.add_argument("--seed", type=int, default=None)
    return p.parse_args(argv)


def stream_turn(client, model, messages, args) -> str:
    """发一轮请求，边收边打印；返回正文（不含思考过程）。"""
    stream = client.chat.completions.create(model=model, messages=messages, stream=True, temperature=args.temperature,
                                            top_p=args.top_p, max_tokens=args.max_tokens, seed=args.seed)
    content, finish = [], None
    for chunk in stream:
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        reasoning = getattr(delta, "reasoning_content", None) or (delta.model_extra or {}).get("reasoning_content")
        if reasoning:
            print(f"{DIM}{reasoning}{RESET}", end="", flush=True)
        if delta.content:
            content.append(delta.content)
            print(delta.content, end="", flush=True)
        finish = chunk.choices[0].finish_reason or finish
    print("  [达到 max_tokens，回答被截断]" if finish == "length" else "")
    return "".join(content)


def questions(args):
    if args.prompt is not None:
        for question in args.prompt:
            print(f"用户：{question}")
            yield question
        return
    print("输入问题后回车；空行或 Ctrl-D 退出。")
    while True:
        try:
            question = input("用户：").strip()
        except EOFError:
            return
        if not question:
            return
        yield question


def main(argv=None):
    args = parse_args(argv)
    try:
        import openai
    except ImportError:
        sys.exit("错误：缺少 openai 包：pip install -r requirements-serve.txt")
    client = openai.OpenAI(base_url=args.base_url, api_key=args.api_key, max_retries=0)
    messages = [{"role": "system", "content": args.system}] if args.system else []
    try:
        model = args.model or client.models.list().data[0].id
        for question in questions(args):
            messages.append({"role": "user", "content": question})
            print("MiniMind：", end="", flush=True)
            messages.append({"role": "assistant", "content": stream_turn(client, model, messages, args)})
    except openai.APIConnectionError:
        sys.exit(f"错误：连不上 {args.base_url}：请先启动服务（python scripts/serve_openai_api.py --quick），或检查 --base_url")
    except openai.APIStatusError as e:
        message = e.body.get("message") if isinstance(e.body, dict) else e.message
        sys.exit(f"错误：服务返回 {e.status_code}：{message}")


if __name__ == "__main__":
    main()
