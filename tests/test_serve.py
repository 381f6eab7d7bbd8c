"""scripts/serve_openai_api.py 的接口：真实的 uvicorn 服务在 127.0.0.1 上，用官方 openai 客户端（流式与非流式）访问。

模型是随机初始化的小模型（不训练）+ 仓库的分词器：输出是乱码，但每个数都能和进程内的 model.generate 逐 token 对照。
"""
import contextlib
import copy
import json
import socket
import threading
import time

import pytest
import torch

openai = pytest.importorskip("openai", reason="缺 API 服务的依赖：pip install -r requirements-serve.txt")
uvicorn = pytest.importorskip("uvicorn", reason="缺 API 服务的依赖：pip install -r requirements-serve.txt")
import requests  # noqa: E402

from model.model_minimind import MiniMindConfig, MiniMindForCausalLM  # noqa: E402
from model.tokenization import load_tokenizer  # noqa: E402
from scripts.chat_engine import (  # noqa: E402
    ChatEngine, PromptTooLong, SamplingParams, StopMatcher, ThinkSplitter, build_prompt,
)
from scripts.openai_server import build_app  # noqa: E402

MODEL = "tiny-test"
USER = [{"role": "user", "content": "你好，介绍一下你自己"}]


@contextlib.contextmanager
def run_server(app):
    """在后台线程里用 uvicorn 提供 app（127.0.0.1 的随机端口），yield 基础 URL，退出时关闭。"""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        assert time.time() < deadline and thread.is_alive(), "uvicorn 没有启动"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def tiny_engine(context_length=4096):
    tokenizer = load_tokenizer()
    torch.manual_seed(0)
    config = MiniMindConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                            vocab_size=tokenizer.vocab_size, max_position_embeddings=4096)
    model = MiniMindForCausalLM(config).eval()
    with torch.no_grad():  # 比默认 0.02 大得多的初始化：贪心输出不是同一个 token 的重复，而是五花八门的文本
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.3)
    return ChatEngine(model, tokenizer, context_length=context_length)


@pytest.fixture(scope="module")
def engine():
    return tiny_engine()


@pytest.fixture(scope="module")
def server(engine):
    with run_server(build_app(engine, model_name=MODEL)) as base:
        yield base


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0, timeout=120)


def assert_cancelled_after(engine, before: int, max_tokens: int = 3000):
    """客户端断开后，引擎在 30 s 内结束这次生成，结果标为 cancelled，且没有生成到 max_tokens。"""
    deadline = time.time() + 30
    while engine.completed == before:
        assert time.time() < deadline, "断开后生成没有结束"
        time.sleep(0.05)
    result = engine.recent[-1]
    assert result.finish_reason == "cancelled" and result.completion_tokens < max_tokens


def reference_ids(engine, messages, max_new, **sampling):
    """进程内 model.generate 的结果（不经过服务）：提示的 id 与新生成的 id。"""
    prompt = engine.tokenizer.encode(engine.tokenizer.apply_chat_template(messages, add_generation_prompt=True))
    out = engine.model.generate(torch.tensor([prompt]), max_new_tokens=max_new,
                                eos_token_id=engine.tokenizer.eos_token_id, **sampling)
    return prompt, out[0, len(prompt):].tolist()


def visible_text(engine, ids):
    return engine.tokenizer.decode(ids, skip_special_tokens=False).rstrip("\ufffd")


def test_models_lists_the_loaded_model(client):
    assert [m.id for m in client.models.list().data] == [MODEL]


def test_non_streaming_greedy_matches_in_process_generate_and_reports_usage(client, engine):
    prompt, new = reference_ids(engine, USER, 8)
    assert engine.tokenizer.eos_token_id not in new  # 随机模型：8 个 token 内没有结束符，所以 finish_reason 是 length
    r = client.chat.completions.create(model=MODEL, messages=USER, max_tokens=8, temperature=0)
    assert r.choices[0].finish_reason == "length"
    assert r.choices[0].message.content == visible_text(engine, new).lstrip()
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (len(prompt), 8, len(prompt) + 8)


def test_stop_string_ends_with_finish_reason_stop(client, engine):
    _, new = reference_ids(engine, USER, 12)
    text = visible_text(engine, new).lstrip()
    stop = text[len(text) // 2:len(text) // 2 + 2]
    r = client.chat.completions.create(model=MODEL, messages=USER, max_tokens=12, temperature=0, stop=[stop])
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].message.content == text[:text.index(stop)]
    assert r.usage.completion_tokens < 12


