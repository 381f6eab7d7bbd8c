"""文档即代码：检查仓库里每个 Markdown 文件中的链接、命令、代码引用与 make 目标。

四类检查，每类是一个纯函数，输入解析好的文档，返回 "文件:行: 问题" 列表：
1. check_links：相对链接和图片指向存在的文件/目录；#anchor 必须对应按 GitHub 规则生成的标题 slug；
   http(s) 外链不联网，只检查格式。
2. check_python_commands：代码块里的 `python x.py --flag` 与 `python -m pkg.mod --flag`：
   脚本/模块存在，每个 flag 出现在它的 --help 输出里（每个脚本只跑一次 --help）。
3. check_code_references：反引号里的 `model/x.py::Symbol` 用 ast 找得到；反引号里的仓库路径存在。
4. check_make_targets：代码里出现的 `make X` 在 Makefile 里有定义。

文件末尾的单元测试用临时目录里的坏例子证明每个检查都能报错（不会报错的检查是缺陷）。
"""
from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
import unicodedata
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
EXCLUDED_DIRS = {".git", ".venv", "data", "node_modules", ".pytest_cache"}
HELP_TIMEOUT_S = 60

# 这些语言标记（或不标）的代码块被当作 shell 命令；```text / ```python 等一律跳过
SHELL_LANGS = {"", "bash", "sh", "shell", "zsh", "console", "shell-session",
               "powershell", "pwsh", "ps1", "bat", "cmd"}
PROMPT_ONLY_LANGS = {"console", "shell-session"}   # 只有以 "$ " 开头的行是命令，其余是输出
WINDOWS_LANGS = {"powershell", "pwsh", "ps1", "bat", "cmd"}   # 反斜杠是路径分隔符，不是转义
REPO_PATH_PREFIXES = ("model/", "modules/", "trainer/", "dataset/", "docs/", "tests/")


# ---------------------------------------------------------------------------
# Markdown 解析
# ---------------------------------------------------------------------------

@dataclass
class CodeBlock:
    lang: str                                   # 信息串的第一个词，小写；无标记为 ""
    lines: list[tuple[int, str]]                # (行号, 内容)


@dataclass
class MarkdownDoc:
    path: Path                                  # 绝对路径
    rel: str                                    # 相对仓库根目录的 posix 路径，用于报错
    prose: list[tuple[int, str]] = field(default_factory=list)   # 代码块之外的行
    blocks: list[CodeBlock] = field(default_factory=list)


FENCE_OPEN_RE = re.compile(r"^\s*(?P<fence>`{3,}|~{3,})\s*(?P<info>.*)$")
CODE_SPAN_RE = re.compile(r"(?<!`)(?P<ticks>`+)(?!`)(?P<body>.+?)(?<!`)(?P=ticks)(?!`)")


def markdown_files(root: Path) -> list[Path]:
    """仓库里所有 .md 文件：git 仓库用 git ls-files（含未跟踪但未忽略的），否则 rglob；排除 EXCLUDED_DIRS。"""
    paths: list[Path] | None = None
    if (root / ".git").exists():
        proc = subprocess.run(
            ["git", "-C", str(root), "ls-files", "-z", "--cached", "--others",
             "--exclude-standard", "--", "*.md"],
            capture_output=True, text=True, encoding="utf-8",
        )
        if proc.returncode == 0:
            paths = [root / p for p in proc.stdout.split("\0") if p]
    if paths is None:
        paths = list(root.rglob("*.md"))
    keep = {p for p in paths
            if p.is_file() and not EXCLUDED_DIRS.intersection(p.relative_to(root).parts)}
    return sorted(keep)


def parse_markdown(path: Path, root: Path) -> MarkdownDoc:
    """把文件拆成围栏代码块和代码块之外的正文行（未闭合的围栏延续到文件末尾，同 CommonMark）。"""
    doc = MarkdownDoc(path=path, rel=path.relative_to(root).as_posix())
    block: CodeBlock | None = None
    fence = ""
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if block is None:
            m = FENCE_OPEN_RE.match(line)
            if m and not (m["fence"][0] == "`" and "`" in m["info"]):
                fence = m["fence"]
                info = m["info"].strip().split()
                block = CodeBlock(lang=info[0].strip("{}.").lower() if info else "", lines=[])
                doc.blocks.append(block)
            else:
                doc.prose.append((lineno, line))
        elif re.match(rf"^\s*{re.escape(fence[0])}{{{len(fence)},}}\s*$", line):
            block = None
        else:
            block.lines.append((lineno, line))
    return doc


def code_spans(line: str) -> list[str]:
    """一行里所有行内代码的内容（CommonMark：首尾各有一个空格时去掉）。"""
    spans = []
    for m in CODE_SPAN_RE.finditer(line):
        body = m["body"]
        if len(body) > 2 and body.startswith(" ") and body.endswith(" "):
            body = body[1:-1]
        spans.append(body)
    return spans


