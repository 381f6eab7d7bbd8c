"""英文版与中文版的一致性（issue 26）：每份中文文档的英文版存在、结构相同、没有落后于中文版。

一对文档：中文 X.md 与英文 X.en.md（根目录的 README.md 与 README_en.md）。比较的是不随语言变的部分：
- 各级标题的个数（代码块之外的 #、## ……）；
- 代码引用：反引号里的 `path.py::Symbol` 与仓库路径（model/、modules/ ……）的集合；
- 代码块里的命令（python / make / bash …… 的 argv，注释与提示语不算）；
- 自测题：题号、题型、选项字母、选择题的答案字母。
"落后"：中文版最后一次提交晚于英文版的最后一次提交，或者工作区里中文版改了而英文版没改——
改了一种语言就要在同一批提交里改另一种（DEVELOPERS.md 的约定）。

每份中文文档都必须有英文版：新增一份中文文档（包括新模块的四份文档）时要同时写它的英文版。
"""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from conftest import REPO_ROOT
from modules.common.quiz import CHOICE_TYPES, parse_quiz
from test_docs import (ATX_HEADING_RE, PLACEHOLDER_CHARS, REPO_PATH_PREFIXES, SYMBOL_REF_RE, code_spans,
                       parse_markdown, shell_commands)

TOP_LEVEL_DOCS = ["README.md", "ROADMAP.md", "modules/README.md", "trainer/README.md", "dataset/README.md"]
MODULE_DOCS = ["README.md", "teaching.md", "code_guide.md", "quiz.md"]


def chinese_docs(root: Path = REPO_ROOT) -> list[str]:
    """要有英文版的中文文档（相对仓库根目录）。"""
    docs = [d for d in TOP_LEVEL_DOCS if (root / d).is_file()]
    for module in sorted(p.parent for p in root.glob("modules/*/*/README.md")):
        docs += [(module / name).relative_to(root).as_posix() for name in MODULE_DOCS if (module / name).is_file()]
    return docs


def english_counterpart(chinese: str) -> str:
    return "README_en.md" if chinese == "README.md" else chinese[:-len(".md")] + ".en.md"


# ---------------------------------------------------------------------------
# 比较
# ---------------------------------------------------------------------------

def heading_counts(path: Path, root: Path) -> dict[int, int]:
    counts: dict[int, int] = {}
    for _, line in parse_markdown(path, root).prose:
        if ATX_HEADING_RE.match(line):
            level = len(line.lstrip()) - len(line.lstrip().lstrip("#"))
            counts[level] = counts.get(level, 0) + 1
    return counts


def code_references(path: Path, root: Path) -> set[str]:
    refs = set()
    for _, line in parse_markdown(path, root).prose:
        for span in code_spans(line):
            if SYMBOL_REF_RE.match(span) or (span.startswith(REPO_PATH_PREFIXES) and
                                             not PLACEHOLDER_CHARS.intersection(span)):
                refs.add(span)
    return refs


TEXT_FLAGS = {"--prompt"}  # 这些参数的值是给模型的话，两种语言各写各的


def commands(path: Path, root: Path) -> list[str]:
    found, _ = shell_commands(parse_markdown(path, root), root)
    normalised = []
    for c in found:
        argv = list(c.argv)
        for i, token in enumerate(argv[:-1]):
            if token in TEXT_FLAGS:
                argv[i + 1] = "<text>"
        argv = [re.sub(r"\.en\.md$", ".md", token) for token in argv]  # 英文版命令指向英文文档（quiz.en.md）
        normalised.append(" ".join(argv))
    return sorted(normalised)


def quiz_shape(path: Path) -> list[tuple]:
    return [(q.number, q.kind, tuple(sorted(q.options)), tuple(q.answer_letters) if q.kind in CHOICE_TYPES else ())
            for q in parse_quiz(path)]


def parity_problems(chinese: str, root: Path = REPO_ROOT) -> list[str]:
    """一对文档的结构差异；每条说明哪两份文件、哪里不一样。"""
    english = english_counterpart(chinese)
    zh, en = root / chinese, root / english
    pair = f"{chinese} ↔ {english}"
    problems = []
    if heading_counts(zh, root) != heading_counts(en, root):
        problems.append(f"{pair}: 各级标题个数不同（中文 {heading_counts(zh, root)}，英文 {heading_counts(en, root)}）")
    zh_refs, en_refs = code_references(zh, root), code_references(en, root)
    if zh_refs != en_refs:
        problems.append(f"{pair}: 代码引用不同（只在中文：{sorted(zh_refs - en_refs)}；只在英文：{sorted(en_refs - zh_refs)}）")
    zh_cmds, en_cmds = commands(zh, root), commands(en, root)
    if zh_cmds != en_cmds:
        problems.append(f"{pair}: 代码块里的命令不同（只在中文：{sorted(set(zh_cmds) - set(en_cmds))}；"
                        f"只在英文：{sorted(set(en_cmds) - set(zh_cmds))}）")
    if zh.name == "quiz.md":
        zh_q, en_q = quiz_shape(zh), quiz_shape(en)
        if zh_q != en_q:
            differ = [a[0] for a, b in zip(zh_q, en_q) if a != b] or ["题数"]
            problems.append(f"{pair}: 自测题的题号、题型、选项或答案不同（{differ}）")
    return problems