def test_end_of_sequence_token_ends_with_finish_reason_stop(engine):
    """把第 3 个生成的 token 当作结束符：生成恰好停在第 3 个 token，usage 数到它（含结束符）。"""
    _, new = reference_ids(engine, USER, 5)
    tokenizer = copy.copy(engine.tokenizer)
    tokenizer.eos_token = engine.tokenizer.tokenizer.id_to_token(new[2])
    if new[2] in new[:2]:
        pytest.fail("参考输出的前两个 token 里已有第 3 个 token，换一个提示")
    result = ChatEngine(engine.model, tokenizer, 4096).generate(
        build_prompt(tokenizer, USER, 4000), SamplingParams(max_tokens=5, temperature=0))
    assert (result.finish_reason, result.completion_tokens) == ("stop", 3)
    assert result.content == visible_text(engine, new[:2]).lstrip()


def test_streaming_matches_non_streaming_under_the_same_seed(client):
    kwargs = dict(model=MODEL, messages=USER, max_tokens=10, temperature=1.0, top_p=0.9, seed=123)
    whole = client.chat.completions.create(**kwargs)
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert text == whole.choices[0].message.content and finish == ["length"]
    assert chunks[-1].usage.completion_tokens == 10 and not chunks[-1].choices
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 1  # 真的是一段一段来的


def test_two_concurrent_streams_each_get_the_text_they_get_alone(client):
    def stream(seed):
        chunks = client.chat.completions.create(model=MODEL, messages=USER, max_tokens=40, temperature=1.0,
                                                top_p=1.0, seed=seed, stream=True, extra_body={"ignore_eos": True})
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    alone = {seed: stream(seed) for seed in (1, 2)}
    assert alone[1] != alone[2]
    together, barrier = {}, threading.Barrier(2)

    def worker(seed):
        barrier.wait()
        together[seed] = stream(seed)

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert together == alone


class ScriptedModel(torch.nn.Module):
    """按剧本逐个吐出 token 的"模型"：用来让回答里出现 <think>…</think>（随机模型写不出来）。"""

    def __init__(self, script):
        super().__init__()
        self.script = script
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def generate(self, input_ids, max_new_tokens, streamer, eos_token_id, **sampling):
        for token in self.script[:max_new_tokens]:
            streamer(torch.tensor([token]))
            if token == eos_token_id:
                break


def test_thinking_goes_to_reasoning_content_streaming_and_not(engine):
    tok = engine.tokenizer
    script = tok.encode("<think>\n先算 1+1。\n</think>\n\n等于 2。") + [tok.eos_token_id]
    scripted = ChatEngine(ScriptedModel(script), tok, context_length=4096)
    with run_server(build_app(scripted, model_name=MODEL)) as base:
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
        r = client.chat.completions.create(model=MODEL, messages=USER)
        message = r.choices[0].message
        assert message.content == "等于 2。" and message.model_extra["reasoning_content"].strip() == "先算 1+1。"
        assert r.choices[0].finish_reason == "stop" and r.usage.completion_tokens == len(script)
        chunks = list(client.chat.completions.create(model=MODEL, messages=USER, stream=True))
        deltas = [c.choices[0].delta for c in chunks if c.choices]
        reasoning = "".join((d.model_extra or {}).get("reasoning_content") or "" for d in deltas)
        assert reasoning.strip() == "先算 1+1。" and "".join(d.content or "" for d in deltas) == "等于 2。"


@pytest.mark.parametrize("body, param", [
    (b"{not json", None),
    (b"[1, 2]", None),
    (json.dumps({"model": MODEL}).encode(), "messages"),
    (json.dumps({"messages": []}).encode(), "messages"),
    (json.dumps({"messages": [{"role": "robot", "content": "hi"}]}).encode(), "messages.0.role"),
    (json.dumps({"messages": USER, "temperature": 5}).encode(), "temperature"),
    (json.dumps({"messages": USER, "max_tokens": 0}).encode(), "max_tokens"),
    (json.dumps({"messages": USER, "max_tokens": 99999}).encode(), "max_tokens"),
    (json.dumps({"messages": [{"role": "user", "content": "hi<|im_end|>"}]}).encode(), "messages.0.content"),
])
def test_malformed_requests_get_a_400_json_error(server, body, param):
    r = requests.post(f"{server}/v1/chat/completions", data=body, headers={"Content-Type": "application/json"},
                      timeout=30)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"] and "Traceback" not in r.text
    if param is not None:
        assert error["param"].startswith(param)


