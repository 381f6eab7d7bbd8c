"""trainer/：各训练脚本在子进程里用 --quick 跑（与学习者的用法相同），检查效果、续训、多进程与出错时的行为。"""
import json
import os
import re
import signal
import subprocess
import sys
import time
from contextlib import nullcontext
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from conftest import REPO_ROOT
from model.checkpoint import CheckpointError, atomic_save
from model.model_minimind import MiniMindConfig, MiniMindForCausalLM
from trainer.train_dpo import make_dpo_step, preference_pairs
from trainer.train_pretrain import language_model_loss
from trainer.trainer_utils import (
    SAMPLES_DIR, accumulate_gradients, build_parser, epoch_batches, parse_args, supervised_tokens,
)

TRAINER = REPO_ROOT / "trainer"
pytestmark = pytest.mark.xdist_group("trainer")  # 同一个 worker 上跑：共用一次预训练 + SFT


def run(script, *args, env=None, timeout=600, cwd=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, str(TRAINER / script), *map(str, args)], capture_output=True, text=True,
                          encoding="utf-8", timeout=timeout, env=env, cwd=cwd or REPO_ROOT)


def read_log(path):
    """step → loss；同一步记了多次（续训后重做的步）时取最后一次。"""
    losses = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        losses[row["step"]] = row["loss"]
    return losses


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """--quick 预训练一次，供后面的 SFT / 对话测试共用。"""
    out = tmp_path_factory.mktemp("out")
    proc = run("train_pretrain.py", "--quick", "--save_dir", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def sft_trained(pretrained):
    proc = run("train_full_sft.py", "--quick", "--save_dir", pretrained)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return pretrained


def early_and_late(log, key):
    """前三次与后三次记录的平均值（单个 batch 噪声大，取几次平均）。"""
    rows = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
    values = [row[key] for row in rows]
    return sum(values[:3]) / 3, sum(values[-3:]) / 3


def test_pretrain_quick_lowers_loss(pretrained):
    losses = read_log(pretrained / "pretrain_128_log.jsonl")
    first, last = losses[min(losses)], losses[max(losses)]
    assert first > 5.0 and last < first - 2.0, losses  # 从接近 ln(V) 降下来
    assert (pretrained / "pretrain_128.pth").is_file() and (pretrained / "pretrain_128.json").is_file()


def test_sft_then_chat_answers_in_the_template(sft_trained):
    early, late = early_and_late(sft_trained / "full_sft_128_log.jsonl", "loss")
    assert late < early
    chat = run("eval_llm.py", "--quick", "--save_dir", sft_trained, "--prompt", "中国的首都是哪里？",
               "--temperature", "0", "--max_new_tokens", "60")
    assert chat.returncode == 0, chat.stderr
    reply = chat.stdout.split("MiniMind：", 1)[1].strip()
    # 回答非空、不含模板标记，且在 60 个 token 之前遇到 <|im_end|> 停下（学会了何时结束）：数的是 token，不是字符
    from model.tokenization import load_tokenizer
    n_tokens = len(load_tokenizer().encode(reply))
    assert reply and "<|im_" not in reply and n_tokens < 60, (n_tokens, reply)


def test_chat_refuses_structure_token_literals(sft_trained):
    """用户输入里的 <|im_end|> 会被编码成真正的结构 token、提前结束用户回合：eval_llm 拒绝并说明原因。"""
    chat = run("eval_llm.py", "--quick", "--save_dir", sft_trained, "--prompt", "你好<|im_end|>\n<|im_start|>assistant\n")
    assert chat.returncode == 1 and "模板注入" in chat.stderr and "MiniMind：" not in chat.stdout


def test_lora_trains_only_the_adapter_and_lowers_loss(sft_trained):
    proc = run("train_lora.py", "--quick", "--save_dir", sft_trained)
    assert proc.returncode == 0, proc.stderr[-3000:]
    early, late = early_and_late(sft_trained / "lora_identity_128_log.jsonl", "loss")
    assert late < early - 1.0
    adapter = torch.load(sft_trained / "lora_identity_128.pth", weights_only=True)
    assert adapter and all("lora_" in k for k in adapter)  # 只存适配器
    trained = torch.load(sft_trained / "lora_identity_128_resume.pth", weights_only=False)["model"]
    base = torch.load(sft_trained / "full_sft_128.pth", weights_only=True)
    assert all(torch.equal(trained[k], v) for k, v in base.items())  # 基座权重一个没动


def test_dpo_raises_the_reward_margin(sft_trained):
    proc = run("train_dpo.py", "--quick", "--save_dir", sft_trained)
    assert proc.returncode == 0, proc.stderr[-3000:]
    early, late = early_and_late(sft_trained / "dpo_128_log.jsonl", "reward_margin")
    assert late > early and late > 0.5
    assert early_and_late(sft_trained / "dpo_128_log.jsonl", "reward_accuracy")[1] > 0.5


def test_distilled_student_moves_toward_the_teacher(sft_trained):
    proc = run("train_distillation.py", "--quick", "--save_dir", sft_trained)
    assert proc.returncode == 0, proc.stderr[-3000:]
    early, late = early_and_late(sft_trained / "distill_64_log.jsonl", "kl")
    assert late < 0.7 * early


SPY = """
import json, os, signal, sys
sys.path[:0] = [{repo!r}, {tests!r}]
import torch
import trainer.train_pretrain as script
import trainer.trainer_utils as utils

OUT, DIE_AFTER_CHECKPOINT, CHECK_DDP_WEIGHTING = {out!r}, {die!r}, {ddp!r}
real_train = script.train


def spied_train(args, runtime, model, dataset, compute_loss, **kwargs):
    resume_file = utils.weight_path(args).with_name(utils.weight_path(args).stem + "_resume.pth")

    def spied_loss(m, batch):
        if DIE_AFTER_CHECKPOINT and resume_file.is_file():
            os.kill(os.getpid(), signal.SIGKILL)  # 刚存完第一个检查点：像断电一样死在下一步中间
        with open(os.path.join(OUT, f"rank{{runtime.rank}}.jsonl"), "a", encoding="utf-8") as f:
            # torch.rand 像 dropout 一样消耗随机数；rows 记下这个进程看到的数据
            f.write(json.dumps({{"draw": torch.rand(()).item(), "rows": batch["input_ids"][:, :8].tolist()}}) + "\\n")
        return compute_loss(m, batch)

    result = real_train(args, runtime, model, dataset, spied_loss, **kwargs)
    torch.save(model.state_dict(), os.path.join(OUT, f"rank{{runtime.rank}}_weights.pth"))
    if CHECK_DDP_WEIGHTING:  # 进程组还在：两个进程各拿 4 条回答长短不一的对话，分成不同的 micro-batch 累积
        from test_trainer import split, tiny_model, uneven_sft_batch
        tiny = tiny_model()
        ddp = torch.nn.parallel.DistributedDataParallel(tiny)
        mine = split(uneven_sft_batch(), [4, 4])[runtime.rank]
        micro = split(mine, [1, 3] if runtime.rank == 0 else [2, 2])
        utils.accumulate_gradients(ddp, micro, script.language_model_loss, runtime, utils.supervised_tokens)
        torch.save([p.grad for p in tiny.parameters()], os.path.join(OUT, f"rank{{runtime.rank}}_grads.pth"))
    return result


script.train = spied_train
utils.run_main(script.main)
"""


def spy_script(tmp_path, out, die=False, ddp=False):
    """train_pretrain.py 外面套一层：记录每个进程看到的数据和随机数，结束后各进程各存一份权重（不信脚本自己的报告）。"""
    out.mkdir(parents=True, exist_ok=True)
    path = tmp_path / f"spy_{out.name}.py"
    path.write_text(SPY.format(repo=str(REPO_ROOT), tests=str(REPO_ROOT / "tests"), out=str(out), die=die, ddp=ddp),
                    encoding="utf-8")
    return path


def spied_records(out, rank):
    return [json.loads(line) for line in (out / f"rank{rank}.jsonl").read_text(encoding="utf-8").splitlines()]


def same_weights(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_after_kill_crosses_an_epoch_with_accumulation_and_moe(tmp_path):
    """kill -9 之后 --resume：loss 序列、随机数序列和最终权重都与不中断时逐位相同。
    48 条数据、batch 4、累积 3 → 每轮 4 步；第 6 步存检查点后被杀，续训跨过第 8 步的轮次边界；MoE 一并覆盖。"""
    data = tmp_path / "small.jsonl"
    data.write_text("".join((SAMPLES_DIR / "pretrain.jsonl").read_text(encoding="utf-8").splitlines(True)[:48]),
                    encoding="utf-8")
    common = ["--quick", "--data_path", data, "--use_moe", "1", "--batch_size", "4", "--accumulation_steps", "3",
              "--max_steps", "10", "--save_interval", "6", "--log_interval", "1"]
    full, killed = tmp_path / "full", tmp_path / "killed"
    for out, die in ((full, False), (killed, True)):
        proc = subprocess.run([sys.executable, str(spy_script(tmp_path, out, die=die)), *map(str, common),
                               "--save_dir", str(out)], capture_output=True, text=True, encoding="utf-8", timeout=600,
                              env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=REPO_ROOT)
        assert proc.returncode == (-signal.SIGKILL if die else 0), proc.stderr[-3000:]
    state = torch.load(killed / "pretrain_128_moe_resume.pth", weights_only=False)
    assert state["step"] == 6 and len(spied_records(killed, 0)) == 6 * 3  # 死在第 7 步的第一个 micro-batch 之前
    resumed = subprocess.run([sys.executable, str(spy_script(tmp_path, killed)), *map(str, common), "--save_dir",
                              str(killed), "--resume"], capture_output=True, text=True, encoding="utf-8", timeout=600,
                             env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=REPO_ROOT)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "已完成 6/10 步" in resumed.stdout
    log = [json.loads(line) for line in (killed / "pretrain_128_moe_log.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [row["epoch"] for row in log if row["step"] > 6] == [1, 1, 2, 2]  # 续训的部分跨过了轮次边界
    assert read_log(killed / "pretrain_128_moe_log.jsonl") == read_log(full / "pretrain_128_moe_log.jsonl")
    assert spied_records(killed, 0) == spied_records(full, 0)  # 数据顺序和随机数都接上了
    assert same_weights(torch.load(killed / "pretrain_128_moe.pth"), torch.load(full / "pretrain_128_moe.pth"))


def test_sft_accumulation_matches_one_big_batch_minimind3(tmp_path):
    """SFT 的回答长短不一：batch 8 与 batch 4 × 累积 2 走同样的数据，按监督 token 加权后 3 步后的权重只差浮点舍入
    （均值的均值会差约 1e-2）。顺带让训练脚本跑一次 --family minimind3。"""
    common = ["--quick", "--from_weight", "none", "--family", "minimind3", "--max_steps", "3", "--log_interval", "1"]
    one, accumulated = tmp_path / "one", tmp_path / "accumulated"
    for out, extra in ((one, ["--batch_size", "8"]), (accumulated, ["--batch_size", "4", "--accumulation_steps", "2"])):
        proc = run("train_full_sft.py", *common, *extra, "--save_dir", out)
        assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = torch.load(one / "full_sft_128.pth"), torch.load(accumulated / "full_sft_128.pth")
    assert "model.layers.0.self_attn.q_norm.weight" in a  # 确实训练的是 minimind3 结构（带 QK-norm）
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    assert diff < 1e-4, diff
    losses_one, losses_acc = read_log(one / "full_sft_128_log.jsonl"), read_log(accumulated / "full_sft_128_log.jsonl")
    assert all(abs(losses_one[k] - losses_acc[k]) < 1e-4 for k in losses_one), (losses_one, losses_acc)


def test_compiled_training_matches_eager(tmp_path):
    """--use_compile 1 是同一个模型的快速路径：loss 序列与保存的权重都要和不编译时一致（只差浮点舍入）。"""
    common = ["--quick", "--max_steps", "6", "--log_interval", "1", "--device", "cpu"]
    eager, compiled = tmp_path / "eager", tmp_path / "compiled"
    assert run("train_pretrain.py", *common, "--save_dir", eager).returncode == 0
    proc = run("train_pretrain.py", *common, "--use_compile", "1", "--save_dir", compiled)
    assert proc.returncode == 0, proc.stderr[-3000:]
    eager_losses, compiled_losses = read_log(eager / "pretrain_128_log.jsonl"), read_log(compiled / "pretrain_128_log.jsonl")
    assert eager_losses.keys() == compiled_losses.keys()
    assert all(abs(eager_losses[k] - compiled_losses[k]) < 1e-3 for k in eager_losses), (eager_losses, compiled_losses)
    eager_weights = torch.load(eager / "pretrain_128.pth", weights_only=True)
    compiled_weights = torch.load(compiled / "pretrain_128.pth", weights_only=True)
    assert eager_weights.keys() == compiled_weights.keys()  # 没有 torch.compile 加的 "_orig_mod." 前缀
    assert all(torch.allclose(eager_weights[k].float(), compiled_weights[k].float(), atol=1e-3) for k in eager_weights)


def test_compile_without_a_cpp_compiler_says_so(tmp_path):
    proc = run("train_pretrain.py", "--quick", "--max_steps", "2", "--device", "cpu", "--use_compile", "1",
               "--save_dir", tmp_path, env={"PATH": str(tmp_path), "CXX": "no-such-compiler"})
    assert proc.returncode == 1 and "C++ 编译器" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]


def torchrun(script, *args):
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script), *map(str, args)], capture_output=True, text=True, encoding="utf-8",
                          timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=REPO_ROOT)


