"""OpenAI 兼容的 HTTP 接口（FastAPI）：build_app(engine) 从一个加载好的模型建出整个应用。

    GET  /v1/models             列出这一个模型
    POST /v1/chat/completions   messages / temperature / top_p / max_tokens / stream / stop / seed
    GET  /                      网页对话（scripts/web/ 里的静态文件，不依赖任何 CDN）

与 OpenAI 相同的部分：请求与响应的字段、流式的 server-sent events（chat.completion.chunk，以 data: [DONE] 结束）、
usage、finish_reason（stop / length）、错误体 {"error": {"message", "type", "param", "code"}}。
与 MiniMind 相同的扩展：回答里 <think>…</think> 的部分放在 reasoning_content。
另一个扩展 ignore_eos（与 vLLM 同名）：遇到结束符也继续生成，基准测试用它固定生成长度。
"""
import asyncio
import json
import threading
import time
import uuid
from pathlib import Path
from typing import List, Literal, Optional, Union

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from model.tokenization import find_structure_literal
from scripts.chat_engine import ChatEngine, GenerationResult, PromptTooLong, SamplingParams

WEB_DIR = Path(__file__).resolve().parent / "web"


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")  # name、tool_calls 等字段接受但不使用
    role: Literal["system", "user", "assistant", "tool"]
    content: Union[str, List[TextPart], None] = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # frequency_penalty、user 等不支持的字段忽略（与多数兼容服务相同）
    model: Optional[str] = None
    messages: List[Message] = Field(min_length=1)
    temperature: float = Field(0.85, ge=0, le=2)
    top_p: float = Field(0.85, gt=0, le=1)
    max_tokens: Optional[int] = Field(None, ge=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1)
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    stop: Union[str, List[str], None] = None
    seed: Optional[int] = None
    n: int = Field(1, ge=1, le=1)
    ignore_eos: bool = False