def test_openai_client_sees_bad_request_and_unknown_routes_are_json(client, server):
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=USER, temperature=-1)
    r = requests.get(f"{server}/v1/nothing", timeout=30)
    assert r.status_code == 404 and r.json()["error"]["message"]


def test_client_disconnect_mid_stream_stops_generation(server, engine, client):
    before = engine.completed
    body = {"messages": USER, "max_tokens": 3000, "stream": True, "ignore_eos": True, "temperature": 0}
    with requests.post(f"{server}/v1/chat/completions", json=body, stream=True, timeout=60) as r:
        lines = r.iter_lines()
        for _ in range(6):  # 读到几段内容再断开
            next(lines)
    assert_cancelled_after(engine, before)
    # 非流式请求：客户端等不及断开，同样停止
    before = engine.completed
    with pytest.raises(requests.exceptions.Timeout):
        requests.post(f"{server}/v1/chat/completions", json={**body, "stream": False}, timeout=1.0)
    assert_cancelled_after(engine, before)
    # 锁已释放：下一个请求照常完成
    assert client.chat.completions.create(model=MODEL, messages=USER, max_tokens=2).choices[0].finish_reason


def test_api_key_is_required_when_set(engine):
    with run_server(build_app(engine, model_name=MODEL, api_key="s3cret")) as base:
        r = requests.get(f"{base}/v1/models", timeout=30)
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        r = requests.post(f"{base}/v1/chat/completions", json={"messages": USER}, timeout=30,
                          headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        ok = openai.OpenAI(base_url=f"{base}/v1", api_key="s3cret", max_retries=0)
        assert [m.id for m in ok.models.list().data] == [MODEL]


def test_prompt_is_cut_by_tokens_dropping_the_oldest_turns_first(engine):
    tok = engine.tokenizer
    turns = []
    for i in range(6):
        turns += [{"role": "user", "content": f"第{i}个问题" * 5}, {"role": "assistant", "content": f"第{i}个回答" * 5}]
    messages = [{"role": "system", "content": "你是助手"}] + turns + [{"role": "user", "content": "最后的问题"}]
    prompt = build_prompt(tok, messages, budget=80)
    text = tok.decode(prompt.ids, skip_special_tokens=False)
    assert len(prompt.ids) <= 80 and prompt.dropped_messages > 0
    assert text.startswith("<|im_start|>system\n你是助手") and "最后的问题<|im_end|>" in text
    assert "第0个问题" not in text
    # 只有一条很长的消息：从左边按 token 截，保留结尾
    long = [{"role": "user", "content": "".join(f"句子{i}。" for i in range(200))}]
    prompt = build_prompt(tok, long, budget=50)
    text = tok.decode(prompt.ids, skip_special_tokens=False)
    assert 40 <= len(prompt.ids) <= 50 and "句子199。<|im_end|>" in text and "句子0。" not in text
    with pytest.raises(PromptTooLong):
        build_prompt(tok, [{"role": "system", "content": "很长的系统提示" * 50}] + USER, budget=20)


def feed_in_pieces(machine, text, size):
    outs = [machine.feed(text[i:i + size]) for i in range(0, len(text), size)]
    return outs


@pytest.mark.parametrize("size", [1, 2, 3, 100])
def test_think_splitter_and_stop_matcher_do_not_depend_on_how_text_is_chunked(size):
    splitter = ThinkSplitter(in_think=None)
    outs = feed_in_pieces(splitter, "<think>\n先想一想</think>\n\n答案是 42", size) + [splitter.flush()]
    assert "".join(r for r, _ in outs).strip() == "先想一想" and "".join(c for _, c in outs) == "答案是 42"
    splitter = ThinkSplitter(in_think=None)
    outs = feed_in_pieces(splitter, "<thin 不是标签", size) + [splitter.flush()]
    assert "".join(c for _, c in outs) == "<thin 不是标签" and not "".join(r for r, _ in outs)
    splitter = ThinkSplitter(in_think=True)  # minimind-3 的模板在提示里已经打开了 <think>
    outs = feed_in_pieces(splitter, "想</think>答", size) + [splitter.flush()]
    assert ("".join(r for r, _ in outs), "".join(c for _, c in outs)) == ("想", "答")
    stopper = StopMatcher(["END", "##"])
    outs = feed_in_pieces(stopper, "abc#dEN ENDxyz", size)
    emitted = "".join(t for t, _ in outs[:next(i for i, (_, hit) in enumerate(outs) if hit) + 1])
    assert emitted == "abc#dEN "


def test_server_binds_loopback_by_default():
    from scripts.serve_openai_api import parse_args

    args = parse_args(["--quick"])
    assert args.host == "127.0.0.1" and args.api_key is None and args.hidden_size == 128
    assert parse_args(["--quick", "--hidden_size", "64"]).hidden_size == 64  # --quick 只填没给的


def test_server_serves_an_int8_model_loaded_with_quantize(engine, tmp_path):
    """--quantize 走 load_chat_model，所以服务与 eval_llm 一样能加载量化模型：回答等于进程内量化模型的贪心输出。"""
    from model.checkpoint import save_checkpoint
    from model.quantization import QuantizedLinear, quantize_model
    from scripts.serve_openai_api import parse_args
    from trainer.model_loading import load_chat_model

    save_checkpoint(engine.model, tmp_path / "tiny.pth")
    engine.model.config.save(tmp_path / "tiny.json")
    model, tokenizer = load_chat_model(parse_args(["--weights", str(tmp_path / "tiny.pth"), "--quantize", "int8",
                                                   "--device", "cpu"]))
    assert isinstance(model.model.layers[0].mlp.down_proj, QuantizedLinear)
    reference = ChatEngine(quantize_model(copy.deepcopy(engine.model), bits=8), tokenizer, context_length=4096)
    _, new = reference_ids(reference, USER, 8)
    with run_server(build_app(ChatEngine(model, tokenizer, context_length=4096), model_name="tiny-int8")) as base:
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=120)
        r = client.chat.completions.create(model="tiny-int8", messages=USER, max_tokens=8, temperature=0)
    assert r.choices[0].message.content == visible_text(reference, new).lstrip()


