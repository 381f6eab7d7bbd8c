"""自测题：解析 quiz.md（统一格式），在终端里逐题作答并计分。

用法：
    python -m modules.common.quiz modules/01-foundation/01-normalization/quiz.md
    python -m modules.common.quiz PATH --check     # 只检查格式（测试用）
    python -m modules.common.quiz PATH --reveal    # 直接打印全部答案与解析
    python -m modules.common.quiz PATH/quiz.en.md  # 英文版：界面也是英文

quiz.md 的格式（每题一节；答案折叠在 <details> 里，GitHub 上点开才看得到）：

    ### Q1 [single] 题干第一行
    题干的其余部分（可以有代码块）
    - A. 选项
    - B. 选项

    <details><summary>答案与解析</summary>

    答案：B

    解析：为什么选 B……
    </details>

题型：single（单选）、multiple（多选，答案写成 "A, C"）、predict（预测输出/形状/趋势）、short（简答）。
predict 与 short 的答案是文字：作答后对照答案自评。

英文版 quiz.en.md 用同一个格式，只把标记换成英文："Answer:"、"Explanation:"（summary 写 "Answer and explanation"）；
题号、题型标签 [single] 等与选项字母不变。答题器按文件名（*.en.md）选界面语言。
"""
import argparse
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import List

QUESTION_RE = re.compile(r"^### Q(\d+) \[(single|multiple|predict|short)\] (.+)$")
OPTION_RE = re.compile(r"^- ([A-Z])\. (.+)$")
ANSWER_RE = re.compile(r"^(?:答案：|Answer:)\s*(.+)$")
EXPLANATION_RE = re.compile(r"^(?:解析：|Explanation:)\s*(.*)$")
CHOICE_TYPES = ("single", "multiple")
# 答题器界面的文字（题目内容来自文件本身）
UI = {
    "zh": {"choose": "你的答案{hint}：", "multiple_hint": "（多选，如 AC）", "think": "想好后按回车看答案……",
           "answer": "答案：", "self_check": "你答对了吗？[y/N] ", "correct": "✅ 正确", "wrong": "❌ 正确答案：",
           "explanation": "解析：", "score": "得分：", "yes": ("y", "yes", "是")},
    "en": {"choose": "Your answer{hint}: ", "multiple_hint": " (several letters, e.g. AC)",
           "think": "Think it over, then press Enter to see the answer...", "answer": "Answer: ",
           "self_check": "Did you get it right? [y/N] ", "correct": "✅ Correct", "wrong": "❌ Correct answer: ",
           "explanation": "Explanation: ", "score": "Score: ", "yes": ("y", "yes")},
}


def quiz_language(path) -> str:
    """quiz.en.md 是英文版，其余按中文。"""
    return "en" if Path(path).name.endswith(".en.md") else "zh"


class QuizFormatError(ValueError):
    """quiz.md 不符合格式；消息里带文件与行号。"""


@dataclass
class Question:
    number: int
    kind: str
    prompt: str  # 题干（含第一行之后的内容，不含选项）
    options: dict = field(default_factory=dict)  # {"A": "选项文字"}
    answer: str = ""
    explanation: str = ""
    line: int = 0

    @property
    def answer_letters(self) -> List[str]:
        """选择题的正确选项（排好序）。"""
        return sorted(set(re.findall(r"[A-Z]", self.answer)))


