"""modules.common.datasets：真实下载代码对着本地回环服务器跑（不联网），外加合成任务与命令行。"""
import hashlib
import os
import subprocess
import sys

import pytest
import torch

from conftest import require_shared
from loopback_http import serve_directory, unused_port_url
from modules.common import datasets
from modules.common.datasets import DataDownloadError, download_file, get_experiment_data

SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
SEP = "<|endoftext|>"


def sha256_file(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    """每个测试一个空的缓存目录；清掉可能从外部继承的镜像设置；重试不等待。"""
    cache = tmp_path / "cache"
    monkeypatch.setenv("MINIMIND_DATA_DIR", str(cache))
    monkeypatch.delenv("MINIMIND_DATA_MIRROR", raising=False)
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    monkeypatch.setattr(datasets, "RETRY_BACKOFF_S", 0.0)
    return cache


@pytest.fixture
def shared_data(shared_dir):
    require_shared("data", "tinyshakespeare", "input.txt")  # CI 里缺失即失败
    return shared_dir / "data"


# ---------------------------------------------------------------- TinyShakespeare


def test_shakespeare_download_is_verified_and_cached(cache_dir, shared_data, monkeypatch):
    log = []
    with serve_directory(shared_data, request_log=log) as url:
        monkeypatch.setenv("MINIMIND_DATA_MIRROR", url)
        text = get_experiment_data("shakespeare")
        assert len(log) == 1 and log[0]["path"] == "/tinyshakespeare/input.txt"
        assert get_experiment_data("shakespeare") == text  # 第二次走缓存
        assert len(log) == 1
    cached = cache_dir / "tinyshakespeare" / "input.txt"
    assert sha256_file(cached) == SHAKESPEARE_SHA256
    assert text.startswith("First Citizen:")
    assert not (cached.parent / "input.txt.part").exists()


def test_checksum_mismatch_fails_and_leaves_nothing(cache_dir, shared_data, tmp_path, monkeypatch):
    mirror = tmp_path / "bad_mirror"
    (mirror / "tinyshakespeare").mkdir(parents=True)
    data = bytearray((shared_data / "tinyshakespeare" / "input.txt").read_bytes())
    data[1000] ^= 0x01  # 同样大小，只改一个比特：只有 sha256 能发现
    (mirror / "tinyshakespeare" / "input.txt").write_bytes(bytes(data))
    with serve_directory(mirror) as url:
        monkeypatch.setenv("MINIMIND_DATA_MIRROR", url)
        with pytest.raises(DataDownloadError, match="sha256"):
            get_experiment_data("shakespeare")
    folder = cache_dir / "tinyshakespeare"
    assert not (folder / "input.txt").exists()
    assert not (folder / "input.txt.part").exists()


def test_truncated_download_resumes_with_range(cache_dir, shared_data, monkeypatch):
    log = []
    dest = cache_dir / "tinyshakespeare" / "input.txt"
    part = dest.with_name("input.txt.part")
    with serve_directory(shared_data, truncate_after=400_000, request_log=log) as url:
        with pytest.raises(DataDownloadError, match="续传"):
            download_file(f"{url}/tinyshakespeare/input.txt", dest, expected_sha256=SHAKESPEARE_SHA256, retries=1)
        assert not dest.exists()
        kept = part.stat().st_size
        assert 0 < kept <= 400_000

        monkeypatch.setenv("MINIMIND_DATA_MIRROR", url)
        text = get_experiment_data("shakespeare")
    assert [entry["range"] for entry in log] == [None, f"bytes={kept}-"]
    assert sha256_file(dest) == SHAKESPEARE_SHA256
    assert len(text.encode("utf-8")) == 1115394
    assert not part.exists()


def test_stale_part_restarts_when_server_ignores_range(cache_dir, shared_data, monkeypatch):
    folder = cache_dir / "tinyshakespeare"
    folder.mkdir(parents=True)
    (folder / "input.txt.part").write_bytes(b"garbage" * 100)
    log = []
    with serve_directory(shared_data, ignore_range=True, request_log=log) as url:
        monkeypatch.setenv("MINIMIND_DATA_MIRROR", url)
        get_experiment_data("shakespeare")
    assert log[0]["range"] == "bytes=700-"  # 试过续传，服务器回 200，于是从零开始
    assert sha256_file(folder / "input.txt") == SHAKESPEARE_SHA256


def test_server_down_names_manual_path(cache_dir, monkeypatch):
    monkeypatch.setenv("MINIMIND_DATA_MIRROR", unused_port_url())
    with pytest.raises(DataDownloadError) as info:
        get_experiment_data("shakespeare")
    message = str(info.value)
    assert str(cache_dir / "tinyshakespeare" / "input.txt") in message
    assert "MINIMIND_DATA_MIRROR" in message
    assert not (cache_dir / "tinyshakespeare" / "input.txt").exists()


def test_corrupt_cache_is_deleted_and_refetched(cache_dir, shared_data, monkeypatch):
    cached = cache_dir / "tinyshakespeare" / "input.txt"
    cached.parent.mkdir(parents=True)
    cached.write_text("not shakespeare", encoding="utf-8")
    log = []
    with serve_directory(shared_data, request_log=log) as url:
        monkeypatch.setenv("MINIMIND_DATA_MIRROR", url)
        text = get_experiment_data("shakespeare")
    assert len(log) == 1
    assert text.startswith("First Citizen:")
    assert sha256_file(cached) == SHAKESPEARE_SHA256


# ---------------------------------------------------------------- TinyStories


@pytest.fixture
def fake_hf(tmp_path):
    """按 Hugging Face 的路径布局写一个约 1.3 MB 的假 TinyStories（含非 ASCII 字符，检验按字节截断不出错）。"""
    root = tmp_path / "hf"
    target = root / "datasets/roneneldan/TinyStories/resolve/main/TinyStoriesV2-GPT4-valid.txt"
    target.parent.mkdir(parents=True)
    stories = [f"Story {i}: Lily went to the café. " + "She smiled. " * (5 + i % 37) for i in range(5000)]
    text = "".join(f"{s}\n{SEP}\n" for s in stories)
    target.write_text(text, encoding="utf-8")
    return root, text


def test_tinystories_prefix_cut_at_story_boundary(cache_dir, fake_hf, monkeypatch):
    root, full = fake_hf
    log = []
    with serve_directory(root, request_log=log) as url:
        monkeypatch.setenv("HF_ENDPOINT", url)
        text = get_experiment_data("tinystories", size_mb=1)
    assert log == [{"path": "/datasets/roneneldan/TinyStories/resolve/main/TinyStoriesV2-GPT4-valid.txt",
                    "range": f"bytes=0-{2**20 - 1}"}]
    assert full.startswith(text) and text.endswith(SEP)
    assert len(text.encode("utf-8")) <= 2**20
    next_end = full.index(SEP, len(text)) + len(SEP)  # 下一个完整故事已经超出 1 MB
    assert len(full[:next_end].encode("utf-8")) > 2**20
    assert len(text.encode("utf-8")) > 2**20 - 1000  # 确实取满了约 1 MB（单个故事不到 600 字节）


def test_tinystories_cache_and_sidecar(cache_dir, fake_hf, monkeypatch):
    root, _ = fake_hf
    log = []
    with serve_directory(root, request_log=log) as url:
        monkeypatch.setenv("HF_ENDPOINT", url)
        text = get_experiment_data("tinystories", size_mb=1)
        cached = cache_dir / "tinystories" / "first_1mb.txt"
        sidecar = cached.with_name("first_1mb.txt.sha256")
        assert sidecar.read_text(encoding="utf-8").split()[0] == sha256_file(cached)
        assert not cached.with_name("first_1mb.txt.raw").exists()

        assert get_experiment_data("tinystories", size_mb=1) == text
        assert len(log) == 1  # 缓存命中，没有再请求

        cached.write_text(text + "tampered", encoding="utf-8")  # sha256 对不上 → 删掉重取
        assert get_experiment_data("tinystories", size_mb=1) == text
        assert len(log) == 2
    assert sidecar.read_text(encoding="utf-8").split()[0] == sha256_file(cached)


def test_tinystories_mirror_layout(cache_dir, fake_hf, tmp_path, monkeypatch):
    _, full = fake_hf
    mirror = tmp_path / "mirror" / "tinystories"
    mirror.mkdir(parents=True)
    (mirror / "TinyStoriesV2-GPT4-valid.txt").write_text(full, encoding="utf-8")
    with serve_directory(mirror.parent) as url:
        monkeypatch.setenv("MINIMIND_DATA_MIRROR", url)
        monkeypatch.setenv("HF_ENDPOINT", unused_port_url())  # 镜像优先，HF 不该被访问
        text = get_experiment_data("tinystories", size_mb=1)
    assert full.startswith(text) and text.endswith(SEP)


def test_tinystories_server_without_range_support(cache_dir, fake_hf, monkeypatch):
    root, full = fake_hf
    with serve_directory(root, ignore_range=True) as url:  # 回 200 整个文件：只留前 1 MB
        monkeypatch.setenv("HF_ENDPOINT", url)
        text = get_experiment_data("tinystories", size_mb=1)
    assert full.startswith(text) and text.endswith(SEP)
    assert 2**20 - 1000 < len(text.encode("utf-8")) <= 2**20


def test_tinystories_offline_uses_manually_placed_file(cache_dir, fake_hf, monkeypatch):
    _, full = fake_hf
    monkeypatch.setenv("HF_ENDPOINT", unused_port_url())
    source = cache_dir / "tinystories" / "TinyStoriesV2-GPT4-valid.txt"
    with pytest.raises(DataDownloadError) as info:
        get_experiment_data("tinystories", size_mb=1)
    assert str(source) in str(info.value)  # 报错告诉用户整份文件该放哪
    source.write_text(full, encoding="utf-8")  # 照做之后离线也能用
    text = get_experiment_data("tinystories", size_mb=1)
    assert full.startswith(text) and text.endswith(SEP) and len(text.encode("utf-8")) > 2**20 - 1000


def test_tinystories_rejects_bad_size(cache_dir):
    for bad in (0, 21, 1.5, True):
        with pytest.raises(ValueError, match="size_mb"):
            get_experiment_data("tinystories", size_mb=bad)


# ---------------------------------------------------------------- 合成任务


@pytest.mark.parametrize("task", datasets.SYNTHETIC_TASKS)
def test_synthetic_deterministic_by_seed(task):
    kwargs = dict(task=task, n_samples=64, seq_len=17, vocab_size=24)
    a = get_experiment_data("synthetic", seed=3, **kwargs)
    b = get_experiment_data("synthetic", seed=3, **kwargs)
    c = get_experiment_data("synthetic", seed=4, **kwargs)
    assert a.input_ids.shape == a.labels.shape == (64, 17)
    assert a.input_ids.dtype == a.labels.dtype == torch.long
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.input_ids, c.input_ids)
    assert a.task == task and a.vocab_size == 24 and a.description
    assert int(a.input_ids.min()) >= 0 and int(a.input_ids.max()) < 24