def blank_code_spans(line: str) -> str:
    """把行内代码换成等长空格：代码里的 [x](y) 不是链接。"""
    return CODE_SPAN_RE.sub(lambda m: " " * len(m.group(0)), line)


# ---------------------------------------------------------------------------
# 1. 链接与锚点
# ---------------------------------------------------------------------------

ATX_HEADING_RE = re.compile(r"^ {0,3}#{1,6}(?:[ \t]+(?P<text>.*?))?(?:[ \t]+#+)?[ \t]*$")
SETEXT_UNDERLINE_RE = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
HTML_ANCHOR_RE = re.compile(r"<a\b[^>]*?\b(?:id|name)\s*=\s*[\"']([^\"']+)[\"']", re.IGNORECASE)
INLINE_LINK_RE = re.compile(
    r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]"             # [text]，允许一层嵌套（如图片链接）
    r"\(\s*<?(?P<target>[^\s<>()]*(?:\([^\s()]*\)[^\s<>()]*)*)>?"   # (target，允许成对括号)
    r"(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)"        # 可选 "title"
)
REFERENCE_DEF_RE = re.compile(r"^ {0,3}\[(?!\^)[^\]]+\]:\s*<?(?P<target>[^\s>]+)>?")
HTML_LINK_RE = re.compile(r"<(?:a|img|source)\b[^>]*?\b(?:href|src)\s*=\s*[\"'](?P<target>[^\"']+)[\"']",
                          re.IGNORECASE)
AUTOLINK_RE = re.compile(r"<(?P<target>https?://[^>\s]*)>")
SCHEME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
GITHUB_LINE_ANCHOR_RE = re.compile(r"^L\d+(?:-L\d+)?$")


def heading_plain_text(raw: str) -> str:
    """标题的渲染文本：图片取 alt，链接取文字，去掉 HTML 标签（反引号、星号等由 slug 规则去掉）。"""
    text = re.sub(r"!\[([^\]]*)\]\([^)]*\)", r"\1", raw)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    return re.sub(r"<[^>]+>", "", text)


def github_slug(heading: str) -> str:
    """GitHub（github-slugger）的标题 slug：小写；只保留字母/数字/组合符号（含中日韩文字）、
    空格、'-'、'_'；每个空格换成 '-'（不合并）。"""
    text = heading_plain_text(heading).strip().lower()
    kept = "".join(ch for ch in text
                   if ch in " -_" or unicodedata.category(ch)[0] in ("L", "N", "M"))
    return kept.replace(" ", "-")


def heading_anchors(doc: MarkdownDoc) -> set[str]:
    """文档里所有可用的锚点：标题 slug（重复的依次加 -1、-2…）加上 HTML 的 id/name。"""
    anchors: set[str] = set()
    counts: dict[str, int] = {}

    def add(slug: str) -> None:
        unique = slug
        while unique in counts:                  # 与 github-slugger 相同的去重方式
            counts[slug] += 1
            unique = f"{slug}-{counts[slug]}"
        counts[unique] = 0
        anchors.add(unique)

    previous = ""
    for _, line in doc.prose:
        anchors.update(HTML_ANCHOR_RE.findall(line))
        atx = ATX_HEADING_RE.match(line)
        if atx:
            add(github_slug(atx["text"] or ""))
            previous = ""
            continue
        if SETEXT_UNDERLINE_RE.match(line) and previous.strip() and not previous.lstrip().startswith(("|", ">", "-", "*", "+")):
            add(github_slug(previous))
            previous = ""
            continue
        previous = line
    return anchors


def link_targets(doc: MarkdownDoc) -> list[tuple[int, str]]:
    """正文（不含代码块、行内代码）里的所有链接/图片目标：(行号, 目标)。"""
    targets = []
    for lineno, line in doc.prose:
        text = blank_code_spans(line)
        for regex in (INLINE_LINK_RE, REFERENCE_DEF_RE, HTML_LINK_RE, AUTOLINK_RE):
            targets.extend((lineno, m["target"]) for m in regex.finditer(text))
    return targets


def external_url_problem(url: str) -> str | None:
    """http(s) 外链的格式检查（不联网）；合格返回 None。"""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme not in ("http", "https"):
        return f"unsupported URL scheme in {url!r} (use http/https or a relative path)"
    if re.search(r"\s", url) or not re.fullmatch(r"[A-Za-z0-9.-]+", host) or not (
            "." in host or host == "localhost"):
        return f"malformed URL {url!r}"
    try:
        parts.port
    except ValueError:
        return f"malformed port in URL {url!r}"
    return None


def exists_with_exact_case(path: Path, root: Path) -> bool:
    """路径存在且每一段大小写都一致（macOS/Windows 不区分大小写，GitHub 区分）。"""
    if not path.exists():
        return False
    current = root
    for part in path.relative_to(root).parts:
        if part not in os.listdir(current):
            return False
        current = current / part
    return True


