"""对话生成引擎：API 服务（scripts/openai_server.py）与基准（scripts/bench_serve.py）共用。

- 提示按 token 截断到上下文以内（先丢最早的轮次，仍太长再从左边截掉最后一条消息的 token），从不按字符截；
- 并发：一把锁（threading.Lock），同一时刻只有一个请求在生成，其余的在锁前等待。这样每个请求独占全局随机数
  发生器：给了 seed 的请求，与别人同时到达时生成的文本和它单独到达时完全一样；代价是不做批处理；
- 逐 token 流式：增量解码（多字节字符凑齐再吐出）→ stop 字符串匹配（可能是 stop 前缀的尾巴先扣住）
  → <think>…</think> 拆成 reasoning_content 与 content；
- 取消：cancel 事件被置位（客户端断开）后，下一个 token 就停止生成并释放锁。
"""
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Deque, List, Optional, Sequence

import torch

from model.tokenization import CHAT_STRUCTURE_TOKENS, MiniMindTokenizer

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


class PromptTooLong(ValueError):
    """即使只留最后一条消息的一个 token，提示也放不进上下文。"""


@dataclass
class Prompt:
    ids: List[int]
    in_think: Optional[bool]  # 提示是否以 <think> 打开了思考段：True / False（已关闭）/ None（由模型决定）
    dropped_messages: int = 0  # 为放进上下文丢掉的最早消息数


@dataclass
class SamplingParams:
    max_tokens: int = 256
    temperature: float = 0.85  # 0 = 贪心
    top_p: float = 0.85
    stop: Sequence[str] = ()
    seed: Optional[int] = None
    ignore_eos: bool = False  # 基准用：遇到结束符也继续，保证生成固定长度


@dataclass
class GenerationResult:
    finish_reason: str  # "stop"（结束符或 stop 字符串）/ "length"（到 max_tokens）/ "cancelled"（客户端断开）
    completion_tokens: int  # 模型实际生成的 token 数（含结束符 <|im_end|>）
    prompt_tokens: int
    reasoning: str = ""
    content: str = ""


def build_prompt(tokenizer: MiniMindTokenizer, messages: List[dict], budget: int) -> Prompt:
    """套对话模板并编码，保证 token 数 <= budget（系统消息始终保留）。"""
    system = messages[:1] if messages and messages[0]["role"] == "system" else []
    rest = list(messages[len(system):])
    dropped = 0
    for _ in range(len(rest) + 8):  # 丢轮次最多 len(rest) 次，截内容收敛只需几次
        text = tokenizer.apply_chat_template(system + rest, add_generation_prompt=True)
        ids = tokenizer.encode(text)
        if len(ids) <= budget:
            return Prompt(ids, prompt_think_state(text), dropped)
        if len(rest) > 1:
            rest = rest[1:]
            dropped += 1
            while len(rest) > 1 and rest[0]["role"] != "user":  # 让剩下的对话从用户开始
                rest, dropped = rest[1:], dropped + 1
            continue
        content_ids = tokenizer.encode(rest[0]["content"]) if rest else []
        overflow = len(ids) - budget
        if overflow >= len(content_ids):
            raise PromptTooLong(f"提示放不进上下文：模板和系统消息就要 {len(ids) - len(content_ids)} 个 token，"
                                f"而留给提示的只有 {budget} 个（上下文减去 max_tokens）；请减小 max_tokens 或缩短系统消息")
        rest = [{**rest[0], "content": tokenizer.decode(content_ids[overflow:]).lstrip("\ufffd")}]
    raise PromptTooLong(f"无法把提示截到 {budget} 个 token 以内")


def prompt_think_state(prompt_text: str) -> Optional[bool]:
    """minimind-3 的模板会在提示末尾打开（<think>\\n）或直接关闭（<think>\\n\\n</think>\\n\\n）思考段。"""
    tail = prompt_text.rstrip()
    if tail.endswith(THINK_CLOSE):
        return False
    if tail.endswith(THINK_OPEN):
        return True
    return None


class IncrementalDecoder:
    """逐 token 解码：只解码尚未吐出的那几个 token（O(1) 每步），字符凑齐了（末尾没有 \\ufffd）才吐出。"""

    def __init__(self, tokenizer: MiniMindTokenizer):
        self.tokenizer = tokenizer
        self.hidden = {tokenizer.tokenizer.token_to_id(t) for t in CHAT_STRUCTURE_TOKENS} - {None}
        self.pending: List[int] = []

    def feed(self, token_id: int) -> str:
        if token_id in self.hidden:  # 结构 token 不进文本；<think> 这类特殊 token 保留（要据此拆出思考段）
            return ""
        self.pending.append(token_id)
        text = self.tokenizer.decode(self.pending, skip_special_tokens=False)
        if text.endswith("\ufffd"):
            return ""
        self.pending = []
        return text


def _held_suffix(text: str, markers: Sequence[str]) -> int:
    """text 末尾有多长可能是某个 marker 的开头（要先扣住，等下一段文本再判断）。"""
    best = 0
    for marker in markers:
        for n in range(min(len(marker) - 1, len(text)), best, -1):
            if marker.startswith(text[-n:]):
                best = n
                break
    return best


class StopMatcher:
    """在流式文本里找 stop 字符串：找到就截断（stop 本身不输出）。"""

    def __init__(self, stops: Sequence[str]):
        self.stops = [s for s in stops if s]
        self.pending = ""

    def feed(self, text: str):
        """返回 (可以输出的文本, 是否命中 stop)。"""
        text = self.pending + text
        hits = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.pending = ""
            return text[:min(hits)], True
        hold = _held_suffix(text, self.stops)
        self.pending = text[len(text) - hold:] if hold else ""
        return text[:len(text) - hold], False

    def flush(self) -> str:
        text, self.pending = self.pending, ""
        return text