def test_synthetic_does_not_touch_global_rng():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    get_experiment_data("synthetic", task="induction", n_samples=8, seq_len=16, vocab_size=32)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("task", ["copy", "reverse"])
def test_copy_and_reverse_score_only_the_answer(task):
    d = get_experiment_data("synthetic", task=task, n_samples=32, seq_len=12, vocab_size=16, seed=0)
    L = (12 - 1) // 2
    x = d.input_ids[:, :L]
    assert (x >= 2).all()  # 数据 token 不与 PAD/SEP 冲突
    assert (d.input_ids[:, L] == datasets.SEP_ID).all()
    expected = x if task == "copy" else x.flip(1)
    scored = d.labels != -100
    assert scored[:, L + 1 : 2 * L + 1].all()
    assert scored.sum() == 32 * L
    assert torch.equal(d.labels[:, L + 1 : 2 * L + 1], expected)
    assert torch.equal(d.input_ids[:, L + 1 : 2 * L + 1], expected)


def test_counting_scores_every_successor():
    d = get_experiment_data("synthetic", task="counting", n_samples=32, seq_len=20, vocab_size=7, seed=1)
    assert (d.labels[:, 0] == -100).all()
    assert torch.equal(d.labels[:, 1:], d.input_ids[:, 1:])
    assert torch.equal(d.input_ids[:, 1:], (d.input_ids[:, :-1] + 1) % 7)