def check_links(docs: list[MarkdownDoc], root: Path) -> list[str]:
    """检查 1：相对链接/图片存在、锚点存在、外链格式正确。"""
    root = root.resolve()
    anchor_cache: dict[Path, set[str]] = {}

    def anchors_of(md_path: Path) -> set[str]:
        if md_path not in anchor_cache:
            anchor_cache[md_path] = heading_anchors(parse_markdown(md_path, root))
        return anchor_cache[md_path]

    problems = []
    for doc in docs:
        for lineno, target in link_targets(doc):
            where = f"{doc.rel}:{lineno}"
            if SCHEME_RE.match(target):
                if target.lower().startswith("mailto:"):
                    continue
                problem = external_url_problem(target)
                if problem:
                    problems.append(f"{where}: {problem}")
                continue
            path_part, has_anchor, anchor = target.partition("#")
            path_part, anchor = unquote(path_part), unquote(anchor)
            if path_part.startswith("/"):            # GitHub 把 /x 解释为相对仓库根目录
                dest = (root / path_part.lstrip("/")).resolve()
            elif path_part:
                dest = (doc.path.parent / path_part).resolve()
            else:
                dest = doc.path.resolve()
            if dest != root and root not in dest.parents:
                problems.append(f"{where}: link {target!r} points outside the repository")
                continue
            if not exists_with_exact_case(dest, root):
                resolved = dest.relative_to(root).as_posix()
                shown = "" if resolved == path_part else f" (resolved to {resolved})"
                problems.append(f"{where}: link target {target!r} does not exist{shown}")
                continue
            if not has_anchor:
                continue
            if dest.is_dir():
                dest = dest / "README.md"            # GitHub 在目录页渲染它的 README.md
            if dest.suffix.lower() == ".md" and dest.is_file():
                if anchor not in anchors_of(dest):
                    problems.append(f"{where}: anchor #{anchor} not found among the headings of "
                                    f"{dest.relative_to(root).as_posix()}")
            elif not GITHUB_LINE_ANCHOR_RE.match(anchor):
                problems.append(f"{where}: anchor #{anchor} on a non-Markdown target "
                                f"(only #L<n> or #L<n>-L<m> line anchors work there)")
    return problems


# ---------------------------------------------------------------------------
# 代码块里的 shell 命令
# ---------------------------------------------------------------------------

PYTHON_EXE_RE = re.compile(r"(?:^|/)python(?:3(?:\.\d+)?)?(?:\.exe)?$")
ENV_ASSIGN_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
COMMAND_SEPARATORS = {"&&", "||", ";", "|", "&", ";;"}
COMMAND_PREFIXES = {"time", "nohup", "env", "exec"}


@dataclass
class ShellCommand:
    where: str                    # "文件:行"
    argv: list[str]               # 去掉环境变量赋值和 time 等前缀后的命令
    cwd: Path | None              # 这条命令执行时的目录；None 表示文档里 cd 到了无法解析的位置


def logical_lines(block: CodeBlock) -> list[tuple[int, str]]:
    """代码块里的命令行：去掉 "$ " 提示符，合并续行（bash 的 \\，PowerShell 的 `）。"""
    continuation = "`" if block.lang in {"powershell", "pwsh", "ps1"} else "\\"
    if block.lang in {"bat", "cmd"}:
        continuation = "^"
    out: list[tuple[int, str]] = []
    pending: tuple[int, str] | None = None
    for lineno, raw in block.lines:
        line = raw.strip()
        if pending is None:
            if line.startswith("$ "):
                line = line[2:]
            elif block.lang in PROMPT_ONLY_LANGS:
                continue                         # console 块里没有提示符的是输出
            pending = (lineno, "")
        start, text = pending
        if line.endswith(continuation):
            pending = (start, text + line[:-1] + " ")
            continue
        out.append((start, text + line))
        pending = None
    if pending is not None:
        out.append(pending)
    return out


def split_commands(line: str, windows: bool) -> list[list[str]]:
    """把一行按 && || ; | 切成若干条命令，每条是 argv 列表（# 之后是注释）。"""
    if windows:
        line = line.replace("\\", "/")
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    try:
        tokens = list(lexer)
    except ValueError:                               # 引号不配对：退回按空白切分
        tokens = line.split()
    commands, current = [], []
    for token in tokens:
        if token in COMMAND_SEPARATORS:
            commands.append(current)
            current = []
        else:
            current.append(token)
    commands.append(current)
    return [c for c in commands if c]