class ThinkSplitter:
    """把回答拆成思考段（<think>…</think> 之间）与正文；in_think 是提示结束时的状态。"""

    def __init__(self, in_think: Optional[bool]):
        self.state = {True: "think", False: "content", None: "start"}[in_think]
        self.pending = ""
        self.strip_content = in_think is False  # 思考段刚关闭：正文开头的换行不输出

    def feed(self, text: str):
        """返回 (reasoning 增量, content 增量)。"""
        self.pending += text
        reasoning = content = ""
        if self.state == "start":
            head = self.pending.lstrip()
            if len(head) < len(THINK_OPEN) and THINK_OPEN.startswith(head):
                return "", ""  # 可能是 <think> 的开头：再等等
            if head.startswith(THINK_OPEN):
                self.state, self.pending = "think", head[len(THINK_OPEN):]
            else:
                self.state = "content"
        if self.state == "think":
            end = self.pending.find(THINK_CLOSE)
            if end < 0:
                hold = _held_suffix(self.pending, [THINK_CLOSE])
                reasoning, self.pending = self.pending[:len(self.pending) - hold], self.pending[len(self.pending) - hold:]
                return reasoning, ""
            reasoning, self.pending, self.state = self.pending[:end], self.pending[end + len(THINK_CLOSE):], "content"
            self.strip_content = True
        if self.state == "content":
            content, self.pending = self.pending, ""
            if self.strip_content:
                content = content.lstrip()
                self.strip_content = not content
        return reasoning, content

    def flush(self):
        text, self.pending = self.pending, ""
        return (text, "") if self.state == "think" else ("", text)


class _Stop(Exception):
    """在 streamer 回调里抛出以结束 model.generate（命中 stop 或被取消）。"""


@dataclass
class ChatEngine:
    """一个加载好的模型 + 分词器；generate() 线程安全（内部加锁，一次一个请求）。"""

    model: torch.nn.Module
    tokenizer: MiniMindTokenizer
    context_length: int
    draft_model: Optional[torch.nn.Module] = None  # 给了就用投机解码（model/speculative.py）：贪心结果不变，采样分布不变
    num_draft_tokens: int = 4  # 投机解码每轮草稿提出的 token 数 γ
    lock: threading.Lock = field(default_factory=threading.Lock)
    completed: int = 0  # 已结束的生成数
    recent: Deque[GenerationResult] = field(default_factory=lambda: deque(maxlen=64))  # 最近结束的生成（测试与监控用）

    def prepare(self, messages: List[dict], max_tokens: int) -> Prompt:
        budget = self.context_length - max_tokens
        if budget < 1:
            raise PromptTooLong(f"max_tokens={max_tokens} 不小于上下文长度 {self.context_length}，提示没有空间")
        return build_prompt(self.tokenizer, messages, budget)

    def generate(self, prompt: Prompt, params: SamplingParams,
                 on_delta: Callable[[str, str], None] = lambda reasoning, content: None,
                 cancel: Optional[threading.Event] = None) -> GenerationResult:
        """生成一个回答；每凑齐一段文本调用 on_delta(reasoning 增量, content 增量)。"""
        cancel = cancel or threading.Event()
        decoder, stopper, splitter = IncrementalDecoder(self.tokenizer), StopMatcher(params.stop), ThinkSplitter(prompt.in_think)
        eos = self.tokenizer.eos_token_id
        state = {"n": 0, "reason": None, "hit_stop": False, "reasoning": [], "content": []}

        def emit(reasoning, content):
            if reasoning or content:
                state["reasoning"].append(reasoning)
                state["content"].append(content)
                on_delta(reasoning, content)

        def on_token(token):  # token: (1,)
            if cancel.is_set():
                state["reason"] = "cancelled"
                raise _Stop
            token_id = int(token[0])
            state["n"] += 1
            if token_id == eos and not params.ignore_eos:
                state["reason"] = "stop"
                return
            text, hit = stopper.feed(decoder.feed(token_id))
            emit(*splitter.feed(text))
            if hit:
                state["reason"], state["hit_stop"] = "stop", True
                raise _Stop

        with self.lock:
            if cancel.is_set():  # 排队时客户端就走了：不生成
                state["reason"] = "cancelled"
            else:
                if params.seed is not None:
                    torch.manual_seed(params.seed)
                sample = params.temperature > 0
                device = next(self.model.parameters()).device
                try:
                    self.model.generate(torch.tensor([prompt.ids], device=device), max_new_tokens=params.max_tokens,
                                        do_sample=sample, temperature=params.temperature if sample else 1.0,
                                        top_p=params.top_p if sample else None,
                                        eos_token_id=-1 if params.ignore_eos else eos, streamer=on_token,
                                        draft_model=self.draft_model, num_draft_tokens=self.num_draft_tokens)
                except _Stop:
                    pass
            if state["reason"] != "cancelled":
                if not state["hit_stop"]:  # 扣住的"可能是 stop 开头"的尾巴，最终没有成为 stop：照常输出
                    emit(*splitter.feed(stopper.flush()))
                emit(*splitter.flush())
            result = GenerationResult(finish_reason=state["reason"] or "length", completion_tokens=state["n"],
                                      prompt_tokens=len(prompt.ids), reasoning="".join(state["reasoning"]),
                                      content="".join(state["content"]))
            self.recent.append(result)
            self.completed += 1
        return result
