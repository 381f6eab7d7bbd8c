"""modules.common.text_data：字符分词器、顺序切分、可复现的随机取批。"""
import math

import pytest
import torch

from modules.common.text_data import BatchSampler, CharTokenizer, train_val_split, unigram_entropy

TEXT = "hello world\n你好，世界！"


def test_tokenizer_roundtrip_and_sorted_vocab():
    tok = CharTokenizer(TEXT)
    assert tok.vocab_size == len(set(TEXT))
    assert tok.chars == sorted(set(TEXT))
    ids = tok.encode(TEXT)
    assert len(ids) == len(TEXT) and all(0 <= i < tok.vocab_size for i in ids)
    assert tok.encode("d") == [tok.chars.index("d")]
    assert tok.decode(ids) == TEXT
    assert tok.decode(torch.tensor(ids)) == TEXT


def test_unknown_char_is_a_clear_error():
    tok = CharTokenizer("abc")
    with pytest.raises(ValueError, match=r"'z'.*U\+007A.*不在词表"):
        tok.encode("abz")
    with pytest.raises(ValueError, match="超出词表"):
        tok.decode([0, 3])


def test_save_load_utf8(tmp_path):
    tok = CharTokenizer(TEXT)
    path = tmp_path / "tok.json"
    tok.save(path)
    saved = path.read_text(encoding="utf-8")
    assert "你" in saved and "\\u" not in saved  # 以 UTF-8 明文保存，而非 \u 转义
    loaded = CharTokenizer.load(path)
    assert loaded.chars == tok.chars
    assert loaded.encode(TEXT) == tok.encode(TEXT)


def test_load_rejects_foreign_json(tmp_path):
    path = tmp_path / "other.json"
    path.write_text('{"vocab": {"a": 0}}', encoding="utf-8")
    with pytest.raises(ValueError, match="CharTokenizer.save"):
        CharTokenizer.load(path)


def test_train_val_split_is_contiguous():
    ids = torch.arange(100)
    train, val = train_val_split(ids, val_fraction=0.2)
    assert torch.equal(train, torch.arange(80)) and torch.equal(val, torch.arange(80, 100))
    with pytest.raises(ValueError, match="val_fraction"):
        train_val_split(ids, val_fraction=1.0)
    with pytest.raises(ValueError, match="一维"):
        train_val_split(ids.view(10, 10))


def test_batch_sampler_windows_and_labels():
    data = torch.arange(50)
    sampler = BatchSampler(data, block_size=8, batch_size=64, seed=0)
    input_ids, labels = sampler.sample()
    assert input_ids.shape == labels.shape == (64, 8) and input_ids.dtype == torch.long
    assert torch.equal(input_ids, labels)  # 标签不移位，模型内部移位
    starts = input_ids[:, 0]
    assert torch.equal(input_ids, starts[:, None] + torch.arange(8))  # 每行是数据里连续的一段
    assert int(starts.min()) >= 0 and int(starts.max()) <= 50 - 8


def test_batch_sampler_reaches_the_last_window():
    data = torch.arange(10)
    sampler = BatchSampler(data, block_size=8, batch_size=200, seed=0)
    starts = set(sampler.sample()[0][:, 0].tolist())
    assert starts == {0, 1, 2}  # 最后一个完整窗口 (2..9) 也会被取到


def test_batch_sampler_reproducible_and_isolated():
    data = torch.arange(1000)
    a = BatchSampler(data, 16, 4, seed=1)
    b = BatchSampler(data, 16, 4, seed=1)
    c = BatchSampler(data, 16, 4, seed=2)
    torch.manual_seed(0)
    expected_global = torch.rand(2)
    torch.manual_seed(0)
    batches_a = [a.sample()[0] for _ in range(3)]
    assert torch.equal(torch.rand(2), expected_global)  # 没有动全局随机状态
    batches_b = [b.sample()[0] for _ in range(3)]
    assert all(torch.equal(x, y) for x, y in zip(batches_a, batches_b))
    assert not torch.equal(batches_a[0], c.sample()[0])
    assert not torch.equal(batches_a[0], batches_a[1])


def test_batch_sampler_device_and_bad_input():
    x, y = BatchSampler(torch.arange(20), 4, 2).sample(device="cpu")
    assert x.device.type == y.device.type == "cpu"
    with pytest.raises(ValueError, match="block_size"):
        BatchSampler(torch.arange(5), block_size=8, batch_size=2)


def test_char_lm_batches_shapes_and_splits():
    from modules.common.text_data import char_lm_batches

    text = "hello world, this is a tiny corpus for testing. " * 20
    tok, get_batch = char_lm_batches(text, block_size=16, batch_size=4, seed=0)
    x, y = get_batch("train")
    assert x.shape == (4, 16) and torch.equal(x, y) and int(x.max()) < tok.vocab_size
    xv, _ = get_batch("val")
    assert xv.shape == (4, 16)
    _, again = char_lm_batches(text, block_size=16, batch_size=4, seed=0)
    assert torch.equal(again("train")[0], x)  # 同种子同批次
    with pytest.raises(ValueError, match="split"):
        get_batch("test")


def test_unigram_entropy_is_the_best_context_free_cross_entropy():
    assert unigram_entropy("abcd" * 10) == pytest.approx(math.log(4))  # 4 个字符一样多：ln 4
    assert unigram_entropy("aaaa") == 0.0  # 只有一个字符：不需要任何信息
    assert unigram_entropy("aab") == pytest.approx(-(2 / 3) * math.log(2 / 3) - (1 / 3) * math.log(1 / 3))
