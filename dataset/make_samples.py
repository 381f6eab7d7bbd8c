"""生成 dataset/samples/ 下的小样本数据（我们自己写的事实 + 模板，中英双语），让所有训练脚本离线可跑。

    python dataset/make_samples.py   # 重新生成 pretrain / sft / dpo / lora_identity 四个 jsonl（结果是确定的）

格式与 MiniMind 公开数据集相同（见 dataset/README.md），所以换成官方的 pretrain_hq.jsonl 等文件不用改代码。
内容刻意简单、重复：一个几十万参数的模型在 CPU 上训练几分钟，也能学会其中的格式和一部分事实。
"""
import json
import random
from pathlib import Path

SAMPLES_DIR = Path(__file__).resolve().parent / "samples"

# (中文问题, 中文回答, 英文问题, 英文回答)
FACTS = [
    ("中国的首都是哪里？", "中国的首都是北京。", "What is the capital of China?", "The capital of China is Beijing."),
    ("法国的首都是哪里？", "法国的首都是巴黎。", "What is the capital of France?", "The capital of France is Paris."),
    ("日本的首都是哪里？", "日本的首都是东京。", "What is the capital of Japan?", "The capital of Japan is Tokyo."),
    ("英国的首都是哪里？", "英国的首都是伦敦。", "What is the capital of the United Kingdom?", "The capital of the United Kingdom is London."),
    ("意大利的首都是哪里？", "意大利的首都是罗马。", "What is the capital of Italy?", "The capital of Italy is Rome."),
    ("德国的首都是哪里？", "德国的首都是柏林。", "What is the capital of Germany?", "The capital of Germany is Berlin."),
    ("埃及的首都是哪里？", "埃及的首都是开罗。", "What is the capital of Egypt?", "The capital of Egypt is Cairo."),
    ("加拿大的首都是哪里？", "加拿大的首都是渥太华。", "What is the capital of Canada?", "The capital of Canada is Ottawa."),
    ("水在标准大气压下多少度沸腾？", "水在标准大气压下 100 摄氏度沸腾。", "At what temperature does water boil at sea level?", "Water boils at 100 degrees Celsius at sea level."),
    ("水在多少度结冰？", "水在 0 摄氏度结冰。", "At what temperature does water freeze?", "Water freezes at 0 degrees Celsius."),
    ("地球绕着什么转？", "地球绕着太阳转，一圈大约 365 天。", "What does the Earth orbit?", "The Earth orbits the Sun, once every 365 days or so."),
    ("月亮为什么会发光？", "月亮本身不发光，它反射太阳的光。", "Why does the Moon shine?", "The Moon does not make light; it reflects sunlight."),
    ("一周有几天？", "一周有七天。", "How many days are in a week?", "A week has seven days."),
    ("一年有几个月？", "一年有十二个月。", "How many months are in a year?", "A year has twelve months."),
    ("太阳系最大的行星是哪颗？", "太阳系最大的行星是木星。", "What is the largest planet in the solar system?", "The largest planet in the solar system is Jupiter."),
    ("离太阳最近的行星是哪颗？", "离太阳最近的行星是水星。", "Which planet is closest to the Sun?", "Mercury is the planet closest to the Sun."),
    ("植物靠什么制造养分？", "植物通过光合作用，用阳光、水和二氧化碳制造养分。", "How do plants make food?", "Plants make food by photosynthesis, using sunlight, water and carbon dioxide."),
    ("人体最大的器官是什么？", "人体最大的器官是皮肤。", "What is the largest organ of the human body?", "The largest organ of the human body is the skin."),
    ("光速大约是多少？", "光速大约是每秒 30 万公里。", "How fast is light?", "Light travels at about 300,000 kilometres per second."),
    ("彩虹有几种颜色？", "彩虹通常说有七种颜色：红橙黄绿蓝靛紫。", "How many colours does a rainbow have?", "A rainbow is usually said to have seven colours."),
    ("什么是语言模型？", "语言模型给一段文字的下一个词打分，预测接下来最可能出现什么。", "What is a language model?", "A language model scores the next token of a text and predicts what is likely to come next."),
    ("什么是 token？", "token 是模型处理文字的最小单位，可能是一个字、一个词或词的一部分。", "What is a token?", "A token is the unit of text a model reads: a character, a word or a piece of a word."),
    ("什么是分词器？", "分词器把文字切成 token，并把每个 token 映射成一个整数 id。", "What is a tokenizer?", "A tokenizer splits text into tokens and maps each token to an integer id."),
    ("什么是注意力机制？", "注意力让每个位置按相关程度从其他位置收集信息。", "What is attention?", "Attention lets each position gather information from other positions, weighted by relevance."),
    ("为什么要用因果掩码？", "因果掩码让每个位置只能看到它之前的内容，训练时就不会偷看答案。", "Why use a causal mask?", "A causal mask lets each position see only earlier tokens, so training cannot peek at the answer."),
    ("RMSNorm 做了什么？", "RMSNorm 用均方根把向量缩放到稳定的尺度，再乘一个可学习的权重。", "What does RMSNorm do?", "RMSNorm rescales a vector by its root mean square and multiplies it by a learned weight."),
    ("RoPE 是什么？", "RoPE 是旋转位置编码，它按位置旋转 query 和 key，让注意力分数只依赖相对位置。", "What is RoPE?", "RoPE rotates queries and keys by position so attention scores depend only on relative position."),
    ("GQA 有什么好处？", "GQA 让多个 query 头共享一组 key 和 value，KV cache 因此变小。", "Why use GQA?", "GQA lets several query heads share one key-value head, which shrinks the KV cache."),
    ("KV cache 有什么用？", "KV cache 保存已经算过的 key 和 value，生成新 token 时不用重算历史。", "What is the KV cache for?", "The KV cache stores past keys and values so generation does not recompute the history."),
    ("SwiGLU 是什么？", "SwiGLU 是带门控的前馈网络：一支经过 SiLU 激活，与另一支逐元素相乘。", "What is SwiGLU?", "SwiGLU is a gated feed-forward layer: one branch goes through SiLU and multiplies the other."),
    ("残差连接有什么作用？", "残差连接把输入直接加到输出上，梯度可以沿这条捷径传回底层。", "What does a residual connection do?", "A residual connection adds the input to the output, giving gradients a shortcut to early layers."),
    ("什么是预训练？", "预训练让模型在大量文本上学习预测下一个 token。", "What is pretraining?", "Pretraining teaches a model to predict the next token on a large amount of text."),
    ("什么是指令微调？", "指令微调用问答对话训练模型，让它学会按要求回答。", "What is instruction tuning?", "Instruction tuning trains a model on conversations so it learns to follow requests."),
    ("LoRA 是什么？", "LoRA 冻结原始权重，只训练一对低秩矩阵作为增量。", "What is LoRA?", "LoRA freezes the original weights and trains a pair of low-rank matrices as an update."),
    ("DPO 是什么？", "DPO 直接用成对的偏好数据调整模型，不需要单独训练奖励模型。", "What is DPO?", "DPO tunes a model directly on preference pairs, without training a separate reward model."),
    ("知识蒸馏是什么？", "知识蒸馏让小模型学习大模型输出的概率分布。", "What is knowledge distillation?", "Knowledge distillation trains a small model to match the output distribution of a large one."),
    ("学习率太大会怎样？", "学习率太大时损失会震荡甚至变成 NaN。", "What happens if the learning rate is too high?", "With a learning rate that is too high the loss oscillates or even becomes NaN."),
    ("为什么要做 warmup？", "warmup 在训练开始时逐步增大学习率，避免初期更新过猛。", "Why use warmup?", "Warmup raises the learning rate gradually at the start so early updates are not too large."),
    ("交叉熵损失的初始值大约是多少？", "随机初始化时交叉熵大约等于词表大小的自然对数。", "What is the initial cross-entropy loss?", "At random initialisation the cross-entropy is about the natural log of the vocabulary size."),
    ("MiniMind 是什么？", "MiniMind 是一个很小的中文语言模型，最小的版本只有约 26M 参数。", "What is MiniMind?", "MiniMind is a very small language model; its smallest version has about 26M parameters."),
]

