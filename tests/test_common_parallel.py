"""modules/common/parallel.py：按种子并行的单线程子进程与依次运行逐位相同、保持顺序、错误一行说明且不卡住。

不训练模型：子进程里跑的是几步很小的确定性 torch 计算。用到子进程的测试各起一个 2 进程的池（每个子进程要重新导入
torch，2 核 CPU 上约几秒）。"""
import argparse
import io
import os
import time
from concurrent.futures.process import BrokenProcessPool

import pytest
import torch

from modules.common import parallel
from modules.common.parallel import _SeedPrefixedLines, add_workers_argument, map_seeds, resolve_workers


def tiny_training(seed: int, steps: int) -> dict:
    """几步 SGD：矩阵乘法、归约、反向传播——线程数不同时这类运算的求和顺序可能不同，单线程时是确定的。"""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.GELU(), torch.nn.Linear(128, 8))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x, y = torch.randn(256, 64), torch.randint(8, (256,))
    losses = []
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    print(f"seed {seed} trained")
    return {"seed": seed, "losses": losses, "state": model.state_dict(), "pid": os.getpid(),
            "threads": torch.get_num_threads(), "omp_env": os.environ.get("OMP_NUM_THREADS")}


def fail_or_sleep(seed: int) -> None:
    if seed == 1:
        raise ValueError(f"seed {seed} 的配置不对")
    time.sleep(120)  # 另一个种子"还在训练"：出错后它必须被终止，而不是等它跑完


def sleep_seconds(seed: int) -> int:
    time.sleep(seed)
    return seed


def die_abruptly(seed: int) -> None:
    os._exit(3)  # 像被系统杀掉（例如内存不够）：没有异常可以传回父进程


def exit_with_message(seed: int) -> None:
    raise SystemExit(f"width=16（seed={seed}）在第 3 步发散；请减小学习率后重试")


@pytest.fixture
def single_thread():
    """依次运行的基准用单线程（参考结果就是 OMP_NUM_THREADS=1 生成的），测完恢复。"""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_workers_match_sequential_single_thread_bit_for_bit_and_keep_seed_order(single_thread, capfd):
    seeds = [7, 1, 42]  # 故意不按大小排：结果必须按给出的顺序返回
    omp_before = os.environ.get("OMP_NUM_THREADS")
    sequential = map_seeds(tiny_training, seeds, 1, 5)
    parallel_runs = map_seeds(tiny_training, seeds, 2, 5)

    assert [r["seed"] for r in parallel_runs] == seeds
    for seq, par in zip(sequential, parallel_runs):
        assert seq["losses"] == par["losses"]  # 浮点数逐位相等，不是近似
        assert all(torch.equal(seq["state"][k], par["state"][k]) for k in seq["state"])
    assert len({r["seed"] for r in sequential}) == 3 and sequential[0]["losses"] != sequential[1]["losses"]
    # 真的在子进程里跑：不是父进程，最多 2 个不同的进程；子进程只有一个线程
    pids = {r["pid"] for r in parallel_runs}
    assert os.getpid() not in pids and 1 <= len(pids) <= 2
    assert all(r["threads"] == 1 and r["omp_env"] == "1" for r in parallel_runs)
    assert os.environ.get("OMP_NUM_THREADS") == omp_before  # 父进程的环境变量恢复原样
    out = capfd.readouterr().out
    # 子进程的输出整行加种子前缀；父进程每完成一个种子打一行
    assert all(f"[seed {s}] seed {s} trained" in out for s in seeds), out
    assert "3 个种子分给 2 个单线程子进程" in out and all(f"种子 {s} 完成" in out for s in seeds), out


def test_progress_is_printed_as_each_seed_finishes_not_at_the_end(capsys):
    assert map_seeds(sleep_seconds, [5, 0], 2) == [5, 0]  # 第一个种子睡 5 s，第二个立刻完成
    out = capsys.readouterr().out
    assert out.index("种子 0 完成") < out.index("种子 5 完成"), out


def announce_run(run: tuple) -> int:
    print("trained")
    return run[1] - run[0]


def test_seed_replicate_runs_are_named_by_both_seeds(capfd):
    # 复制训练把 (主种子, 复制种子) 交给 map_seeds（04-feedforward 实验 3）：进度行与前缀要说出两者，而不是"6 个种子"
    assert map_seeds(announce_run, [(42, 1042), (43, 1043)], 2) == [1000, 1000]
    out = capfd.readouterr().out
    assert "2 个运行（种子 × 复制）分给 2 个单线程子进程" in out, out
    assert all(f"[seed {s}/{s + 1000}] trained" in out and f"种子 {s}（复制 {s + 1000}） 完成" in out for s in (42, 43)), out