def shell_commands(doc: MarkdownDoc, root: Path) -> tuple[list[ShellCommand], list[str]]:
    """文档所有 shell 代码块里的命令，按 shell 语义跟踪 cd（在同一代码块内持续有效）。
    返回 (命令列表, cd 到不存在目录之类的问题)。"""
    root = root.resolve()
    commands, problems = [], []
    for block in doc.blocks:
        if block.lang not in SHELL_LANGS:
            continue
        cwd: Path | None = root
        for lineno, line in logical_lines(block):
            for argv in split_commands(line, windows=block.lang in WINDOWS_LANGS):
                while argv and (ENV_ASSIGN_RE.match(argv[0]) or argv[0] in COMMAND_PREFIXES):
                    argv = argv[1:]
                if not argv:
                    continue
                where = f"{doc.rel}:{lineno}"
                if argv[0] in ("cd", "pushd"):
                    target = argv[1] if len(argv) > 1 else "~"
                    if target.startswith(("~", "$", "/", "-")) or re.match(r"^[A-Za-z]:", target):
                        cwd = None                   # 仓库外或无法静态解析的位置
                    elif cwd is not None:
                        cwd = (cwd / target).resolve()
                        if not cwd.is_dir():
                            problems.append(f"{where}: cd {target}: directory does not exist")
                            cwd = None
                    continue
                commands.append(ShellCommand(where=where, argv=argv, cwd=cwd))
    return commands, problems


# ---------------------------------------------------------------------------
# 2. python 命令：脚本存在、flag 在 --help 里
# ---------------------------------------------------------------------------

INTERPRETER_SWITCHES = {"-u", "-B", "-O", "-OO", "-s", "-S", "-E", "-I", "-q", "-b", "-bb",
                        "-d", "-i", "-P", "-R", "-v"}
INTERPRETER_SWITCHES_WITH_ARG = {"-X", "-W"}


@dataclass(frozen=True)
class HelpTarget:
    """一个要跑 --help 的脚本（script）或模块（module）。"""
    script: Path | None
    module: str | None
    cwd: Path


def parse_python_call(argv: list[str]) -> tuple[str, str, list[str]] | None:
    """解析 python 调用：返回 ("script", 路径, 参数) / ("module", 模块名, 参数)；-c、--version、交互式返回 None。"""
    i = 1
    while i < len(argv):
        tok = argv[i]
        if tok == "-m" and i + 1 < len(argv):
            return "module", argv[i + 1], argv[i + 2:]
        if tok in INTERPRETER_SWITCHES:
            i += 1
        elif tok in INTERPRETER_SWITCHES_WITH_ARG:
            i += 2
        elif tok.startswith("-"):                    # -c、-V、--version、-h 等：不是跑脚本
            return None
        else:
            return "script", tok, argv[i + 1:]
    return None


def is_repo_file(path: Path, root: Path) -> bool:
    """path 在仓库里，且不在 .venv 等排除目录下（.venv 在仓库根目录里，但装的是第三方包）。"""
    return root in path.parents and not EXCLUDED_DIRS.intersection(path.relative_to(root).parts)


def resolve_module(module: str, cwd: Path, root: Path) -> tuple[Path | None, str | None]:
    """python -m 的模块：在 cwd 下找到返回 (文件, None)；是已安装的第三方/标准库模块返回 (None, None)；
    都不是（包括仓库里的包、但 cwd 不对）返回 (None, 问题)。"""
    parts = module.split(".")
    base = cwd.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__main__.py"):
        if candidate.is_file():
            return candidate, None
    if (cwd / parts[0]).exists() or (cwd / f"{parts[0]}.py").exists():
        return None, f"module {module!r} not found (no {'/'.join(parts)}.py under {cwd.name or cwd})"
    spec = importlib.util.find_spec(parts[0])
    locations = [] if spec is None else [spec.origin, *(spec.submodule_search_locations or [])]
    if any(loc and is_repo_file(Path(loc).resolve(), root) for loc in locations):
        return None, f"module {module!r} lives in the repository: run it from the repository root"
    if spec is not None:
        return None, None
    return None, f"module {module!r} is neither in the repository nor installed"


HELP_ENV = dict(os.environ, MPLBACKEND="Agg", PYTHONIOENCODING="utf-8", PYTHONUTF8="1")


def run_helps(targets: list[HelpTarget]) -> list[tuple[int, str]]:
    """每个目标跑一次 --help，返回 [(退出码, 输出)]。有 fork 的系统上走 tests/help_forkserver.py
    （torch 只导入一次，几分钟变几十秒）；没有 fork 时每个目标单独起一个子进程。"""
    if not hasattr(os, "fork"):
        with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
            return list(pool.map(run_help, targets))
    requests = [{"script": str(t.script) if t.script else None, "module": t.module, "cwd": str(t.cwd)} for t in targets]
    proc = subprocess.run([sys.executable, str(Path(__file__).with_name("help_forkserver.py"))],
                          input=json.dumps(requests), capture_output=True, text=True, encoding="utf-8", env=HELP_ENV)
    assert proc.returncode == 0, f"help_forkserver.py failed: {proc.stderr[-2000:]}"
    return [tuple(result) for result in json.loads(proc.stdout)]


