"""生成 scripts/eval_model.py 自带的两套选择题（C-Eval 格式，中文、英文各一套），结果是确定的。

    python dataset/make_eval_samples.py

每行 {"question": ..., "A": ..., "B": ..., "C": ..., "D": ..., "answer": "B"}，与 C-Eval / CMMLU 的列相同，
换成官方的验证集文件不用改代码。题目是模板加小表格生成的常识题，每题只有一个正确选项：
加减法、比大小、首都、反义词、归类、星期与月份、单位换算。正确选项的位置随机而均匀，瞎猜的准确率是 1/4。
留出文本 samples/eval_text.jsonl 是手写的，不由本脚本生成，也不出现在训练样本里（测试检查）；
选择题考的一部分事实（首都、星期、单位）在 pretrain.jsonl 里出现过（英文有几道问句逐字相同），选项是新的。
"""
import json
import random
from pathlib import Path

SAMPLES_DIR = Path(__file__).resolve().parent / "samples"
LETTERS = "ABCD"

# (中文国名, 中文首都, 英文国名, 英文首都)
CAPITALS = [
    ("中国", "北京", "China", "Beijing"), ("法国", "巴黎", "France", "Paris"), ("日本", "东京", "Japan", "Tokyo"),
    ("英国", "伦敦", "the United Kingdom", "London"), ("意大利", "罗马", "Italy", "Rome"),
    ("德国", "柏林", "Germany", "Berlin"), ("埃及", "开罗", "Egypt", "Cairo"), ("加拿大", "渥太华", "Canada", "Ottawa"),
    ("俄罗斯", "莫斯科", "Russia", "Moscow"), ("西班牙", "马德里", "Spain", "Madrid"),
    ("韩国", "首尔", "South Korea", "Seoul"), ("泰国", "曼谷", "Thailand", "Bangkok"),
    ("希腊", "雅典", "Greece", "Athens"), ("葡萄牙", "里斯本", "Portugal", "Lisbon"),
    ("奥地利", "维也纳", "Austria", "Vienna"), ("挪威", "奥斯陆", "Norway", "Oslo"),
    ("瑞典", "斯德哥尔摩", "Sweden", "Stockholm"), ("阿根廷", "布宜诺斯艾利斯", "Argentina", "Buenos Aires"),
    ("肯尼亚", "内罗毕", "Kenya", "Nairobi"), ("印度", "新德里", "India", "New Delhi"),
]
# (中文词, 中文反义词, 英文词, 英文反义词)
OPPOSITES = [
    ("大", "小", "big", "small"), ("高", "矮", "tall", "short"), ("冷", "热", "cold", "hot"),
    ("快", "慢", "fast", "slow"), ("多", "少", "many", "few"), ("新", "旧", "new", "old"),
    ("上", "下", "up", "down"), ("左", "右", "left", "right"), ("开", "关", "open", "closed"),
    ("黑", "白", "black", "white"), ("前", "后", "before", "after"), ("胖", "瘦", "fat", "thin"),
    ("早", "晚", "early", "late"), ("满", "空", "full", "empty"), ("买", "卖", "buy", "sell"),
    ("哭", "笑", "cry", "laugh"),
]
# 类别 → [(中文, 英文)]；干扰项取自其他类别，所以每题恰好一个选项属于问到的类别
CATEGORIES = {
    ("水果", "fruit"): [("苹果", "apple"), ("香蕉", "banana"), ("葡萄", "grape"), ("桃子", "peach"),
                        ("西瓜", "watermelon"), ("草莓", "strawberry")],
    ("动物", "animal"): [("老虎", "tiger"), ("兔子", "rabbit"), ("大象", "elephant"), ("猴子", "monkey"),
                         ("熊猫", "panda"), ("狐狸", "fox")],
    ("交通工具", "vehicle"): [("汽车", "car"), ("火车", "train"), ("飞机", "airplane"), ("自行车", "bicycle"),
                              ("轮船", "ship"), ("公交车", "bus")],
    ("颜色", "colour"): [("红色", "red"), ("蓝色", "blue"), ("绿色", "green"), ("黄色", "yellow"),
                         ("紫色", "purple"), ("灰色", "grey")],
}
WEEKDAYS = [("星期一", "Monday"), ("星期二", "Tuesday"), ("星期三", "Wednesday"), ("星期四", "Thursday"),
            ("星期五", "Friday"), ("星期六", "Saturday"), ("星期日", "Sunday")]
MONTHS_ZH = ["一月", "二月", "三月", "四月", "五月", "六月", "七月", "八月", "九月", "十月", "十一月", "十二月"]
MONTHS_EN = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
             "November", "December"]
# (中文问题, 英文问题, 正确答案, 三个错误答案)
UNITS = [
    ("1 千米等于多少米？", "How many metres are in 1 kilometre?", "1000", ["100", "10", "10000"]),
    ("1 米等于多少厘米？", "How many centimetres are in 1 metre?", "100", ["10", "1000", "60"]),
    ("1 小时等于多少分钟？", "How many minutes are in 1 hour?", "60", ["100", "30", "24"]),
    ("1 分钟等于多少秒？", "How many seconds are in 1 minute?", "60", ["100", "10", "3600"]),
    ("1 天等于多少小时？", "How many hours are in 1 day?", "24", ["12", "60", "48"]),
    ("1 千克等于多少克？", "How many grams are in 1 kilogram?", "1000", ["100", "10", "500"]),
    ("1 升等于多少毫升？", "How many millilitres are in 1 litre?", "1000", ["100", "10", "60"]),
    ("一周有多少天？", "How many days are in a week?", "7", ["5", "10", "12"]),
]