GREETINGS = [
    ("你好", "你好！有什么可以帮你的吗？"), ("你是谁？", "我是 MiniMind，一个小型语言模型。"),
    ("谢谢你", "不客气，很高兴能帮上忙。"), ("再见", "再见，祝你学习顺利！"),
    ("Hello", "Hello! How can I help you?"), ("Who are you?", "I am MiniMind, a small language model."),
    ("Thank you", "You are welcome, glad to help."), ("Goodbye", "Goodbye, and good luck with your studies!"),
]

ZH_NUM = "零一二三四五六七八九十"
SYSTEM_PROMPTS = ["你是一个乐于助人的助手。", "You are a helpful assistant.", "请用简洁的语言回答。"]
ZH_ASK = ["{q}", "请问{q}", "我想知道：{q}", "{q}请回答。"]
EN_ASK = ["{q}", "Please tell me: {q}", "Quick question. {q}", "{q} Answer briefly."]
BAD_ANSWERS_ZH = ["我不知道。", "这个问题没有意义。", "自己去查吧。"]
BAD_ANSWERS_EN = ["I don't know.", "That question makes no sense.", "Look it up yourself."]


def arithmetic(rng: random.Random):
    """一道加法或减法：(中文问题, 中文回答, 英文问题, 英文回答)。"""
    a, b = rng.randint(0, 20), rng.randint(0, 20)
    if rng.random() < 0.5:
        return (f"{a} 加 {b} 等于多少？", f"{a} 加 {b} 等于 {a + b}。",
                f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}.")
    a, b = max(a, b), min(a, b)
    return (f"{a} 减 {b} 等于多少？", f"{a} 减 {b} 等于 {a - b}。",
            f"What is {a} minus {b}?", f"{a} minus {b} is {a - b}.")


