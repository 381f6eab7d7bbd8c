"""test_docs 的 --help 快速通道：先导入一次 torch 等第三方重依赖，再为每个脚本 fork 一个子进程跑 `--help`。

逐个起 `python script.py --help` 时，每个进程都要重新导入 torch（2 核 CPU 上每次约 2 秒，上百个脚本就是几分钟）；
fork 出的子进程继承已经导入的第三方模块，只剩脚本自己的那部分导入。子进程彼此独立（sys.path、sys.modules、
工作目录互不影响），并按解释器的规矩设置 sys.argv、sys.path[0] 和 __main__，所以结果与直接运行相同。
只预先导入第三方库，不导入仓库里的包：脚本能不能自己找到仓库根目录（从任意目录运行）仍然照常检验。
只在有 fork 的系统上用（Linux/macOS）；别处 test_docs 退回逐个起子进程。

协议：stdin 读一个 JSON 列表 [{"script": 路径或 null, "module": 模块名或 null, "cwd": 目录}, ...]，
stdout 写同样长度的 JSON 列表 [[退出码, 输出], ...]（超时的退出码是 -1）。
"""
import importlib
import json
import os
import runpy
import signal
import sys
import tempfile
import time
import traceback

PRELOAD = ("torch", "numpy", "matplotlib.pyplot", "tqdm")
TIMEOUT_S = 60
PARALLEL = 2


def run_child(request: dict, output_path: str):
    """在 fork 出的子进程里：输出重定向到文件，像 `python script --help` / `python -m module --help` 那样运行，然后退出。"""
    code = 1
    try:
        fd = os.open(output_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.chdir(request["cwd"])
        if request["script"]:
            script = request["script"]
            sys.argv = [script, "--help"]
            sys.path[0] = os.path.dirname(os.path.abspath(script))  # 解释器把脚本所在目录放在最前
            runpy.run_path(script, run_name="__main__")
        else:
            sys.argv = [request["module"], "--help"]
            sys.path[0] = os.getcwd()  # python -m 把当前目录放在最前
            runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exit_:
        if exit_.code is None or isinstance(exit_.code, int):
            code = exit_.code or 0
        else:  # sys.exit("消息")：解释器把消息打到 stderr、退出码 1
            print(exit_.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def run_all(requests: list) -> list:
    results = [None] * len(requests)
    pending = list(enumerate(requests))
    running = {}  # pid -> (序号, 开始时间, 输出文件)
    with tempfile.TemporaryDirectory() as tmp:
        while pending or running:
            while pending and len(running) < PARALLEL:
                index, request = pending.pop(0)
                output_path = os.path.join(tmp, f"{index}.out")
                sys.stdout.flush()
                sys.stderr.flush()
                pid = os.fork()
                if pid == 0:
                    run_child(request, output_path)
                running[pid] = (index, time.monotonic(), output_path)
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                for child, (index, started, _) in running.items():
                    if time.monotonic() - started > TIMEOUT_S:
                        os.kill(child, signal.SIGKILL)
                        results[index] = (-1, f"--help did not finish within {TIMEOUT_S} s")
                time.sleep(0.01)
                continue
            index, _, output_path = running.pop(pid)
            if results[index] is None:
                with open(output_path, encoding="utf-8", errors="replace") as f:
                    results[index] = (os.waitstatus_to_exitcode(status), f.read())
    return results


def main():
    for name in PRELOAD:
        importlib.import_module(name)
    requests = json.load(sys.stdin)
    json.dump(run_all(requests), sys.stdout)


if __name__ == "__main__":
    main()
