"""OpenAI 兼容的 API 服务：任何 OpenAI 客户端（官方 openai 包、网页、各种聊天前端）都能和你训练的模型对话。

    python scripts/serve_openai_api.py --quick                      # --quick 训练出的 SFT 小模型，http://127.0.0.1:8998
    python scripts/serve_openai_api.py --weight full_sft --port 8000
    python scripts/serve_openai_api.py --weights MiniMind2.pth --tokenizer path/to/tokenizer --lora_weight out/lora_identity_512.pth
    python scripts/serve_openai_api.py --weights out/MiniMind2-hf   # convert_model.py 转出的 transformers 文件夹

选模型的参数与 trainer/eval_llm.py 相同（trainer/model_loading.py）。默认只监听 127.0.0.1；--host 0.0.0.0 对外开放时
建议同时设 --api_key。浏览器打开 http://127.0.0.1:8998/ 就是网页对话。接口逻辑在 scripts/openai_server.py。
并发：一把锁，同一时刻只生成一个请求，其余排队（见 scripts/chat_engine.py）。
"""
import argparse
import sys
import threading
import time
import webbrowser
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainer.model_loading import (ModelLoadError, add_draft_args, add_model_args, load_chat_model,  # noqa: E402
                                   load_draft_model, resolve_model_args, weights_path)
from trainer.trainer_utils import fail  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="MiniMind 的 OpenAI 兼容 API 服务", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_model_args(p)
    add_draft_args(p)
    p.add_argument("--host", default="127.0.0.1", help="监听地址；0.0.0.0 = 对局域网开放（请同时设 --api_key）")
    p.add_argument("--port", type=int, default=8998)
    p.add_argument("--api_key", default=None, help="设置后请求须带 Authorization: Bearer <key>")
    p.add_argument("--model_name", default=None, help="/v1/models 里的模型名（默认取权重文件名）")
    p.add_argument("--context_length", type=int, default=None, help="提示 + 回答的 token 上限（默认模型的 max_position_embeddings）")
    p.add_argument("--max_tokens", type=int, default=512, help="请求没给 max_tokens 时的默认值")
    p.add_argument("--open_browser", action="store_true", help="服务启动后用默认浏览器打开网页对话（scripts/web_demo.py 就是加了它）")
    args = p.parse_args(argv)
    for name in ("port", "max_tokens") + (("context_length",) if args.context_length is not None else ()):
        if getattr(args, name) <= 0:
            p.error(f"--{name} 必须是正整数，收到 {getattr(args, name)}")
    try:
        return resolve_model_args(args)
    except ModelLoadError as e:
        p.error(str(e))


def main(argv=None):
    args = parse_args(argv)
    try:
        import uvicorn

        from scripts.chat_engine import ChatEngine
        from scripts.openai_server import build_app
    except ImportError as e:
        fail(f"缺少 API 服务的依赖（{e.name}）：pip install -r requirements-serve.txt")
    try:
        model, tokenizer = load_chat_model(args)
        draft = load_draft_model(args, model, tokenizer) if args.draft_weights is not None else None
    except ModelLoadError as e:
        fail(str(e))
    context = min(args.context_length or model.config.max_position_embeddings, model.config.max_position_embeddings)
    engine = ChatEngine(model, tokenizer, context_length=context, draft_model=draft,
                        num_draft_tokens=args.num_draft_tokens)
    name = args.model_name or weights_path(args).stem
    app = build_app(engine, model_name=name, api_key=args.api_key, default_max_tokens=args.max_tokens)
    url = f"http://{'127.0.0.1' if args.host in ('0.0.0.0', '::') else args.host}:{args.port}"
    print(f"模型 {name}（上下文 {context} token）：{url}/v1  网页对话：{url}/  （Ctrl+C 停止）")
    server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_level="warning"))
    if args.open_browser:
        threading.Thread(target=open_when_started, args=(server, url + "/"), daemon=True).start()
    server.run()


def open_when_started(server, url: str):
    while not server.started and not server.should_exit:
        time.sleep(0.1)
    if server.started:
        webbrowser.open(url)


if __name__ == "__main__":
    main()