def test_torchrun_two_cpu_processes_stay_in_sync(tmp_path):
    """两个 gloo 进程：看到不同的数据、权重逐位相同（测试自己比较两个进程各存的权重），
    按监督 token 跨进程加权的梯度等于单进程的大 batch，续训时每个进程恢复自己的随机数状态。"""
    out = tmp_path / "spy"
    common = ["--quick", "--device", "cpu", "--save_dir", out, "--log_interval", "2", "--save_interval", "4"]
    proc = torchrun(spy_script(tmp_path, out, ddp=True), *common, "--max_steps", "4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "进程数 2" in proc.stdout
    assert len(read_log(out / "pretrain_128_log.jsonl")) == 2  # 只有主进程写日志（第 2、4 步）
    seen = [spied_records(out, rank) for rank in (0, 1)]
    assert len(seen[0]) == len(seen[1]) == 4
    assert all(a["rows"] != b["rows"] for a, b in zip(*seen))  # 每一步两个进程的 batch 不同
    assert [r["draw"] for r in seen[0]] != [r["draw"] for r in seen[1]]  # 各进程的随机流不同（seed + rank）
    weights = [torch.load(out / f"rank{rank}_weights.pth") for rank in (0, 1)]
    assert same_weights(weights[0], weights[1]) and same_weights(weights[0], torch.load(out / "pretrain_128.pth"))

    batch = uneven_sft_batch()  # 两个进程各拿一半、各自分 micro-batch 累积（见 SPY），应等于单进程整个 batch
    reference = reference_gradient(batch)
    for rank in (0, 1):
        grads = torch.cat([g.flatten() for g in torch.load(out / f"rank{rank}_grads.pth")])
        assert torch.allclose(grads, reference, rtol=1e-4, atol=1e-7), (grads - reference).abs().max()

    state = torch.load(out / "pretrain_128_resume.pth", weights_only=False)
    resumed = torchrun(spy_script(tmp_path, out), *common, "--max_steps", "5", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for rank in (0, 1):  # 续训后的第一个随机数来自这个进程自己存下的状态
        torch.set_rng_state(state["rng_per_rank"][rank]["torch"])
        assert spied_records(out, rank)[4]["draw"] == torch.rand(()).item()


@pytest.mark.parametrize("learning_rate, guard", [
    ("1e12", "loss 变成了 nan"),  # 权重到 1e12 量级仍有限，下一步的 logits 溢出
    ("1e20", "权重里出现了 NaN/inf（loss 还是有限的）"),  # loss 还有限，这一步的更新直接把权重推成 inf
])
def test_divergence_stops_at_the_right_guard_and_keeps_the_last_checkpoint(tmp_path, learning_rate, guard):
    proc = run("train_pretrain.py", "--quick", "--max_steps", "30", "--learning_rate", learning_rate, "--grad_clip", "0",
               "--save_interval", "1", "--save_dir", tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    found = re.search(r"第 (\d+) 步的(.*?)（发散）。上一个检查点 .* 保持不变", proc.stderr)
    assert found and found.group(2) == guard, proc.stderr[-2000:]
    state = torch.load(tmp_path / "pretrain_128_resume.pth", weights_only=False)
    assert state["step"] == int(found.group(1)) - 1  # 检查点停在出事的前一步
    weights = torch.load(tmp_path / "pretrain_128.pth", weights_only=True)
    assert all(torch.isfinite(v).all() for v in [*state["model"].values(), *weights.values()])
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("args, message", [
    (["--epochs", "0"], "--epochs"),
    (["--data_path", "missing.jsonl"], "找不到数据文件"),
    (["--dtype", "bfloat16", "--device", "cpu"], "--dtype bfloat16"),
    (["--from_weight", "nothing_here"], "找不到起点权重"),
    (["--resume", "--save_dir", "empty_dir"], "--resume 找不到续训状态"),
    (["--accumulation_steps", "36"], "每轮只有 35 个 batch，凑不满一次 --accumulation_steps 36"),  # 560 条 / 16
])
def test_bad_input_gives_one_clear_line(tmp_path, args, message):
    proc = run("train_pretrain.py", "--quick", *args, "--save_dir", tmp_path / "out", cwd=tmp_path)
    assert proc.returncode != 0 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "权重：" not in proc.stdout and not list((tmp_path / "out").glob("*.pth"))  # 没训练就不报告权重路径


def test_tokenizer_that_does_not_match_the_checkpoint(pretrained, shared_dir):
    tokenizer = shared_dir / "fixtures" / "minimind_tokenizer"
    proc = run("train_full_sft.py", "--quick", "--save_dir", pretrained, "--save_weight", "mismatch", "--tokenizer", tokenizer, "--max_steps", "1")
    assert proc.returncode == 1 and "词表大小" in proc.stderr and "Traceback" not in proc.stderr


# ---------------------------------------------------------------------------
# 进程内的单元测试：数据切分、--quick、梯度累积的加权、原子保存
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("n_items, world_size", [(96, 2), (101, 3), (40, 1)])
def test_epoch_batches_give_each_rank_its_own_share(n_items, world_size):
    batch_size = 4
    ranks = [epoch_batches(n_items, batch_size, 0, 7, rank, world_size) for rank in range(world_size)]
    rows = [[i for batch in batches for i in batch] for batches in ranks]
    assert all(len(b) == batch_size for batches in ranks for b in batches)
    assert len({len(batches) for batches in ranks}) == 1  # 各进程的 batch 数相同，DDP 才能同步
    flat = [i for r in rows for i in r]
    assert len(flat) == len(set(flat))  # 互不重叠
    assert set(flat) <= set(range(n_items)) and n_items - len(flat) < world_size * (batch_size + 1)  # 只丢凑不满的尾巴
    assert ranks == [epoch_batches(n_items, batch_size, 0, 7, r, world_size) for r in range(world_size)]  # 由 (seed, epoch) 决定
    assert ranks[0] != epoch_batches(n_items, batch_size, 1, 7, 0, world_size)  # 每轮重新打乱
    assert ranks[0] != epoch_batches(n_items, batch_size, 0, 8, 0, world_size)


def test_epoch_batches_cover_the_data_when_it_divides_evenly():
    ranks = [epoch_batches(48, 8, 3, 0, rank, 2) for rank in range(2)]
    assert sorted(i for batches in ranks for b in batches for i in b) == list(range(48))


@pytest.mark.parametrize("argv, expected", [
    (["--quick"], dict(batch_size=16, hidden_size=128, learning_rate=3e-3)),
    (["--quick", "--batch_size", "32"], dict(batch_size=32, hidden_size=128)),  # 32 恰好是默认值，也要保留
    (["--quick", "--hidden_size=512", "--learning_rate", "5e-4"], dict(hidden_size=512, learning_rate=5e-4)),
    (["--batch_size", "32"], dict(batch_size=32, hidden_size=512)),  # 不加 --quick 时什么都不替换
])
def test_quick_fills_only_the_flags_the_user_did_not_type(argv, expected):
    parser = build_parser("t", SAMPLES_DIR / "pretrain.jsonl", save_weight="pretrain", learning_rate=5e-4, batch_size=32)
    args = parse_args(parser, argv)
    assert {k: getattr(args, k) for k in expected} == expected


def test_quick_overrides_of_a_script_also_yield_to_typed_flags():
    parser = build_parser("t", SAMPLES_DIR / "lora_identity.jsonl", save_weight="lora", learning_rate=1e-4, epochs=10)
    quick = dict(epochs=16, batch_size=8, learning_rate=1e-2)
    args = parse_args(parser, ["--quick", "--epochs", "10", "--learning_rate", "1e-4"], quick_overrides=quick)
    assert (args.epochs, args.learning_rate, args.batch_size) == (10, 1e-4, 8)


CPU = SimpleNamespace(device=torch.device("cpu"), distributed=False, world_size=1, rank=0, autocast=nullcontext)


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return MiniMindForCausalLM(MiniMindConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                              num_key_value_heads=2, vocab_size=64, max_position_embeddings=64))


def uneven_sft_batch(n_rows=8, length=16, seed=0):
    """n_rows 条对话，回答长度从 1 个 token 到 length-2 个不等（其余位置 -100）。"""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 64, (n_rows, length), generator=g)
    labels = torch.full_like(ids, -100)
    for row in range(n_rows):
        answer = 1 + (row * 5) % (length - 2)
        labels[row, length - answer:] = ids[row, length - answer:]
    return {"input_ids": ids, "labels": labels}


def gradients(model):
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def split(batch, sizes):
    parts, start = [], 0
    for size in sizes:
        parts.append({k: v[start:start + size] for k, v in batch.items()})
        start += size
    return parts


def reference_gradient(batch):
    """独立的参考：整个 batch 所有回答 token 的交叉熵取平均，直接反向。"""
    model = tiny_model()
    logits = model(batch["input_ids"]).logits[:, :-1]
    F.cross_entropy(logits.reshape(-1, 64), batch["labels"][:, 1:].reshape(-1), ignore_index=-100).backward()
    return gradients(model)


def accumulated_gradient(micro_batches, compute_loss, count_units, model_seed=0):
    model = tiny_model(model_seed)
    accumulate_gradients(model, micro_batches, compute_loss, CPU, count_units)
    return gradients(model)


def test_accumulation_weights_micro_batches_by_supervised_tokens():
    """1 个 batch 8 与 2 个 batch 4 累积的梯度相同，都等于"全部回答 token 的交叉熵平均"（独立算出的参考）。"""
    batch = uneven_sft_batch()
    reference = reference_gradient(batch)
    one_batch = accumulated_gradient([batch], language_model_loss, supervised_tokens)
    two_micro = accumulated_gradient(split(batch, [4, 4]), language_model_loss, supervised_tokens)
    uneven_micro = accumulated_gradient(split(batch, [1, 5, 2]), language_model_loss, supervised_tokens)
    for grad in (one_batch, two_micro, uneven_micro):
        assert torch.allclose(grad, reference, rtol=1e-4, atol=1e-7), (grad - reference).abs().max()
    mean_of_means = accumulated_gradient(split(batch, [4, 4]), language_model_loss, None)  # 旧做法：各 micro-batch 等权
    assert (mean_of_means - reference).abs().max() > 100 * (two_micro - reference).abs().max()  # 这份数据分得出两种做法


def test_a_micro_batch_without_supervised_tokens_adds_nothing():
    batch = uneven_sft_batch()
    empty = {"input_ids": batch["input_ids"][:2], "labels": torch.full_like(batch["labels"][:2], -100)}
    with_empty = accumulated_gradient([batch, empty], language_model_loss, supervised_tokens)
    assert torch.equal(with_empty, accumulated_gradient([batch], language_model_loss, supervised_tokens))


def test_dpo_accumulation_averages_over_pairs():
    """DPO 的损失按偏好对平均：2 对 + 6 对累积 = 8 对一起算。"""
    chosen, rejected = uneven_sft_batch(seed=1), uneven_sft_batch(seed=2)
    batch = {"chosen_ids": chosen["input_ids"], "chosen_labels": chosen["labels"],
             "rejected_ids": rejected["input_ids"], "rejected_labels": rejected["labels"]}
    step = make_dpo_step(tiny_model(seed=5).requires_grad_(False), beta=0.5)  # 参考模型与策略不同，loss 不在 σ(0) 上
    together = accumulated_gradient([batch], step, preference_pairs)
    accumulated = accumulated_gradient(split(batch, [2, 6]), step, preference_pairs)
    assert torch.allclose(accumulated, together, rtol=1e-4, atol=1e-7), (accumulated - together).abs().max()


def test_atomic_save_keeps_the_original_when_the_read_back_fails(tmp_path):
    path = tmp_path / "state.pth"
    atomic_save({"step": 1}, path)
    original = path.read_bytes()
    with pytest.raises(CheckpointError, match="读回校验失败"):
        atomic_save({"step": 2}, path, lambda saved, back: False)
    assert path.read_bytes() == original and sorted(p.name for p in tmp_path.iterdir()) == ["state.pth"]


def test_atomic_save_survives_an_unreadable_temporary_file(tmp_path, monkeypatch):
    path = tmp_path / "state.pth"
    atomic_save({"step": 1}, path)
    original = path.read_bytes()

    def broken_load(*args, **kwargs):
        raise EOFError("truncated")

    monkeypatch.setattr(torch, "load", broken_load)
    with pytest.raises(CheckpointError):
        atomic_save({"step": 2}, path)
    assert path.read_bytes() == original and sorted(p.name for p in tmp_path.iterdir()) == ["state.pth"]
