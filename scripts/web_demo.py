"""一条命令打开网页对话：启动 API 服务（参数与 serve_openai_api.py 相同），启动后用默认浏览器打开 http://127.0.0.1:8998/。

    python scripts/web_demo.py --quick
    python scripts/web_demo.py --weight full_sft --port 8000

等价于 python scripts/serve_openai_api.py --open_browser ...。页面是 scripts/web/ 里的静态文件（不依赖 CDN，离线可用）：
多轮对话、逐 token 显示、停止按钮、temperature / top_p / max_tokens 设置、思考过程折叠显示。
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts import serve_openai_api  # noqa: E402

if __name__ == "__main__":
    serve_openai_api.main(["--open_browser", *sys.argv[1:]])