def test_server_with_a_draft_model_answers_like_plain_greedy(engine, tmp_path):
    """--draft_weights 在服务里也生效：贪心时投机解码的回答与不用草稿时逐 token 相同（用量、finish_reason 也相同）。"""
    from model.checkpoint import save_checkpoint
    from scripts.serve_openai_api import parse_args
    from trainer.model_loading import load_chat_model, load_draft_model

    torch.manual_seed(1)
    config = MiniMindConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                            vocab_size=engine.tokenizer.vocab_size, max_position_embeddings=4096)
    save_checkpoint(engine.model, tmp_path / "target.pth")
    engine.model.config.save(tmp_path / "target.json")
    save_checkpoint(MiniMindForCausalLM(config), tmp_path / "draft.pth")
    config.save(tmp_path / "draft.json")
    args = parse_args(["--weights", str(tmp_path / "target.pth"), "--draft_weights", str(tmp_path / "draft.pth"),
                       "--num_draft_tokens", "3", "--device", "cpu"])
    model, tokenizer = load_chat_model(args)
    draft = load_draft_model(args, model, tokenizer)
    draft_calls = []
    draft.register_forward_hook(lambda *_: draft_calls.append(1))  # 证明服务真的用了草稿，而不只是回答碰巧相同
    speculative = ChatEngine(model, tokenizer, context_length=4096, draft_model=draft,
                             num_draft_tokens=args.num_draft_tokens)
    _, new = reference_ids(engine, USER, 12)
    with run_server(build_app(speculative, model_name="tiny-spec")) as base:
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=120)
        r = client.chat.completions.create(model="tiny-spec", messages=USER, max_tokens=12, temperature=0)
    assert r.choices[0].message.content == visible_text(engine, new).lstrip()
    assert r.usage.completion_tokens == 12 and r.choices[0].finish_reason == "length"
    assert len(draft_calls) >= 3  # 每轮草稿前向 γ 次（最后一轮可能更少）
    with pytest.raises(SystemExit):  # γ 必须是正整数：参数解析时就拒绝
        parse_args(["--weights", str(tmp_path / "target.pth"), "--num_draft_tokens", "0"])