class RequestError(Exception):
    def __init__(self, message: str, param: Optional[str] = None, status: int = 400,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.message, self.param, self.status, self.kind = message, param, status, kind


def error_response(message: str, status: int = 400, kind: str = "invalid_request_error",
                   param: Optional[str] = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": None}}, status_code=status)


def describe_validation_error(e: ValidationError) -> RequestError:
    first = e.errors()[0]
    param = ".".join(str(x) for x in first["loc"])
    return RequestError(f"请求字段 {param or '(body)'} 不合法：{first['msg']}", param=param or None)


def parse_request(body: bytes, default_max_tokens: int):
    """请求体 → (ChatRequest, messages, SamplingParams)；任何问题都变成 RequestError（400）。"""
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RequestError(f"请求体不是合法的 JSON：{e}") from None
    if not isinstance(data, dict):
        raise RequestError("请求体必须是 JSON 对象")
    try:
        req = ChatRequest.model_validate(data)
    except ValidationError as e:
        raise describe_validation_error(e) from None
    stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if len(stops) > 4:
        raise RequestError("stop 最多 4 个字符串", param="stop")
    messages = []
    for i, m in enumerate(req.messages):
        text = m.text()
        literal = find_structure_literal(text)
        if literal is not None:
            raise RequestError(f"messages[{i}] 含特殊 token 的字面量 {literal}：它会被当成对话结构（模板注入），请去掉",
                               param=f"messages.{i}.content")
        messages.append({"role": m.role, "content": text})
    params = SamplingParams(max_tokens=req.max_completion_tokens or req.max_tokens or default_max_tokens,
                            temperature=req.temperature, top_p=req.top_p, stop=stops, seed=req.seed,
                            ignore_eos=req.ignore_eos)
    return req, messages, params


def usage_of(result: GenerationResult) -> dict:
    return {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
            "total_tokens": result.prompt_tokens + result.completion_tokens}


def build_app(engine: ChatEngine, model_name: str = "minimind", api_key: Optional[str] = None,
              default_max_tokens: int = 512) -> FastAPI:
    app = FastAPI(title="MiniMind OpenAI-compatible API", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine = engine
    created = int(time.time())

    def unauthorized(request: Request) -> Optional[JSONResponse]:
        """设了 --api_key 时，/v1/ 下的请求须带 Authorization: Bearer <key>。
        （不用 HTTP 中间件：Starlette 的 BaseHTTPMiddleware 会让 request.is_disconnected() 察觉不到断开。）"""
        if api_key and request.headers.get("authorization", "") != f"Bearer {api_key}":
            return error_response("API key 不对或缺失：请在 Authorization: Bearer <key> 里给出 --api_key 设置的值",
                                  status=401, kind="authentication_error")
        return None

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return error_response(f"{request.method} {request.url.path}：{exc.detail}", status=exc.status_code)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):  # 服务端出错也回 JSON，不回 traceback
        return error_response(f"服务器内部错误：{type(exc).__name__}: {exc}", status=500, kind="server_error")

    @app.get("/v1/models")
    async def list_models(request: Request):
        if (denied := unauthorized(request)) is not None:
            return denied
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": created,
                                            "owned_by": "minimind-notes"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        if (denied := unauthorized(request)) is not None:
            return denied
        try:
            req, messages, params = parse_request(await request.body(), default_max_tokens)
            prompt = engine.prepare(messages, params.max_tokens)
        except RequestError as e:
            return error_response(e.message, status=e.status, kind=e.kind, param=e.param)
        except PromptTooLong as e:
            return error_response(str(e), param="max_tokens")
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        cancel = threading.Event()
        if not req.stream:
            work = asyncio.get_running_loop().run_in_executor(None, lambda: engine.generate(prompt, params, cancel=cancel))
            while not (await asyncio.wait({work}, timeout=0.2))[0]:  # 非流式也在客户端断开时停止生成
                if await request.is_disconnected():
                    cancel.set()
            result = await work
            message = {"role": "assistant", "content": result.content}
            if result.reasoning:
                message["reasoning_content"] = result.reasoning
            return {"id": completion_id, "object": "chat.completion", "created": int(time.time()), "model": model_name,
                    "choices": [{"index": 0, "message": message, "finish_reason": result.finish_reason}],
                    "usage": usage_of(result)}
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return StreamingResponse(stream_events(engine, prompt, params, cancel, completion_id, model_name, include_usage),
                                 media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @app.get("/")
    async def index():
        return FileResponse(WEB_DIR / "index.html")

    app.mount("/web", StaticFiles(directory=WEB_DIR), name="web")
    return app


async def stream_events(engine: ChatEngine, prompt, params: SamplingParams, cancel: threading.Event,
                        completion_id: str, model_name: str, include_usage: bool):
    """生成在线程池里跑，增量经 asyncio 队列送回来，逐个写成 SSE；连接断开时本生成器被关闭，finally 置位 cancel。"""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    created = int(time.time())

    def chunk(delta: dict, finish_reason=None, usage=None) -> str:
        body = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model_name,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}] if usage is None else []}
        if usage is not None:
            body["usage"] = usage
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    def run():
        try:
            result = engine.generate(prompt, params, cancel=cancel,
                                     on_delta=lambda r, c: loop.call_soon_threadsafe(queue.put_nowait, ("delta", r, c)))
            loop.call_soon_threadsafe(queue.put_nowait, ("done", result, None))
        except Exception as e:  # noqa: BLE001  生成出错：以 SSE 错误事件告诉客户端
            loop.call_soon_threadsafe(queue.put_nowait, ("error", e, None))

    loop.run_in_executor(None, run)
    try:
        yield chunk({"role": "assistant", "content": ""})
        while True:
            kind, a, b = await queue.get()
            if kind == "delta":
                delta = {}
                if a:
                    delta["reasoning_content"] = a
                if b:
                    delta["content"] = b
                yield chunk(delta)
            elif kind == "done":
                yield chunk({}, finish_reason=a.finish_reason)
                if include_usage:
                    yield chunk({}, usage=usage_of(a))
                yield "data: [DONE]\n\n"
                break
            else:
                error = {"error": {"message": f"生成出错：{type(a).__name__}: {a}", "type": "server_error",
                                   "param": None, "code": None}}
                yield f"data: {json.dumps(error, ensure_ascii=False)}\n\n"
                break
    finally:
        cancel.set()  # 客户端断开（或正常结束）：让生成线程在下一个 token 停下、释放锁
