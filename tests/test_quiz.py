"""modules/common/quiz.py 的解析与作答，以及仓库里每一份 quiz.md 都符合格式。"""
import subprocess
import sys
import textwrap

import pytest

from conftest import REPO_ROOT
from modules.common.quiz import QuizFormatError, parse_quiz

GOOD = textwrap.dedent("""\
    # 自测

    ### Q1 [single] 1 + 1 = ?
    - A. 1
    - B. 2

    <details><summary>答案与解析</summary>

    答案：B

    解析：加法。
    </details>

    ### Q2 [multiple] 哪些是偶数？
    - A. 2
    - B. 3
    - C. 4

    <details><summary>答案与解析</summary>

    答案：A, C

    解析：能被 2 整除。
    </details>

    ### Q3 [predict] `torch.zeros(2, 3).sum(-1).shape` 是什么？

    <details><summary>答案与解析</summary>

    答案：torch.Size([2])

    解析：对最后一维求和。
    </details>
    """)


def write(tmp_path, text):
    path = tmp_path / "quiz.md"
    path.write_text(text, encoding="utf-8")
    return path


def test_quiz_parses_all_kinds(tmp_path):
    qs = parse_quiz(write(tmp_path, GOOD))
    assert [q.kind for q in qs] == ["single", "multiple", "predict"]
    assert qs[0].options == {"A": "1", "B": "2"} and qs[0].answer_letters == ["B"]
    assert qs[1].answer_letters == ["A", "C"]
    assert qs[2].answer == "torch.Size([2])" and qs[2].explanation == "对最后一维求和。"


@pytest.mark.parametrize("breakage, message", [
    (("答案：B", "答案：D"), "不是已有选项"),
    (("### Q2", "### Q5"), "题号应为 Q2"),
    (("解析：加法。", ""), "解析"),
    (("答案：A, C", "答案：A"), None),  # 多选写成一个也合法
])
def test_quiz_format_errors_are_caught(tmp_path, breakage, message):
    text = GOOD.replace(*breakage, 1)
    if message is None:
        parse_quiz(write(tmp_path, text))
        return
    with pytest.raises(QuizFormatError, match=message):
        parse_quiz(write(tmp_path, text))


def test_quiz_single_choice_with_two_answers_is_rejected(tmp_path):
    with pytest.raises(QuizFormatError, match="单选"):
        parse_quiz(write(tmp_path, GOOD.replace("答案：B", "答案：A, B", 1)))


def test_quiz_runner_scores_answers(tmp_path):
    path = write(tmp_path, GOOD)
    # Q1 答 B（对），Q2 答 AB（错），Q3 回车看答案后自评 y（对）
    proc = subprocess.run([sys.executable, "-m", "modules.common.quiz", str(path)], cwd=REPO_ROOT,
                          input="B\nAB\n\ny\n", capture_output=True, text=True, encoding="utf-8", timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "得分：2 / 3" in proc.stdout


ENGLISH = (GOOD.replace("<summary>答案与解析</summary>", "<summary>Answer and explanation</summary>")
           .replace("答案：", "Answer: ").replace("解析：", "Explanation: "))


def test_english_quiz_uses_english_markers_and_interface(tmp_path):
    path = tmp_path / "quiz.en.md"
    path.write_text(ENGLISH, encoding="utf-8")
    chinese, english = parse_quiz(write(tmp_path, GOOD)), parse_quiz(path)
    # 同一份题：题号、题型、选项字母、答案都一样，只有标记换成英文
    assert [(q.number, q.kind, sorted(q.options), q.answer) for q in english] == \
        [(q.number, q.kind, sorted(q.options), q.answer) for q in chinese]
    proc = subprocess.run([sys.executable, "-m", "modules.common.quiz", str(path)], cwd=REPO_ROOT,
                          input="B\nAB\n\ny\n", capture_output=True, text=True, encoding="utf-8", timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "Score: 2 / 3" in proc.stdout and "Explanation: " in proc.stdout and "得分" not in proc.stdout
    broken = tmp_path / "broken.en.md"
    broken.write_text(ENGLISH.replace("Explanation: 加法。", "加法。"), encoding="utf-8")
    with pytest.raises(QuizFormatError, match="Explanation"):
        parse_quiz(broken)


def test_quiz_cli_check_and_errors(tmp_path):
    ok = subprocess.run([sys.executable, "-m", "modules.common.quiz", str(write(tmp_path, GOOD)), "--check"],
                        cwd=REPO_ROOT, capture_output=True, text=True, encoding="utf-8", timeout=60)
    assert ok.returncode == 0 and "3 题" in ok.stdout
    missing = subprocess.run([sys.executable, "-m", "modules.common.quiz", str(tmp_path / "nope.md")],
                             cwd=REPO_ROOT, capture_output=True, text=True, encoding="utf-8", timeout=60)
    assert missing.returncode == 2 and "找不到" in missing.stderr and "Traceback" not in missing.stderr


QUIZZES = sorted((REPO_ROOT / "modules").glob("*/*/quiz.md"))


@pytest.mark.parametrize("path", QUIZZES, ids=[p.parent.name for p in QUIZZES])
def test_every_module_quiz_is_complete(path):
    qs = parse_quiz(path)
    assert len(qs) >= 10, f"{path} 只有 {len(qs)} 题（至少 10 题）"
    kinds = {q.kind for q in qs}
    assert kinds & {"single", "multiple"} and "predict" in kinds and "short" in kinds, \
        f"{path} 需要同时有选择题、predict 题和 short 题，现在只有 {sorted(kinds)}"
