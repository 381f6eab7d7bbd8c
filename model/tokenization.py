"""分词器：读取 Hugging Face 格式的 tokenizer.json + tokenizer_config.json，编码/解码并套用对话模板。

    tok = load_tokenizer()                                  # 仓库自带的分词器（model/tokenizer/）
    tok = load_tokenizer("path/to/minimind")                # MiniMind 官方的也行（目录或 tokenizer.json）
    ids = tok.encode(tok.apply_chat_template([{"role": "user", "content": "你好"}], add_generation_prompt=True))

对话模板是 tokenizer_config.json 里的 Jinja 模板（与 transformers 的 apply_chat_template 同样的渲染方式），
所以 MiniMind2、minimind-3 各自的模板（包括 minimind-3 的工具调用与 <think>）都按官方写法渲染。
"""
import json
from pathlib import Path
from typing import List, Optional, Union

from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

DEFAULT_TOKENIZER_DIR = Path(__file__).resolve().parent / "tokenizer"
# 对话结构用的特殊 token（MiniMind2 与 minimind-3 的分词器都是这三个）。它们的字面量若出现在消息内容里，
# apply_chat_template + encode 会把它认成真正的结构 token：一条用户消息就能伪造出"助手的回答"（模板注入，
# 见 modules/03-training/01-tokenizer 实验 3）。所以数据和聊天输入里出现它们时直接拒绝，而不是悄悄编码。
CHAT_STRUCTURE_TOKENS = ("<|im_start|>", "<|im_end|>", "<|endoftext|>")


def find_structure_literal(text: str) -> Optional[str]:
    """text 里出现的第一个对话结构 token 字面量；没有则返回 None。"""
    return next((token for token in CHAT_STRUCTURE_TOKENS if token in text), None)


class TokenizerError(ValueError):
    """分词器文件缺失或损坏；消息里说明是哪个文件、该怎么办。"""


class MiniMindTokenizer:
    """tokenizers.Tokenizer 的薄封装：特殊 token 的 id、对话模板、编码/解码。"""

    def __init__(self, tokenizer: Tokenizer, config: dict, source: str = ""):
        self.tokenizer = tokenizer
        self.config = config
        self.source = source
        self.bos_token = config.get("bos_token", "<|im_start|>")
        self.eos_token = config.get("eos_token", "<|im_end|>")
        self.pad_token = config.get("pad_token", "<|endoftext|>")
        for name in ("bos_token", "eos_token", "pad_token"):
            if tokenizer.token_to_id(getattr(self, name)) is None:
                raise TokenizerError(f"{source}：{name}={getattr(self, name)!r} 不在词表里，tokenizer_config.json 与 tokenizer.json 不配套")
        self.chat_template = config.get("chat_template")

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    @property
    def bos_token_id(self) -> int:
        return self.tokenizer.token_to_id(self.bos_token)

    @property
    def eos_token_id(self) -> int:
        return self.tokenizer.token_to_id(self.eos_token)

    @property
    def pad_token_id(self) -> int:
        return self.tokenizer.token_to_id(self.pad_token)

    def encode(self, text: str) -> List[int]:
        """文本 → id。注意：文本里出现的特殊 token 字面量（如 <|im_end|>）会被识别成特殊 token。"""
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, messages: List[dict], add_generation_prompt: bool = False,
                            tools: Optional[list] = None, **kwargs) -> str:
        """把 [{"role": ..., "content": ...}, ...] 渲染成模型训练时见过的文本格式。

        add_generation_prompt=True 时在末尾加上 "<|im_start|>assistant\\n"，让模型接着写回答。
        """
        if not self.chat_template:
            raise TokenizerError(f"{self.source} 的 tokenizer_config.json 里没有 chat_template，无法套用对话模板")
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise ValueError(f"messages[{i}] 必须是含 role 和 content 的 dict，收到 {m!r}")
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.filters["tojson"] = lambda x, **kw: json.dumps(x, ensure_ascii=False)
        return env.from_string(self.chat_template).render(
            messages=messages, tools=tools, add_generation_prompt=add_generation_prompt,
            bos_token=self.bos_token, eos_token=self.eos_token, **kwargs)

    def save(self, directory) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save(str(directory / "tokenizer.json"))
        with open(directory / "tokenizer_config.json", "w", encoding="utf-8") as f:
            json.dump(self.config, f, ensure_ascii=False, indent=2)
        return directory


def _check_not_lfs_pointer(path: Path):
    with open(path, "rb") as f:
        head = f.read(200)
    if head.startswith(b"version https://git-lfs"):
        raise TokenizerError(f"{path} 是 Git-LFS 指针文件而不是真正的分词器：请先 `git lfs pull`，或从发布页直接下载该文件")


def load_tokenizer(path: Union[str, Path, None] = None) -> MiniMindTokenizer:
    """path 可以是含 tokenizer.json（及可选 tokenizer_config.json）的目录，或 tokenizer.json 本身；默认用仓库自带的。"""
    path = Path(path) if path is not None else DEFAULT_TOKENIZER_DIR
    tokenizer_file = path / "tokenizer.json" if path.is_dir() else path
    if not tokenizer_file.is_file():
        raise TokenizerError(f"找不到分词器文件 {tokenizer_file}：--tokenizer 应指向含 tokenizer.json 的目录或该文件本身")
    _check_not_lfs_pointer(tokenizer_file)
    try:
        tokenizer = Tokenizer.from_file(str(tokenizer_file))
    except Exception as e:  # tokenizers 抛出的是不带文件名的 Exception
        raise TokenizerError(f"{tokenizer_file} 无法解析为 tokenizer.json（文件损坏或不是 Hugging Face 格式）：{e}") from e
    config_file = tokenizer_file.parent / "tokenizer_config.json"
    config = {}
    if config_file.is_file():
        _check_not_lfs_pointer(config_file)
        with open(config_file, encoding="utf-8") as f:
            config = json.load(f)
    return MiniMindTokenizer(tokenizer, config, source=str(tokenizer_file))