def mc_row(question: str, correct: str, wrong, rng: random.Random) -> dict:
    """正确选项放到随机位置；选项必须互不相同。"""
    options = [correct] + list(wrong)
    assert len(options) == 4 and len(set(options)) == 4, options
    rng.shuffle(options)
    return {"question": question, **dict(zip(LETTERS, options)), "answer": LETTERS[options.index(correct)]}


def arithmetic(lang: str, rng: random.Random, n: int):
    for _ in range(n):
        a, b = rng.randint(2, 49), rng.randint(2, 49)
        if rng.random() < 0.5:
            op, value = "+", a + b
        else:
            a, b = max(a, b), min(a, b)
            op, value = "-", a - b
        wrong = rng.sample([v for v in range(max(0, value - 6), value + 7) if v != value], 3)
        q = f"{a} {op} {b} 等于多少？" if lang == "zh" else f"What is {a} {op} {b}?"
        yield q, str(value), [str(w) for w in wrong]


def comparison(lang: str, rng: random.Random, n: int):
    for i in range(n):
        numbers = rng.sample(range(1, 100), 4)
        pick = max if i % 2 == 0 else min
        word = ("最大" if pick is max else "最小") if lang == "zh" else ("largest" if pick is max else "smallest")
        q = f"下面哪个数{word}？" if lang == "zh" else f"Which number is the {word}?"
        best = pick(numbers)
        yield q, str(best), [str(x) for x in numbers if x != best]


def capitals(lang: str, rng: random.Random):
    for k, row in enumerate(CAPITALS):
        others = [r for j, r in enumerate(CAPITALS) if j != k]
        wrong = rng.sample(others, 3)
        if lang == "zh":
            yield f"{row[0]}的首都是哪座城市？", row[1], [w[1] for w in wrong]
        else:
            yield f"What is the capital of {row[2]}?", row[3], [w[3] for w in wrong]


def opposites(lang: str, rng: random.Random):
    for k, row in enumerate(OPPOSITES):
        # 干扰项取其他词对里的词，不会是这个词的反义词
        pool = [w for j, r in enumerate(OPPOSITES) if j != k for w in ((r[0], r[1]) if lang == "zh" else (r[2], r[3]))]
        wrong = rng.sample(pool, 3)
        if lang == "zh":
            yield f"“{row[0]}”的反义词是哪一个？", row[1], wrong
        else:
            yield f"Which word is the opposite of \"{row[2]}\"?", row[3], wrong


def categories(lang: str, rng: random.Random, per_category: int):
    names = list(CATEGORIES)
    for name in names:
        for member in rng.sample(CATEGORIES[name], per_category):
            others = rng.sample([c for c in names if c != name], 3)
            wrong = [rng.choice(CATEGORIES[c]) for c in others]
            if lang == "zh":
                yield f"下列哪一个是{name[0]}？", member[0], [w[0] for w in wrong]
            else:
                yield f"Which of these is a {name[1]}?", member[1], [w[1] for w in wrong]


def calendar(lang: str, rng: random.Random):
    for k in range(7):
        day, nxt = WEEKDAYS[k], WEEKDAYS[(k + 1) % 7]
        wrong = rng.sample([d for j, d in enumerate(WEEKDAYS) if j != (k + 1) % 7], 3)
        if lang == "zh":
            yield f"{day[0]}的后一天是星期几？", nxt[0], [w[0] for w in wrong]
        else:
            yield f"Which day comes after {day[1]}?", nxt[1], [w[1] for w in wrong]
    months = MONTHS_ZH if lang == "zh" else MONTHS_EN
    for k in range(11):
        wrong = rng.sample([m for j, m in enumerate(months) if j != k + 1], 3)
        q = f"{months[k]}的下一个月是几月？" if lang == "zh" else f"Which month comes after {months[k]}?"
        yield q, months[k + 1], wrong


def units(lang: str):
    for zh, en, correct, wrong in UNITS:
        yield (zh if lang == "zh" else en), correct, wrong


def build(lang: str) -> list:
    rng = random.Random(2024 if lang == "zh" else 2025)
    generators = [arithmetic(lang, rng, 40), comparison(lang, rng, 20), capitals(lang, rng), opposites(lang, rng),
                  categories(lang, rng, 5), calendar(lang, rng), units(lang)]
    return [mc_row(q, correct, wrong, rng) for gen in generators for q, correct, wrong in gen]


def main():
    for lang in ("zh", "en"):
        rows = build(lang)
        path = SAMPLES_DIR / f"eval_mc_{lang}.jsonl"
        with open(path, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        print(f"{path}: {len(rows)} 题")


if __name__ == "__main__":
    main()
