// MiniMind 网页对话：多轮、逐 token 流式显示、停止、思考过程折叠显示。
// 只用浏览器自带的 fetch + ReadableStream 读 OpenAI 格式的 server-sent events，不依赖任何库或 CDN。
"use strict";

const $ = (id) => document.getElementById(id);
const history = [];          // 发给服务的多轮对话：{role, content}（思考过程不回传）
let controller = null;       // 正在进行的请求；点"停止"时 abort()

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

function setStatus(text) { $("status").textContent = text; }

// ---- 渲染：转义由 textContent 保证；``` 代码块、`行内代码`、$数学$ 各用等宽字体显示 ----
function appendInline(parent, text) {
  const pattern = /(`[^`\n]+`|\$\$[\s\S]+?\$\$|\$[^$\n]+\$)/g;
  let last = 0;
  for (const match of text.matchAll(pattern)) {
    parent.append(text.slice(last, match.index));
    const token = match[0];
    const el = document.createElement(token.startsWith("`") ? "code" : "span");
    if (token.startsWith("`")) el.textContent = token.slice(1, -1);
    else { el.className = "math"; el.textContent = token; }
    parent.append(el);
    last = match.index + token.length;
  }
  parent.append(text.slice(last));
}

function renderRich(container, text) {
  container.replaceChildren();
  const fence = /```([\w+-]*)\n?([\s\S]*?)(?:```|$)/g;
  let last = 0;
  for (const match of text.matchAll(fence)) {
    appendInline(container, text.slice(last, match.index));
    const pre = document.createElement("pre");
    const code = document.createElement("code");
    if (match[1]) code.dataset.lang = match[1];
    code.textContent = match[2].replace(/\n$/, "");
    pre.append(code);
    container.append(pre);
    last = match.index + match[0].length;
  }
  appendInline(container, text.slice(last));
}

function addMessage(role, text = "") {
  const box = document.createElement("div");
  box.className = `message ${role}`;
  const label = document.createElement("span");
  label.className = "role";
  label.textContent = role === "user" ? "你" : "MiniMind";
  box.append(label);
  if (role === "assistant") {
    const thinking = document.createElement("details");   // 默认折叠
    thinking.className = "thinking";
    thinking.hidden = true;
    const summary = document.createElement("summary");
    summary.textContent = "思考过程";
    const body = document.createElement("div");
    body.className = "thinking-text";
    thinking.append(summary, body);
    box.append(thinking);
  }
  const content = document.createElement("div");
  content.className = "content";
  renderRich(content, text);
  box.append(content);
  $("messages").append(box);
  box.scrollIntoView({ block: "end" });
  return box;
}

// ---- 读 SSE：按空行切事件，每个 "data: ..." 是一个 JSON chunk，"data: [DONE]" 结束 ----
async function* sseEvents(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") return;
        yield JSON.parse(data);
      }
    }
  }
}

function numberOf(id, fallback) {
  const value = Number($(id).value);
  return Number.isFinite(value) ? value : fallback;
}

async function send(question) {
  history.push({ role: "user", content: question });
  addMessage("user", question);
  const box = addMessage("assistant");
  const contentEl = box.querySelector(".content");
  const thinking = box.querySelector("details.thinking");
  let content = "", reasoning = "", finish = null;
  const system = $("system").value.trim();
  const body = {
    model: $("model-name").dataset.id || "minimind",
    messages: (system ? [{ role: "system", content: system }] : []).concat(history),
    temperature: numberOf("temperature", 0.85), top_p: numberOf("top-p", 0.85),
    max_tokens: Math.max(1, Math.round(numberOf("max-tokens", 512))), stream: true,
  };
  controller = new AbortController();
  setBusy(true);
  setStatus("生成中…");
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(), body: JSON.stringify(body), signal: controller.signal,
    });
    if (!response.ok) {
      const error = await response.json().catch(() => ({}));
      throw new Error(error.error?.message || `HTTP ${response.status}`);
    }
    for await (const chunk of sseEvents(response)) {
      if (chunk.error) throw new Error(chunk.error.message);
      const choice = chunk.choices?.[0];
      if (!choice) continue;
      if (choice.delta?.reasoning_content) {
        reasoning += choice.delta.reasoning_content;
        thinking.hidden = false;
        thinking.querySelector(".thinking-text").textContent = reasoning;
      }
      if (choice.delta?.content) {
        content += choice.delta.content;
        renderRich(contentEl, content);
        box.scrollIntoView({ block: "end" });
      }
      if (choice.finish_reason) finish = choice.finish_reason;
    }
    setStatus(finish === "length" ? "已达到 max_tokens，回答被截断" : "");
  } catch (err) {
    if (err.name === "AbortError") {
      setStatus("已停止");
    } else {
      box.classList.add("error");
      renderRich(contentEl, content + (content ? "\n" : "") + `出错了：${err.message}`);
      setStatus("");
    }
  } finally {
    history.push({ role: "assistant", content });   // 停止时保留已生成的部分，下一轮接着聊
    controller = null;
    setBusy(false);
  }
}

function setBusy(busy) {
  const button = $("send");
  button.textContent = busy ? "停止" : "发送";
  button.classList.toggle("stop", busy);
}

$("composer").addEventListener("submit", (event) => {
  event.preventDefault();
  if (controller) { controller.abort(); return; }   // 生成中：按钮是"停止"
  const question = $("input").value.trim();
  if (!question) return;
  $("input").value = "";
  send(question);
});

$("input").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    $("composer").requestSubmit();
  }
});

$("new-chat").addEventListener("click", () => {
  if (controller) controller.abort();
  history.length = 0;
  $("messages").replaceChildren();
  setStatus("");
});

async function loadModelName() {
  try {
    const response = await fetch("/v1/models", { headers: headers() });
    const data = await response.json();
    if (!response.ok) throw new Error(data.error?.message || `HTTP ${response.status}`);
    const id = data.data[0].id;
    $("model-name").textContent = `模型：${id}`;
    $("model-name").dataset.id = id;
  } catch (err) {
    $("model-name").textContent = `无法获取模型列表：${err.message}`;
  }
}

$("api-key").addEventListener("change", loadModelName);
loadModelName();