def run_help(target: HelpTarget) -> tuple[int, str]:
    """在子进程里跑一次 `<sys.executable> script --help`（或 -m module --help），返回 (退出码, 输出)。"""
    cmd = [sys.executable]
    cmd += ["-m", target.module] if target.module else [str(target.script)]
    env = HELP_ENV
    try:
        proc = subprocess.run(cmd + ["--help"], cwd=target.cwd, capture_output=True, text=True,
                              encoding="utf-8", errors="replace", timeout=HELP_TIMEOUT_S, env=env)
    except subprocess.TimeoutExpired:
        return -1, f"--help did not finish within {HELP_TIMEOUT_S} s"
    return proc.returncode, proc.stdout + proc.stderr


def used_flags(args: list[str]) -> list[tuple[str, str | None]]:
    """参数里用到的 flag 及其紧跟的取值：[("--device", "cpu"), ("--quick", None), ...]。"""
    flags = []
    for i, tok in enumerate(args):
        if tok == "--":
            break
        if re.fullmatch(r"--[A-Za-z0-9][\w-]*(=.*)?", tok):
            name, eq, value = tok.partition("=")
            if not eq:
                nxt = args[i + 1] if i + 1 < len(args) else None
                value = nxt if nxt is not None and not nxt.startswith("-") else None
            flags.append((name, value))
        elif re.fullmatch(r"-[A-Za-z]", tok):
            flags.append((tok, None))
    return flags


def flag_problem(flag: str, value: str | None, help_text: str) -> str | None:
    """flag 不在 --help 里，或取值不在 --help 列出的 {a,b,c} 选项里时返回问题描述。"""
    if not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", help_text):
        return f"unknown flag {flag}"
    choices = re.search(rf"(?<![\w-]){re.escape(flag)}[ =]\{{([^}}]*)\}}", help_text)
    if value is not None and choices:
        allowed = [c.strip() for c in choices.group(1).split(",")]
        if value not in allowed:
            return f"{flag} {value}: not one of {{{','.join(allowed)}}}"
    return None


def check_python_commands(docs: list[MarkdownDoc], root: Path, help_runner=run_helps) -> list[str]:
    """检查 2：shell 代码块里每条 python 命令的脚本/模块存在，flag 出现在 --help 中。
    每个脚本只跑一次 --help（help_runner 一次拿到全部目标）。"""
    root = root.resolve()
    problems: list[str] = []
    pending: list[tuple[str, HelpTarget, str, list[str]]] = []   # (位置, 目标, 显示名, 参数)
    for doc in docs:
        commands, cd_problems = shell_commands(doc, root)
        problems += cd_problems
        for cmd in commands:
            if not PYTHON_EXE_RE.search(cmd.argv[0]):
                continue
            call = parse_python_call(cmd.argv)
            if call is None or cmd.cwd is None:
                continue
            kind, name, args = call
            if kind == "module":
                module_file, problem = resolve_module(name, cmd.cwd, root)
                if problem:
                    problems.append(f"{cmd.where}: python -m {name}: {problem}")
                if module_file is not None:
                    pending.append((cmd.where, HelpTarget(None, name, cmd.cwd), f"-m {name}", args))
                continue
            if name.startswith(("$", "~", "<")) or "*" in name:
                continue                                 # 占位符，不是具体脚本
            script = (cmd.cwd / name).resolve()
            if root not in script.parents or not exists_with_exact_case(script, root) or not script.is_file():
                looked = script.relative_to(root).as_posix() if root in script.parents else str(script)
                problems.append(f"{cmd.where}: python {name}: script not found (looked for {looked})")
                continue
            pending.append((cmd.where, HelpTarget(script, None, cmd.cwd), name, args))

    # 每个脚本/模块只跑一次 --help（键不含 cwd：脚本本来就应能从任何目录运行）
    unique: dict[tuple, HelpTarget] = {}
    for _, target, _, _ in pending:
        unique.setdefault((target.script, target.module), target)
    results = dict(zip(unique, help_runner(list(unique.values()))))

    for where, target, shown, args in pending:
        rc, help_text = results[(target.script, target.module)]
        if rc != 0:
            tail = help_text.strip().splitlines()[-1:] or ["(no output)"]
            problems.append(f"{where}: python {shown} --help failed (exit {rc}): {tail[0]}")
            continue
        for flag, value in used_flags(args):
            problem = flag_problem(flag, value, help_text)
            if problem:
                problems.append(f"{where}: python {shown}: {problem} (not in its --help)")
    return problems


# ---------------------------------------------------------------------------
# 3. 代码引用与仓库路径
# ---------------------------------------------------------------------------

SYMBOL_REF_RE = re.compile(r"^(?P<path>[\w./-]+\.py)::(?P<symbol>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)$")
PLACEHOLDER_CHARS = set("<>*{}[]$| ")


def defined_names(body: list[ast.stmt]) -> dict[str, ast.AST]:
    """一个作用域（模块或类体）直接定义的名字：函数、类、赋值目标。"""
    names: dict[str, ast.AST] = {}
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names[node.name] = node
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    names[target.id] = node
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names[node.target.id] = node
    return names


