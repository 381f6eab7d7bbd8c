"""实验数据：下载（可续传、校验、原子写入）、缓存与合成任务。

三类数据，统一入口 get_experiment_data(name, **kwargs)：
- "shakespeare"：TinyShakespeare 全文（约 1.1 MB，固定 sha256 校验）。
- "tinystories"：TinyStories 的前 N MB（HTTP Range 只取前缀，再切回到最后一个完整故事）。
- "synthetic"：copy / reverse / counting / induction 四个合成序列任务（本地按种子生成，不联网）。

缓存目录：环境变量 MINIMIND_DATA_DIR，默认 <仓库根>/data/（已被 git 忽略）。
镜像：环境变量 MINIMIND_DATA_MIRROR（基础 URL），目录结构与缓存目录相同，
例如 {镜像}/tinyshakespeare/input.txt、{镜像}/tinystories/TinyStoriesV2-GPT4-valid.txt。
TinyStories 未设镜像时从 {HF_ENDPOINT 或 https://huggingface.co} 下载。

命令行：python modules/common/datasets.py --list | --download-all | --dataset NAME
"""
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

if __name__ == "__main__":
    # 作为脚本运行时，Python 会把本文件所在目录 modules/common 放进 sys.path[0]。
    # 本文件名叫 datasets.py，留着它会让任何 `import datasets` 拿到我们而不是 Hugging Face 的 datasets，
    # 所以显式删掉这一项，只放仓库根目录（之后一律以 modules.common.X 的形式导入）。
    _this_dir = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _this_dir]
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))

import argparse
import hashlib
import os
import time
from dataclasses import dataclass

import requests
import torch
from tqdm import tqdm

SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
SHAKESPEARE_SIZE = 1115394
SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"

# 选用验证集文件（约 22 MB）而不是训练集（约 2.2 GB）：我们只取前缀，两者对实验没有区别，
# 但验证集小得多，学习者离线时可以手动下载整份文件放进缓存目录（见 _tinystories_source_path），
# 自建镜像也只需放 22 MB。代价：前缀最多约 20 MB（TINYSTORIES_MAX_MB）。
TINYSTORIES_FILE = "TinyStoriesV2-GPT4-valid.txt"
TINYSTORIES_HF_PATH = f"datasets/roneneldan/TinyStories/resolve/main/{TINYSTORIES_FILE}"
TINYSTORIES_MAX_MB = 20
STORY_SEPARATOR = "<|endoftext|>"

RETRY_BACKOFF_S = 1.0  # 第 k 次重试前等待 RETRY_BACKOFF_S * 2**k 秒
CHUNK_BYTES = 1 << 16

SYNTHETIC_TASKS = ("copy", "reverse", "counting", "induction")
PAD_ID = 0  # 合成任务的填充 token（不计分）
SEP_ID = 1  # copy / reverse 的分隔 token；数据 token 从 2 开始


class DataDownloadError(RuntimeError):
    """下载或校验失败；消息里写明失败原因、手动放置文件的完整路径和镜像环境变量。"""


# ---------------------------------------------------------------- 路径与 URL


def data_dir() -> Path:
    """缓存根目录：$MINIMIND_DATA_DIR，默认 <仓库根>/data。"""
    return Path(os.environ.get("MINIMIND_DATA_DIR") or REPO_ROOT / "data").expanduser().resolve()


def _mirror() -> str | None:
    mirror = os.environ.get("MINIMIND_DATA_MIRROR", "").strip()
    return mirror.rstrip("/") or None


def _shakespeare_path() -> Path:
    return data_dir() / "tinyshakespeare" / "input.txt"


def _shakespeare_url() -> str:
    mirror = _mirror()
    return f"{mirror}/tinyshakespeare/input.txt" if mirror else SHAKESPEARE_URL


def _tinystories_path(size_mb: int) -> Path:
    return data_dir() / "tinystories" / f"first_{size_mb}mb.txt"


def _tinystories_source_path() -> Path:
    """手动下载的整份 TinyStories 验证集放这里；存在时直接从本地切前缀，不联网。"""
    return data_dir() / "tinystories" / TINYSTORIES_FILE