def test_induction_scores_the_recalled_value():
    T = 14
    d = get_experiment_data("synthetic", task="induction", n_samples=50, seq_len=T, vocab_size=20, seed=2)
    K = (T - 2) // 2
    scored = (d.labels != -100).nonzero()
    assert torch.equal(scored[:, 1], torch.full((50,), 2 * K + 1))
    for row, labels in zip(d.input_ids, d.labels):
        keys, values = row[0 : 2 * K : 2].tolist(), row[1 : 2 * K : 2].tolist()
        assert len(set(keys)) == K and not set(keys) & set(values)
        query = int(row[2 * K])
        assert int(labels[2 * K + 1]) == values[keys.index(query)] == int(row[2 * K + 1])


def test_synthetic_bad_arguments():
    with pytest.raises(ValueError, match="copy"):
        get_experiment_data("synthetic", task="sorting")
    with pytest.raises(ValueError, match="vocab_size"):
        get_experiment_data("synthetic", task="induction", seq_len=64, vocab_size=16)
    with pytest.raises(ValueError, match="shakespeare"):
        get_experiment_data("wikipedia")


# ---------------------------------------------------------------- 命令行


def run_cli(repo_root, cwd, env_overrides, *args):
    env = {k: v for k, v in os.environ.items() if k not in ("MINIMIND_DATA_MIRROR", "HF_ENDPOINT")}
    env.update(env_overrides)
    return subprocess.run(
        [sys.executable, str(repo_root / "modules" / "common" / "datasets.py"), *args],
        cwd=cwd, env=env, capture_output=True, text=True, encoding="utf-8", timeout=120,
    )