def symbol_exists(tree: ast.Module, dotted: str) -> bool:
    """`A` 是模块顶层定义；`A.b` 是类 A 里的方法/属性（可多层嵌套类）。"""
    body: list[ast.stmt] = tree.body
    for part in dotted.split("."):
        node = defined_names(body).get(part)
        if node is None:
            return False
        body = node.body if isinstance(node, ast.ClassDef) else []
    return True


def check_code_references(docs: list[MarkdownDoc], root: Path) -> list[str]:
    """检查 3：`path.py::Symbol` 的文件和符号存在；反引号里以 model/、modules/ 等开头的路径存在。"""
    root = root.resolve()
    trees: dict[Path, ast.Module | str] = {}
    problems = []
    for doc in docs:
        for lineno, line in doc.prose:
            for span in code_spans(line):
                where = f"{doc.rel}:{lineno}"
                ref = SYMBOL_REF_RE.match(span)
                if ref:
                    path = root / ref["path"]
                    if not path.is_file() or not exists_with_exact_case(path, root):
                        problems.append(f"{where}: `{span}`: file {ref['path']} does not exist")
                        continue
                    if path not in trees:
                        try:
                            trees[path] = ast.parse(path.read_text(encoding="utf-8"))
                        except SyntaxError as exc:
                            trees[path] = f"cannot parse {ref['path']}: {exc}"
                    tree = trees[path]
                    if isinstance(tree, str):
                        problems.append(f"{where}: `{span}`: {tree}")
                    elif not symbol_exists(tree, ref["symbol"]):
                        problems.append(f"{where}: `{span}`: {ref['symbol']} is not defined "
                                        f"(top level, or inside the class for dotted names) in {ref['path']}")
                    continue
                if span.startswith(REPO_PATH_PREFIXES) and not PLACEHOLDER_CHARS.intersection(span):
                    rel = re.sub(r"(#.*|:\d+(-\d+)?)$", "", span)      # 去掉 #anchor 或 :行号
                    path = root / rel
                    if not exists_with_exact_case(path, root):
                        problems.append(f"{where}: `{span}`: path does not exist in the repository")
    return problems


# ---------------------------------------------------------------------------
# 4. make 目标
# ---------------------------------------------------------------------------

MAKE_RULE_RE = re.compile(r"^(?P<targets>[^\s:=#][^:=#]*?)\s*::?(?!=)")


def makefile_targets(makefile: Path) -> set[str]:
    """Makefile 里定义的规则目标（跳过变量形式的目标如 $(VPY)，和 .PHONY 这类特殊目标）。"""
    targets: set[str] = set()
    if not makefile.is_file():
        return targets
    for line in makefile.read_text(encoding="utf-8").splitlines():
        m = MAKE_RULE_RE.match(line)
        if m:
            targets.update(t for t in m["targets"].split()
                           if not t.startswith(".") and "$" not in t and "%" not in t)
    return targets


def make_invocations(doc: MarkdownDoc, root: Path) -> list[tuple[str, list[str]]]:
    """文档里的 make 调用：shell 代码块里的命令，和整段是 `make ...` 的行内代码。"""
    calls = []
    commands, _ = shell_commands(doc, root)
    for cmd in commands:
        if cmd.argv[0] == "make":
            calls.append((cmd.where, cmd.argv[1:]))
    for lineno, line in doc.prose:
        for span in code_spans(line):
            if span.startswith("make "):
                for argv in split_commands(span, windows=False):
                    if argv[0] == "make":
                        calls.append((f"{doc.rel}:{lineno}", argv[1:]))
    return calls


def check_make_targets(docs: list[MarkdownDoc], root: Path) -> list[str]:
    """检查 4：文档里 `make X` 的 X 都是 Makefile 里的目标。"""
    makefile = root / "Makefile"
    targets = makefile_targets(makefile)
    problems = []
    for doc in docs:
        for where, args in make_invocations(doc, root):
            skip_next = False
            for arg in args:
                if skip_next:
                    skip_next = False
                elif arg in ("-C", "-f", "-j", "-o", "-W"):
                    skip_next = True
                elif arg.startswith("-") or "=" in arg:
                    continue
                elif arg not in targets:
                    problems.append(f"{where}: make {arg}: no such target in {makefile.name}"
                                    f" (known: {', '.join(sorted(targets)) or 'none'})")
    return problems


# ---------------------------------------------------------------------------
# 仓库上的检查
# ---------------------------------------------------------------------------

def report(title: str, problems: list[str]) -> str:
    """断言消息：每个问题一行，按文件、行号排序。"""
    def key(problem: str) -> tuple[str, int, str]:
        path, line, rest = (problem.split(":", 2) + ["", ""])[:3]
        return path, int(line) if line.isdigit() else 0, rest
    return f"{title} ({len(set(problems))}):\n  " + "\n  ".join(sorted(set(problems), key=key))


@pytest.fixture(scope="module")
def repo_docs() -> list[MarkdownDoc]:
    return [parse_markdown(p, REPO_ROOT) for p in markdown_files(REPO_ROOT)]