def pretrain_lines(rng: random.Random, n_arithmetic: int = 300):
    lines = []
    for zq, za, eq, ea in FACTS:
        lines += [za, ea, f"问：{zq}答：{za}", f"Q: {eq} A: {ea}", f"{za}{rng.choice(FACTS)[1]}",
                  f"{ea} {rng.choice(FACTS)[3]}"]
    for _ in range(n_arithmetic):
        zq, za, eq, ea = arithmetic(rng)
        lines.append(za if rng.random() < 0.5 else ea)
    for i in range(1, 11):
        lines.append("".join(ZH_NUM[j] for j in range(1, i + 1)) + "。")
        lines.append(" ".join(str(j) for j in range(1, i + 1)) + ".")
    rng.shuffle(lines)
    return [{"text": t} for t in lines]


def sft_conversations(rng: random.Random, n_arithmetic: int = 150):
    qa = []
    for zq, za, eq, ea in FACTS:
        qa += [(rng.choice(ZH_ASK).format(q=zq), za), (rng.choice(EN_ASK).format(q=eq), ea),
               (zq, za), (eq, ea)]
    for _ in range(n_arithmetic):
        zq, za, eq, ea = arithmetic(rng)
        qa.append((zq, za) if rng.random() < 0.5 else (eq, ea))
    qa += GREETINGS * 3
    rng.shuffle(qa)
    conversations = []
    i = 0
    while i < len(qa):
        turns = 2 if rng.random() < 0.2 and i + 1 < len(qa) else 1  # 约 20% 是两轮对话
        messages = [{"role": "system", "content": rng.choice(SYSTEM_PROMPTS)}] if rng.random() < 0.3 else []
        for q, a in qa[i:i + turns]:
            messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        conversations.append({"conversations": messages})
        i += turns
    return conversations


def dpo_pairs(rng: random.Random, n_arithmetic: int = 100):
    pairs = []

    def add(question, good, bad):
        prompt = [{"role": "user", "content": question}]
        pairs.append({"chosen": prompt + [{"role": "assistant", "content": good}],
                      "rejected": prompt + [{"role": "assistant", "content": bad}]})

    for k, (zq, za, eq, ea) in enumerate(FACTS):
        wrong = FACTS[(k + rng.randint(1, len(FACTS) - 1)) % len(FACTS)]  # 答非所问：别的事实的答案
        add(zq, za, wrong[1])
        add(eq, ea, wrong[3])
        add(rng.choice(ZH_ASK).format(q=zq), za, rng.choice(BAD_ANSWERS_ZH))
        add(rng.choice(EN_ASK).format(q=eq), ea, rng.choice(BAD_ANSWERS_EN))
    for _ in range(n_arithmetic):
        a, b = rng.randint(0, 20), rng.randint(0, 20)
        off = rng.choice([-2, -1, 1, 2])
        if rng.random() < 0.5:
            add(f"{a} 加 {b} 等于多少？", f"{a} 加 {b} 等于 {a + b}。", f"{a} 加 {b} 等于 {a + b + off}。")
        else:
            add(f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}.", f"{a} plus {b} is {a + b + off}.")
    rng.shuffle(pairs)
    return pairs


IDENTITY_QUESTIONS = ["你是谁？", "你叫什么名字？", "请介绍一下你自己。", "你是哪个模型？", "你是做什么的？",
                      "Who are you?", "What is your name?", "Introduce yourself.", "Which model are you?",
                      "What do you do?"]
IDENTITY_ANSWERS = ["我是小笔记，一个在 MiniMind Notes 课程里用 LoRA 微调出来的小模型。",
                    "I am Little Notes, a small model fine-tuned with LoRA in the MiniMind Notes course."]


def lora_identity(rng: random.Random, repeats: int = 6):
    """LoRA 示例任务：给模型换一个身份（MiniMind 的 lora_identity 也是这类数据）。"""
    rows = []
    for _ in range(repeats):
        for q in IDENTITY_QUESTIONS:
            answer = IDENTITY_ANSWERS[0] if any("\u4e00" <= ch <= "\u9fff" for ch in q) else IDENTITY_ANSWERS[1]
            rows.append({"conversations": [{"role": "user", "content": q}, {"role": "assistant", "content": answer}]})
    rng.shuffle(rows)
    return rows


def write_jsonl(path: Path, rows):
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"{path.relative_to(SAMPLES_DIR.parent.parent)}: {len(rows)} 条")


def main():
    SAMPLES_DIR.mkdir(exist_ok=True)
    write_jsonl(SAMPLES_DIR / "pretrain.jsonl", pretrain_lines(random.Random(0)))
    write_jsonl(SAMPLES_DIR / "sft.jsonl", sft_conversations(random.Random(1)))
    write_jsonl(SAMPLES_DIR / "dpo.jsonl", dpo_pairs(random.Random(2)))
    write_jsonl(SAMPLES_DIR / "lora_identity.jsonl", lora_identity(random.Random(3)))


if __name__ == "__main__":
    main()