def parse_quiz(path) -> List[Question]:
    path = Path(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    starts = [i for i, line in enumerate(lines) if QUESTION_RE.match(line)]
    if not starts:
        raise QuizFormatError(f"{path}: 没有找到题目（每题以 '### Q1 [single] 题干' 这样的标题开始）")
    questions = []
    for n, start in enumerate(starts):
        end = starts[n + 1] if n + 1 < len(starts) else len(lines)
        questions.append(_parse_question(path, lines, start, end))
    for expected, q in enumerate(questions, start=1):
        if q.number != expected:
            raise QuizFormatError(f"{path}:{q.line}: 题号应为 Q{expected}，写的是 Q{q.number}")
    return questions


def _parse_question(path, lines, start, end) -> Question:
    number, kind, first_line = QUESTION_RE.match(lines[start]).groups()
    q = Question(number=int(number), kind=kind, prompt=first_line, line=start + 1)
    body = lines[start + 1:end]
    try:
        details = next(i for i, line in enumerate(body) if line.strip().startswith("<details>"))
        closing = next(i for i in range(details, len(body)) if body[i].strip() == "</details>")
    except StopIteration:
        raise QuizFormatError(f"{path}:{start + 1}: Q{number} 缺少 <details>…</details> 包住的答案") from None

    prompt_lines = []
    for line in body[:details]:
        option = OPTION_RE.match(line)
        if option and kind in CHOICE_TYPES:
            q.options[option.group(1)] = option.group(2)
        else:
            prompt_lines.append(line)
    q.prompt = "\n".join([first_line, *prompt_lines]).strip()

    hidden = body[details + 1:closing]
    answer_at = next((i for i, line in enumerate(hidden) if ANSWER_RE.match(line)), None)
    explain_at = next((i for i, line in enumerate(hidden) if EXPLANATION_RE.match(line)), None)
    if answer_at is None or explain_at is None or explain_at < answer_at:
        raise QuizFormatError(f"{path}:{start + 1}: Q{number} 的 <details> 里需要先 '答案：…' 再 '解析：…'"
                              "（英文版为 'Answer: …' 与 'Explanation: …'）")
    answer_block = [ANSWER_RE.match(hidden[answer_at]).group(1), *hidden[answer_at + 1:explain_at]]
    q.answer = "\n".join(answer_block).strip()
    q.explanation = "\n".join([EXPLANATION_RE.match(hidden[explain_at]).group(1),
                               *hidden[explain_at + 1:]]).strip()
    if not q.explanation:
        raise QuizFormatError(f"{path}:{start + 1}: Q{number} 的解析是空的")

    if kind in CHOICE_TYPES:
        if len(q.options) < 2:
            raise QuizFormatError(f"{path}:{start + 1}: Q{number} 是选择题，至少要有两个 '- A. …' 选项")
        letters = q.answer_letters
        unknown = [x for x in letters if x not in q.options]
        if not letters or unknown:
            raise QuizFormatError(f"{path}:{start + 1}: Q{number} 的答案 {q.answer!r} 不是已有选项 {sorted(q.options)}")
        if kind == "single" and len(letters) != 1:
            raise QuizFormatError(f"{path}:{start + 1}: Q{number} 是单选题，答案只能有一个选项，写的是 {q.answer!r}")
    return q


def _ask(prompt: str) -> str:
    try:
        return input(prompt)
    except EOFError:  # 输入结束（管道/重定向）：按空答案处理
        return ""


def run_quiz(questions: List[Question], out=sys.stdout, language: str = "zh") -> int:
    """逐题作答，返回答对的题数；language 选界面文字（"zh" / "en"）。"""
    ui = UI[language]
    correct = 0
    for q in questions:
        print(f"\nQ{q.number} [{q.kind}] {q.prompt}", file=out)
        for letter, text in q.options.items():
            print(f"  {letter}. {text}", file=out)
        if q.kind in CHOICE_TYPES:
            hint = ui["multiple_hint"] if q.kind == "multiple" else ""
            reply = _ask(ui["choose"].format(hint=hint))
            ok = sorted(set(re.findall(r"[A-Z]", reply.upper()))) == q.answer_letters
        else:
            _ask(ui["think"])
            print(f"{ui['answer']}{q.answer}", file=out)
            ok = _ask(ui["self_check"]).strip().lower() in ui["yes"]
        correct += ok
        print((ui["correct"] if ok else f"{ui['wrong']}{q.answer}") + f"\n{ui['explanation']}{q.explanation}", file=out)
    print(f"\n{ui['score']}{correct} / {len(questions)}", file=out)
    return correct


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m modules.common.quiz", description="在终端里做一份 quiz.md 自测题并计分")
    parser.add_argument("path", type=Path, help="quiz.md 的路径")
    parser.add_argument("--check", action="store_true", help="只检查格式，打印题数")
    parser.add_argument("--reveal", action="store_true", help="不作答，直接打印全部答案与解析")
    args = parser.parse_args(argv)
    if not args.path.is_file():
        parser.exit(2, f"错误：找不到 {args.path}；请给出某个模块的 quiz.md 路径\n")
    try:
        questions = parse_quiz(args.path)
    except QuizFormatError as e:
        parser.exit(1, f"格式错误：{e}\n")
    if args.check:
        kinds = {k: sum(q.kind == k for q in questions) for k in ("single", "multiple", "predict", "short")}
        print(f"{args.path}: {len(questions)} 题，" + "，".join(f"{k} {v}" for k, v in kinds.items()))
        return
    ui = UI[quiz_language(args.path)]
    if args.reveal:
        for q in questions:
            print(f"Q{q.number} [{q.kind}] {q.prompt}\n{ui['answer']}{q.answer}\n{ui['explanation']}{q.explanation}\n")
        return
    run_quiz(questions, language=quiz_language(args.path))


if __name__ == "__main__":
    main()