def test_front_door_docs_are_checked(repo_docs):
    """确保检查真的覆盖了入口文档（否则下面的检查可能在空列表上"通过"）。"""
    checked = {d.rel for d in repo_docs}
    expected = {"README.md", "README_en.md", "ROADMAP.md", "modules/README.md",
                "docs/learning_log.md", "docs/knowledge_base.md", "docs/notes.md"}
    assert expected <= checked, f"markdown files missing from the check: {sorted(expected - checked)}"


def test_links_and_anchors_resolve(repo_docs):
    problems = check_links(repo_docs, REPO_ROOT)
    assert not problems, report("broken links or anchors", problems)


def test_code_references_resolve(repo_docs):
    problems = check_code_references(repo_docs, REPO_ROOT)
    assert not problems, report("broken code references or repo paths", problems)


def test_make_targets_exist(repo_docs):
    problems = check_make_targets(repo_docs, REPO_ROOT)
    assert not problems, report("unknown make targets", problems)


# 跑 --help 子进程的测试放进同一个 xdist 组（make test 用 --dist loadgroup），不与自身并行争 CPU
@pytest.mark.xdist_group("doc_help_subprocesses")
def test_python_commands_exist_and_flags_are_known(repo_docs):
    problems = check_python_commands(repo_docs, REPO_ROOT)
    assert not problems, report("python commands in code blocks that would fail", problems)


# ---------------------------------------------------------------------------
# 检查器自身的单元测试：每个检查都能抓到坏例子，也不误报好例子
# ---------------------------------------------------------------------------

def write_repo(root: Path, files: dict[str, str]) -> list[MarkdownDoc]:
    """在 root 下写入文件，返回其中全部 Markdown 的解析结果。"""
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content, encoding="utf-8")
    return [parse_markdown(p, root) for p in markdown_files(root)]


ARGPARSE_SCRIPT = """\
import argparse
p = argparse.ArgumentParser()
p.add_argument("--quick", action="store_true")
p.add_argument("--device", choices=["auto", "cpu"], default="auto")
p.add_argument("--output-dir")
p.parse_args()
"""


@pytest.mark.parametrize("heading, slug", [
    ("Quick start", "quick-start"),
    ("What's new?", "whats-new"),
    ("C++ & Rust", "c--rust"),
    ("30 分钟导览（quick 模式）", "30-分钟导览quick-模式"),
    ("FAQ：离线 / 镜像下载", "faq离线--镜像下载"),
    ("`model/model_minimind.py` 导读", "modelmodel_minimindpy-导读"),
    ("[Links](x.md) and **bold**", "links-and-bold"),
    ("Déjà vu", "déjà-vu"),
])
def test_github_slug_rules(heading, slug):
    assert github_slug(heading) == slug


def test_duplicate_headings_get_numbered_suffixes(tmp_path):
    [doc] = write_repo(tmp_path, {"a.md": "# 安装\n## 安装\n## 安装\nSetext\n---\n```\n# 安装\n```\n"})
    assert heading_anchors(doc) == {"安装", "安装-1", "安装-2", "setext"}


def test_check_links_accepts_valid_links(tmp_path):
    docs = write_repo(tmp_path, {
        "README.md": ("# 目录\n## 30 分钟导览\n"
                      "[导览](#30-分钟导览) [路线](docs/road.md#第一层基础) [目录](docs/) "
                      "![图](docs/img.png) [官网](https://pytorch.org/get-started/locally/) "
                      "[代码](tools/x.py#L3-L9) `[不是链接](missing.md)`\n"
                      "```\n[也不是](missing.md)\n```\n"),
        "docs/road.md": "# 第一层：基础\n[回去](../README.md#目录)\n",
        "docs/img.png": "",
        "tools/x.py": "",
    })
    assert check_links(docs, tmp_path) == []


def test_check_links_catches_broken_links_and_anchors(tmp_path):
    docs = write_repo(tmp_path, {
        "README.md": ("# 标题\n"
                      "[坏链接](nope.md)\n"
                      "[坏锚点](#不存在)\n"
                      "[跨文件坏锚点](b.md#missing)\n"
                      "![坏图](img/none.png)\n"
                      "[仓库外](../outside.md)\n"
                      "[坏外链](https:/example.com)\n"
                      "[大小写](B.md)\n"),
        "b.md": "# Present\n",
    })
    problems = check_links(docs, tmp_path)
    assert [p.split(":")[1] for p in problems] == ["2", "3", "4", "5", "6", "7", "8"], problems
    assert "nope.md" in problems[0] and "#不存在" in problems[1] and "b.md" in problems[2]