def _tinystories_url() -> str:
    mirror = _mirror()
    if mirror:
        return f"{mirror}/tinystories/{TINYSTORIES_FILE}"
    endpoint = (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")
    return f"{endpoint}/{TINYSTORIES_HF_PATH}"


def _manual_hint(path: Path, origin: str) -> str:
    return (
        f"\n  手动解决：在能联网的机器上下载 {origin}\n"
        f"  放到 {path}\n"
        f"  或设置镜像：MINIMIND_DATA_MIRROR=<基础 URL>（目录结构同缓存目录），"
        f"TinyStories 也可用 HF_ENDPOINT=<Hugging Face 镜像>；缓存目录可用 MINIMIND_DATA_DIR 修改。"
    )


# ---------------------------------------------------------------- 下载与校验


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _verify(path: Path, expected_size: int | None, expected_sha256: str | None) -> str | None:
    """返回 None 表示通过，否则返回不通过的原因。"""
    size = path.stat().st_size
    if expected_size is not None and size != expected_size:
        return f"大小不符：期望 {expected_size} 字节，实际 {size} 字节"
    if expected_sha256 is not None:
        actual = sha256_of(path)
        if actual != expected_sha256:
            return f"sha256 不符：期望 {expected_sha256}，实际 {actual}"
    return None


class _RetryableError(Exception):
    """网络中断、超时、5xx：值得重试。"""


def _stream_once(url: str, part: Path, byte_range: tuple[int, int] | None, timeout: float) -> None:
    """发一次请求，把内容追加到 part（能续传就续传）。结束时 part 的大小应等于服务器声明的总长度。"""
    start, end = byte_range if byte_range is not None else (0, None)
    have = part.stat().st_size if part.exists() else 0
    wanted = None if end is None else end - start + 1
    if wanted is not None and have >= wanted:
        part.unlink()  # 比要的还多：旧的 .part 不可信，从头来
        have = 0
    headers = {}
    if have or byte_range is not None:
        headers["Range"] = f"bytes={start + have}-{'' if end is None else end}"
    try:
        with requests.get(url, headers=headers, stream=True, timeout=timeout) as resp:
            if resp.status_code == 416:  # 续传位置超出文件：丢掉 .part 从头来
                part.unlink(missing_ok=True)
                raise _RetryableError("服务器拒绝续传位置（416），已丢弃 .part 准备重下")
            if resp.status_code >= 500:
                raise _RetryableError(f"服务器错误 HTTP {resp.status_code}")
            if resp.status_code >= 400:
                raise DataDownloadError(f"HTTP {resp.status_code}：{url}")
            if resp.status_code == 206:
                total = _total_from_content_range(resp.headers.get("Content-Range"), start)
                mode = "ab"
            else:  # 200：服务器不支持 Range，从零开始，按需截取 byte_range 的前缀
                if start != 0:
                    raise DataDownloadError(f"服务器不支持 Range 请求，无法取从 {start} 开始的片段：{url}")
                length = resp.headers.get("Content-Length")
                total = int(length) if length is not None else None
                if wanted is not None:
                    total = wanted if total is None else min(total, wanted)
                have, mode = 0, "wb"
            with open(part, mode) as f, tqdm(
                total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
                desc=part.name.removesuffix(".part"), disable=not sys.stderr.isatty(), leave=False,
            ) as bar:
                for chunk in resp.iter_content(CHUNK_BYTES):
                    if total is not None:
                        chunk = chunk[: total - have]
                    f.write(chunk)
                    have += len(chunk)
                    bar.update(len(chunk))
                    if total is not None and have >= total:
                        break
    except requests.RequestException as e:  # 连接失败、超时、连接中途断开（IncompleteRead）
        reason = getattr(e.args[0], "reason", None) if e.args else None  # urllib3 的 MaxRetryError 里包着真正原因
        raise _RetryableError(f"{type(e).__name__}: {reason or e}") from e
    if total is not None and have != total:
        raise _RetryableError(f"连接提前结束：收到 {have} / {total} 字节")


def _total_from_content_range(header: str | None, start: int) -> int | None:
    """由 "bytes a-b/size" 算出从 start 起完整下载应有的字节数（b 是本次响应的最后一个字节）。"""
    if not header or not header.startswith("bytes "):
        return None
    span = header[len("bytes "):].partition("/")[0]
    return int(span.partition("-")[2]) - start + 1


def download_file(
    url: str,
    dest: str | Path,
    *,
    expected_size: int | None = None,
    expected_sha256: str | None = None,
    timeout: float = 30.0,
    retries: int = 3,
    byte_range: tuple[int, int] | None = None,
    manual_path: str | Path | None = None,
) -> Path:
    """流式下载 url 到 dest：先写 dest.part（可断点续传），校验通过后 os.replace 原子落位。

    byte_range=(first, last)：只取这一段字节（含两端，HTTP Range 语义）；文件更短时取到文件末尾。
    网络错误最多重试 retries 次（指数退避），重试时用 Range 续传 .part；
    服务器对续传回 200 就从零重下。大小或 sha256 不符：删掉 .part，抛 DataDownloadError。
    manual_path：报错时告诉用户手动放文件的位置（默认就是 dest）。
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    hint = _manual_hint(Path(manual_path or dest), url)
    last_error = ""
    for attempt in range(retries):
        if attempt:
            time.sleep(RETRY_BACKOFF_S * 2 ** (attempt - 1))
        try:
            _stream_once(url, part, byte_range, timeout)
        except _RetryableError as e:
            last_error = str(e)
            continue
        except DataDownloadError as e:
            raise DataDownloadError(f"下载失败：{e}{hint}") from None
        problem = _verify(part, expected_size, expected_sha256)
        if problem is not None:
            part.unlink()
            raise DataDownloadError(f"下载的文件校验失败（{problem}），已删除：{url}{hint}")
        os.replace(part, dest)
        return dest
    kept = f"（已下载的部分保留在 {part}，下次自动续传）" if part.exists() else ""
    raise DataDownloadError(f"下载失败（重试 {retries} 次）：{url}\n  最后一次错误：{last_error}{kept}{hint}")


# ---------------------------------------------------------------- TinyShakespeare


def _load_shakespeare() -> str:
    path = _shakespeare_path()
    if path.exists():
        problem = _verify(path, SHAKESPEARE_SIZE, SHAKESPEARE_SHA256)
        if problem is None:
            return path.read_text(encoding="utf-8")
        print(f"缓存文件损坏（{problem}），删除后重新下载：{path}", file=sys.stderr)
        path.unlink()
    download_file(_shakespeare_url(), path, expected_size=SHAKESPEARE_SIZE, expected_sha256=SHAKESPEARE_SHA256)
    return path.read_text(encoding="utf-8")


# ---------------------------------------------------------------- TinyStories 前缀


def _cut_to_last_story(raw: bytes) -> bytes:
    """截到最后一个完整故事：保留到最后一个分隔符（含分隔符）为止。"""
    cut = raw.rfind(STORY_SEPARATOR.encode("utf-8"))
    if cut < 0:
        raise DataDownloadError(f"下载的 TinyStories 前缀里找不到分隔符 {STORY_SEPARATOR}，文件不对？")
    return raw[: cut + len(STORY_SEPARATOR)]


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _load_tinystories(size_mb: int = 10) -> str:
    if isinstance(size_mb, bool) or not isinstance(size_mb, int) or not 1 <= size_mb <= TINYSTORIES_MAX_MB:
        raise ValueError(f"size_mb 必须是 1..{TINYSTORIES_MAX_MB} 的整数（TinyStories 验证集约 22 MB），收到 {size_mb!r}")
    path = _tinystories_path(size_mb)
    sidecar = path.with_name(path.name + ".sha256")
    if path.exists():
        # 前缀没有固定的官方 sha256，只能核对保存时记下的 sha256（旁车文件，sha256sum 格式）
        recorded = sidecar.read_text(encoding="utf-8").split()[0] if sidecar.exists() else None
        if recorded is not None and _verify(path, None, recorded) is None and path.stat().st_size <= size_mb << 20:
            return path.read_text(encoding="utf-8")
        print(f"缓存文件缺少旁车或 sha256 不符，删除后重新获取：{path}", file=sys.stderr)
        path.unlink()
        sidecar.unlink(missing_ok=True)

    n_bytes = size_mb << 20
    source = _tinystories_source_path()
    if source.exists():  # 手动放好的整份文件：本地切前缀
        with open(source, "rb") as f:
            raw = f.read(n_bytes)
    else:
        raw_path = path.with_name(path.name + ".raw")
        download_file(_tinystories_url(), raw_path, byte_range=(0, n_bytes - 1), manual_path=source)
        raw = raw_path.read_bytes()
        raw_path.unlink()
    text = _cut_to_last_story(raw)
    _write_atomic(sidecar, f"{hashlib.sha256(text).hexdigest()}  {path.name}\n".encode("utf-8"))
    _write_atomic(path, text)
    return text.decode("utf-8")


# ---------------------------------------------------------------- 合成任务


@dataclass
class SyntheticTask:
    """合成序列任务。labels 不移位（与 MiniMind 相同，模型内部用 logits[:, :-1] 预测 labels[:, 1:]），
    不计分的位置为 -100。"""

    input_ids: torch.Tensor  # (N, T) long
    labels: torch.Tensor  # (N, T) long，-100 = 不计分
    vocab_size: int
    task: str
    description: str


def _synthetic(task: str, n_samples: int = 1000, seq_len: int = 32, vocab_size: int = 32, seed: int = 0) -> SyntheticTask:
    if task not in SYNTHETIC_TASKS:
        raise ValueError(f"未知合成任务 {task!r}：可选 {', '.join(SYNTHETIC_TASKS)}")
    if n_samples < 1 or seq_len < 4 or vocab_size < 4:
        raise ValueError(f"需要 n_samples >= 1、seq_len >= 4、vocab_size >= 4，收到 {n_samples}, {seq_len}, {vocab_size}")
    gen = torch.Generator().manual_seed(seed)
    N, T, V = n_samples, seq_len, vocab_size
    input_ids = torch.full((N, T), PAD_ID, dtype=torch.long)
    labels = torch.full((N, T), -100, dtype=torch.long)

    if task in ("copy", "reverse"):
        L = (T - 1) // 2  # [x_1..x_L, SEP, 复制/逆序的 L 个 token, PAD...]
        x = torch.randint(2, V, (N, L), generator=gen)  # (N, L)
        target = x if task == "copy" else x.flip(1)
        input_ids[:, :L] = x
        input_ids[:, L] = SEP_ID
        input_ids[:, L + 1 : 2 * L + 1] = target
        labels[:, L + 1 : 2 * L + 1] = target
        verb = "原样复制" if task == "copy" else "逆序输出"
        description = (f"{task}：前 {L} 个随机 token（取值 2..{V - 1}），分隔符 {SEP_ID}，然后{verb}这 {L} 个 token；"
                       f"只有分隔符之后的 {L} 个位置计分，尾部填充 {PAD_ID} 不计分。")
    elif task == "counting":
        start = torch.randint(0, V, (N, 1), generator=gen)  # (N, 1)
        input_ids[:] = (start + torch.arange(T)) % V
        labels[:, 1:] = input_ids[:, 1:]
        description = (f"counting：随机起点 s，然后 s+1, s+2, ...（对 {V} 取模）；"
                       "第 0 个位置没有上文、不计分，其余位置都计分。")
    else:  # induction（关联回忆）：[k1 v1 k2 v2 ... kK vK, kq, vq]
        K = (T - 2) // 2
        n_keys = (V - 2) // 2  # 键取 2..2+n_keys-1，值取其后的 token，两者不重叠
        if K > n_keys:
            raise ValueError(f"induction 需要 {K} 个互不相同的键，但 vocab_size={V} 只有 {n_keys} 个可用键；"
                             f"请把 vocab_size 调到 >= {2 * K + 2} 或缩短 seq_len")
        keys = torch.rand(N, n_keys, generator=gen).argsort(dim=1)[:, :K] + 2  # (N, K) 每行互不相同
        values = torch.randint(2 + n_keys, V, (N, K), generator=gen)  # (N, K)
        input_ids[:, 0 : 2 * K : 2] = keys
        input_ids[:, 1 : 2 * K : 2] = values
        q = torch.randint(0, K, (N,), generator=gen)  # (N,) 查询第 q 对
        rows = torch.arange(N)
        input_ids[:, 2 * K] = keys[rows, q]
        input_ids[:, 2 * K + 1] = values[rows, q]
        labels[:, 2 * K + 1] = values[rows, q]
        description = (f"induction（关联回忆）：{K} 对 (键, 值)，然后给出其中一个键，"
                       f"只有最后的值计分（位置 {2 * K + 1}）；键取 2..{n_keys + 1}，值取 {n_keys + 2}..{V - 1}。")
    return SyntheticTask(input_ids=input_ids, labels=labels, vocab_size=V, task=task, description=description)


# ---------------------------------------------------------------- 统一入口


def get_experiment_data(name: str, **kwargs):
    """取实验数据。

    - get_experiment_data("shakespeare") -> str
    - get_experiment_data("tinystories", size_mb=10) -> str（前 size_mb MB，截到最后一个完整故事，保留分隔符）
    - get_experiment_data("synthetic", task="copy", n_samples=1000, seq_len=32, vocab_size=32, seed=0) -> SyntheticTask
    网络失败抛 DataDownloadError（消息里有手动放置文件的路径）。
    """
    if name == "shakespeare":
        return _load_shakespeare(**kwargs)
    if name == "tinystories":
        return _load_tinystories(**kwargs)
    if name == "synthetic":
        return _synthetic(**kwargs)
    raise ValueError(f"未知数据集 {name!r}：可选 shakespeare, tinystories, synthetic")


# ---------------------------------------------------------------- 命令行


def _list() -> None:
    print(f"缓存目录：{data_dir()}（MINIMIND_DATA_DIR 可改）")
    mirror = _mirror()
    print(f"镜像：{mirror or '未设置（MINIMIND_DATA_MIRROR）'}")
    cached = [p.name for p in sorted((data_dir() / "tinystories").glob("first_*mb.txt"))]
    rows = [
        ("shakespeare", "TinyShakespeare，约 1.1 MB", "已缓存" if _shakespeare_path().exists() else "未下载"),
        ("tinystories", f"TinyStories 前 N MB（--size-mb，1..{TINYSTORIES_MAX_MB}）", ", ".join(cached) or "未下载"),
        ("synthetic", f"合成任务：{', '.join(SYNTHETIC_TASKS)}（本地生成）", "无需下载"),
    ]
    for name, what, state in rows:
        print(f"  {name:<12} {what}  [{state}]")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="下载、校验并缓存 MiniMind Notes 实验用的数据。",
        epilog="环境变量：MINIMIND_DATA_DIR（缓存目录）、MINIMIND_DATA_MIRROR（镜像基础 URL）、HF_ENDPOINT。",
    )
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--list", action="store_true", help="列出可用数据集及缓存状态")
    group.add_argument("--download-all", action="store_true", help="下载全部需要联网的数据集")
    group.add_argument("--dataset", choices=("shakespeare", "tinystories", "synthetic"), help="只获取这一个数据集")
    parser.add_argument("--size-mb", type=int, default=10, help="TinyStories 取前多少 MB（默认 10）")
    args = parser.parse_args(argv)

    if args.list:
        _list()
        return 0
    names = ["shakespeare", "tinystories"] if args.download_all else [args.dataset]
    try:
        for name in names:
            if name == "synthetic":
                for task in SYNTHETIC_TASKS:
                    data = _synthetic(task, n_samples=1, seq_len=12, vocab_size=16)
                    print(f"{task}: input_ids={data.input_ids[0].tolist()} labels={data.labels[0].tolist()}")
                continue
            text = get_experiment_data(name, size_mb=args.size_mb) if name == "tinystories" else get_experiment_data(name)
            path = _tinystories_path(args.size_mb) if name == "tinystories" else _shakespeare_path()
            print(f"{name}: {len(text):,} 字符，已就绪：{path}")
    except (DataDownloadError, ValueError) as e:
        print(f"错误：{e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