def announce_part(run: tuple) -> str:
    print("trained")
    return f"{run[1]}@{run[0]}"


def test_seed_part_runs_are_named_by_seed_and_part(capfd):
    # 一个种子的活按实验的几部分拆开（minimind2→3 实验 3）：(种子, 部分名)，名字里是部分名而不是"复制"
    assert map_seeds(announce_part, [(42, "memory"), (42, "curve")], 2) == ["memory@42", "curve@42"]
    out = capfd.readouterr().out
    assert "2 个运行（种子 × 部分）分给 2 个单线程子进程" in out, out
    assert all(f"[seed 42/{p}] trained" in out and f"种子 42（{p}） 完成" in out for p in ("memory", "curve")), out
    assert "复制" not in out, out


def test_one_worker_runs_in_process_without_spawning(monkeypatch):
    def no_pool(*args, **kwargs):
        raise AssertionError("workers = 1 不应该起子进程")

    monkeypatch.setattr(parallel, "ProcessPoolExecutor", no_pool)
    runs = map_seeds(tiny_training, [3, 4], 1, 2)
    assert [r["seed"] for r in runs] == [3, 4] and {r["pid"] for r in runs} == {os.getpid()}
    assert map_seeds(tiny_training, [5], 3, 2)[0]["pid"] == os.getpid()  # 只有一个种子时也不起子进程


def test_worker_error_surfaces_in_the_parent_and_stops_the_others():
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="seed 1 的配置不对"):
        map_seeds(fail_or_sleep, [2, 1], 2)
    assert time.perf_counter() - t0 < 60  # 另一个子进程睡 120 s：被终止了，没有等它


def test_worker_system_exit_stays_a_one_line_message():
    # 两个子进程都会退出，先结束的那个的说明被抛出（哪个先结束取决于调度）
    with pytest.raises(SystemExit, match=r"^width=16（seed=[56]）在第 3 步发散；请减小学习率后重试$"):
        map_seeds(exit_with_message, [5, 6], 2)


def test_a_worker_that_dies_raises_instead_of_hanging():
    with pytest.raises(BrokenProcessPool):
        map_seeds(die_abruptly, [1, 2], 2)


def test_function_that_cannot_be_pickled_is_one_clear_error():
    with pytest.raises(TypeError, match="模块顶层的函数"):
        map_seeds(lambda seed: seed, [1, 2], 2)


def test_prefixed_lines_keep_whole_lines_and_drop_redrawn_progress():
    sink = io.StringIO()
    stream = _SeedPrefixedLines(sink)
    stream.prefix = "[seed 43] "
    stream.write("\rwidth=16:  10%|#")
    stream.write("\rwidth=16:  20%|##")
    stream.write("\r" + " " * 20 + "\r")  # tqdm(leave=False) 结束时擦掉进度条
    stream.write("第 7 步 loss 变成 nan，")
    stream.write("训练发散，停止。\nsecond line\n")
    assert sink.getvalue() == "[seed 43] 第 7 步 loss 变成 nan，训练发散，停止。\n[seed 43] second line\n"


def test_resolve_workers_defaults_bounds_and_devices(capsys):
    parser = argparse.ArgumentParser()
    add_workers_argument(parser)
    unset = parser.parse_args([]).workers
    assert "--workers" in parser.format_help()
    assert resolve_workers(unset, quick=True, device="cpu", n_seeds=1) == 1
    assert resolve_workers(unset, quick=False, device="cpu", n_seeds=3) == min(3, parallel.usable_cpus())
    assert resolve_workers(8, quick=False, device="cpu", n_seeds=3) == 3  # 不多于种子数
    assert resolve_workers(2, quick=True, device="cpu", n_seeds=1) == 1
    assert resolve_workers(2, quick=False, device=torch.device("cpu"), n_seeds=3) == 2
    assert resolve_workers(unset, quick=False, device="cuda", n_seeds=3) == 1
    assert capsys.readouterr().out == ""
    assert resolve_workers(3, quick=False, device="mps", n_seeds=3) == 1
    assert "只用于 CPU" in capsys.readouterr().out


def test_fewer_than_one_worker_is_one_clear_line():
    with pytest.raises(SystemExit, match=r"--workers 必须 >= 1（收到 0）"):
        resolve_workers(0, quick=False, device="cpu", n_seeds=3)
    with pytest.raises(ValueError, match="workers 必须 >= 1"):
        map_seeds(tiny_training, [1], 0, 1)