@pytest.mark.xdist_group("doc_help_subprocesses")
def test_check_python_commands_accepts_valid_commands(tmp_path):
    docs = write_repo(tmp_path, {
        "exps/run.py": ARGPARSE_SCRIPT,
        "pkg/__init__.py": "",
        "pkg/tool.py": ARGPARSE_SCRIPT,
        "README.md": ("```bash\n"
                      "python exps/run.py --quick --device cpu --output-dir=out\n"
                      "$ cd exps && python run.py --help  # 注释里的 --nope 不算\n"
                      "python run.py --quick\n"            # 上一行的 cd 在同一代码块里仍有效
                      "```\n"
                      "```sh\n"
                      "MINIMIND_DATA_DIR=/tmp/d python -m pkg.tool \\\n  --quick\n"
                      "python -m pip install -r requirements.txt\n"
                      "```\n"
                      "```powershell\npython exps\\run.py --quick   # Windows 路径分隔符\n```\n"
                      "```text\npython missing.py --whatever\n```\n"),
    })
    assert check_python_commands(docs, tmp_path) == []


@pytest.mark.xdist_group("doc_help_subprocesses")
def test_check_python_commands_catches_missing_scripts_and_unknown_flags(tmp_path):
    docs = write_repo(tmp_path, {
        "exps/run.py": ARGPARSE_SCRIPT,
        "pkg/__init__.py": "",
        "broken.py": "raise SystemExit('boom')\n",
        "README.md": ("```bash\n"
                      "python exps/run.py --quick --epochs 3\n"      # 2: 未知 flag
                      "python exps/missing.py --quick\n"             # 3: 脚本不存在
                      "python exps/run.py --device gpu\n"            # 4: 取值不在选项里
                      "cd exps && python exps/run.py\n"              # 5: 相对 cd 目录解析，不存在
                      "```\n"
                      "```console\n"
                      "$ python -m pkg.nothere --quick\n"            # 8: 模块不存在
                      "python -m pkg.nothere  (这是输出，不检查)\n"
                      "$ python broken.py --quick\n"                 # 10: --help 失败
                      "$ cd nowhere\n"                               # 11: cd 目录不存在
                      "```\n"),
    })
    problems = check_python_commands(docs, tmp_path)
    lines = sorted(int(p.split(":")[1]) for p in problems)
    assert lines == [2, 3, 4, 5, 8, 10, 11], "\n".join(problems)
    text = "\n".join(problems)
    assert "--epochs" in text and "gpu" in text and "missing.py" in text and "boom" in text


def test_module_command_from_wrong_directory_is_reported():
    """`python -m model.bench` 只能在仓库根目录运行；在 tests/ 里运行要报错，而不是当成已安装的包放过。"""
    _, problem = resolve_module("model.bench", REPO_ROOT / "tests", REPO_ROOT)
    assert problem and "repository root" in problem
    assert resolve_module("pytest", REPO_ROOT / "tests", REPO_ROOT) == (None, None)


def test_check_code_references_catches_missing_symbols_and_paths(tmp_path):
    docs = write_repo(tmp_path, {
        "model/m.py": ("X = 1\nclass Attention:\n    scale: float = 1.0\n"
                       "    def forward(self):\n        pass\ndef helper():\n    pass\n"),
        "docs/guide.md": ("`model/m.py::Attention` `model/m.py::Attention.forward` "
                          "`model/m.py::Attention.scale` `model/m.py::helper` `model/m.py::X` "
                          "`model/m.py` `model/m.py:3` `model/<file>.py` `model/`\n"
                          "`model/m.py::Missing`\n"
                          "`model/m.py::Attention.backward`\n"
                          "`model/m.py::helper.inner`\n"
                          "`model/gone.py::Attention`\n"
                          "`modules/common/nothere.py`\n"
                          "```python\n`model/gone.py` 在代码块里不检查\n```\n"),
    })
    problems = check_code_references(docs, tmp_path)
    assert [int(p.split(":")[1]) for p in problems] == [2, 3, 4, 5, 6], "\n".join(problems)


def test_check_make_targets_catches_unknown_targets(tmp_path):
    docs = write_repo(tmp_path, {
        "Makefile": ".PHONY: test quickstart\n$(VPY):\n\tpython -m venv .venv\n"
                    "test: $(VPY)  ## tests\n\tpytest\nquickstart: test\nX := 1\n",
        "README.md": ("```bash\nmake quickstart  # 注释\nmake test PYTHON=python3.11\nmake tets\n```\n"
                      "先跑 `make quickstart`，再跑 `make deploy`。\n"),
    })
    assert makefile_targets(tmp_path / "Makefile") == {"test", "quickstart"}
    problems = check_make_targets(docs, tmp_path)
    assert len(problems) == 2, problems
    assert problems[0].startswith("README.md:4: make tets")
    assert problems[1].startswith("README.md:6: make deploy")


def test_markdown_files_skip_excluded_directories(tmp_path):
    write_repo(tmp_path, {"README.md": "", "docs/a.md": "", ".venv/lib/x.md": "",
                          "data/cache/y.md": "", "node_modules/z.md": ""})
    assert [p.relative_to(tmp_path).as_posix() for p in markdown_files(tmp_path)] == [
        "README.md", "docs/a.md"]