def last_commit_time(path: str, root: Path) -> int | None:
    proc = subprocess.run(["git", "-C", str(root), "log", "-1", "--format=%ct", "--", path],
                          capture_output=True, text=True, encoding="utf-8")
    return int(proc.stdout.strip()) if proc.returncode == 0 and proc.stdout.strip() else None


def modified_in_worktree(path: str, root: Path) -> bool:
    proc = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", path],
                          capture_output=True, text=True, encoding="utf-8")
    return proc.returncode == 0 and bool(proc.stdout.strip())


def stale_problem(chinese: str, root: Path = REPO_ROOT) -> str | None:
    """中文版比英文版新：说明哪两份文件。没有 git 历史（如解压的源码包）时不检查。"""
    english = english_counterpart(chinese)
    if modified_in_worktree(chinese, root) and not modified_in_worktree(english, root):
        return f"{chinese} 在工作区里改了，{english} 没有改：两种语言要一起改"
    zh_time, en_time = last_commit_time(chinese, root), last_commit_time(english, root)
    if zh_time is not None and en_time is not None and zh_time > en_time \
            and not modified_in_worktree(english, root):
        return f"{chinese} 的最后一次提交晚于 {english}：改中文版的那次提交没有同步英文版"
    return None


# ---------------------------------------------------------------------------
# 测试
# ---------------------------------------------------------------------------

DOCS = chinese_docs()


def test_every_document_has_an_english_version():
    assert len(DOCS) > 50, f"只找到 {len(DOCS)} 份中文文档：chinese_docs() 的范围不对"
    missing = [d for d in DOCS if not (REPO_ROOT / english_counterpart(d)).is_file()]
    assert not missing, f"这些中文文档没有英文版（新增文档要同时写英文版）：{missing}"


@pytest.mark.parametrize("chinese", DOCS)
def test_english_version_has_the_same_structure(chinese):
    problems = parity_problems(chinese)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("chinese", DOCS)
def test_english_version_is_not_behind_the_chinese(chinese):
    if not (REPO_ROOT / ".git").exists():
        pytest.skip("不是 git 仓库：无从比较两种语言的修改时间")
    problem = stale_problem(chinese)
    assert problem is None, problem


def _write_pair(root: Path, zh: str, en: str, name: str = "teaching.md") -> str:
    module = root / "modules" / "01-tier" / "01-demo"
    module.mkdir(parents=True, exist_ok=True)
    (module / "README.md").write_text("# 演示\n", encoding="utf-8")
    (module / name).write_text(zh, encoding="utf-8")
    (module / (name[:-3] + ".en.md")).write_text(en, encoding="utf-8")
    return f"modules/01-tier/01-demo/{name}"


def test_parity_check_catches_structural_differences(tmp_path):
    zh = "# 讲义\n\n## 一\n\n见 `model/model_minimind.py`。\n\n```bash\npython -m pytest tests/x.py\n```\n"
    same = "# Lesson\n\n## One\n\nSee `model/model_minimind.py`.\n\n```bash\npython -m pytest tests/x.py\n```\n"
    assert parity_problems(_write_pair(tmp_path, zh, same), tmp_path) == []
    drifted = same.replace("## One\n", "## One\n\n## Two\n").replace("model/model_minimind.py", "model/other.py") \
        .replace("tests/x.py", "tests/y.py")
    problems = "\n".join(parity_problems(_write_pair(tmp_path, zh, drifted), tmp_path))
    assert "标题" in problems and "代码引用" in problems and "命令" in problems
    assert "teaching.md ↔ modules/01-tier/01-demo/teaching.en.md" in problems


def test_parity_check_compares_quiz_answers(tmp_path):
    zh = ("# 自测\n\n### Q1 [single] 1+1？\n- A. 1\n- B. 2\n\n<details><summary>答案与解析</summary>\n\n"
          "答案：B\n\n解析：加法。\n</details>\n")
    en = (zh.replace("# 自测", "# Quiz").replace("1+1？", "1+1?").replace("答案与解析", "Answer and explanation")
          .replace("答案：", "Answer: ").replace("解析：加法。", "Explanation: addition."))
    assert parity_problems(_write_pair(tmp_path, zh, en, "quiz.md"), tmp_path) == []
    wrong = en.replace("Answer: B", "Answer: A")
    assert "自测题" in "\n".join(parity_problems(_write_pair(tmp_path, zh, wrong, "quiz.md"), tmp_path))