def test_cli_list(repo_root, tmp_path):
    result = run_cli(repo_root, tmp_path, {"MINIMIND_DATA_DIR": str(tmp_path / "cache")}, "--list")
    assert result.returncode == 0, result.stderr
    for name in ("shakespeare", "tinystories", "synthetic"):
        assert name in result.stdout


def test_cli_downloads_shakespeare_from_mirror(repo_root, tmp_path, shared_data):
    cache = tmp_path / "cache"
    with serve_directory(shared_data) as url:
        result = run_cli(repo_root, tmp_path, {"MINIMIND_DATA_DIR": str(cache), "MINIMIND_DATA_MIRROR": url},
                         "--dataset", "shakespeare")
    assert result.returncode == 0, result.stderr
    assert sha256_file(cache / "tinyshakespeare" / "input.txt") == SHAKESPEARE_SHA256


def test_cli_offline_exits_1_without_traceback(repo_root, tmp_path):
    cache = tmp_path / "cache"
    env = {"MINIMIND_DATA_DIR": str(cache), "MINIMIND_DATA_MIRROR": unused_port_url()}
    result = run_cli(repo_root, tmp_path, env, "--dataset", "shakespeare")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("错误：下载失败")
    assert sum(line.startswith("错误") for line in result.stderr.splitlines()) == 1
    assert str(cache / "tinyshakespeare" / "input.txt") in result.stderr


def test_script_mode_keeps_modules_common_off_sys_path(repo_root, tmp_path):
    """直接运行 datasets.py 时，modules/common 不能留在 sys.path（否则它会遮住 Hugging Face 的 datasets）。"""
    script = repo_root / "modules" / "common" / "datasets.py"
    probe = (
        "import runpy, sys\n"
        f"sys.argv = [{str(script)!r}, '--list']\n"
        f"sys.path.insert(0, {str(script.parent)!r})  # 模拟 python 直接运行脚本时的 sys.path[0]\n"
        "try:\n"
        f"    runpy.run_path({str(script)!r}, run_name='__main__')\n"
        "except SystemExit:\n"
        "    pass\n"
        f"print('COMMON_ON_PATH', {str(script.parent)!r} in sys.path, {str(repo_root)!r} in sys.path)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True,
                            encoding="utf-8", env={**os.environ, "MINIMIND_DATA_DIR": str(tmp_path)}, timeout=120)
    assert "COMMON_ON_PATH False True" in result.stdout, result.stdout + result.stderr

