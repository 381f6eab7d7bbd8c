"""测试用的本地回环 HTTP 服务器：在 127.0.0.1 的随机端口上提供一个目录，支持 Range（206 + Content-Range）。

可模拟的故障：
- truncate_after=K：前 truncate_count 个响应只发 K 字节就关闭连接（Content-Length 仍是完整长度）。
- ignore_range=True：无视 Range 头，总是 200 返回整个文件（测试"续传被拒、从零重下"）。
- request_log=[]：每个请求追加 {"path": ..., "range": Range 头或 None}，用来数请求、查有没有续传。

用法：
    with serve_directory(tmp_path, truncate_after=1000) as base_url:
        requests.get(f"{base_url}/a/b.txt")
"""
import contextlib
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit


def _make_handler(root: Path, state: dict):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format, *args):  # 测试输出里不要访问日志
            pass

        def do_GET(self):
            range_header = self.headers.get("Range")
            with state["lock"]:
                if state["request_log"] is not None:
                    state["request_log"].append({"path": self.path, "range": range_header})
                truncate = state["truncate_after"] is not None and state["truncations_left"] > 0
                if truncate:
                    state["truncations_left"] -= 1

            path = (root / unquote(urlsplit(self.path).path).lstrip("/")).resolve()
            if root not in path.parents or not path.is_file():
                self.send_error(404)
                return
            data = path.read_bytes()

            match = re.fullmatch(r"bytes=(\d+)-(\d*)", range_header or "")
            if match and not state["ignore_range"]:
                first = int(match.group(1))
                last = min(int(match.group(2)), len(data) - 1) if match.group(2) else len(data) - 1
                if first >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = data[first : last + 1]
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {first}-{last}/{len(data)}")
            else:
                body = data
                self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            if truncate:
                self.wfile.write(body[: state["truncate_after"]])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            self.wfile.write(body)

    return Handler


@contextlib.contextmanager
def serve_directory(path, *, truncate_after=None, truncate_count=1, ignore_range=False, request_log=None):
    """在后台线程里提供 path 目录，yield 基础 URL（如 "http://127.0.0.1:54321"），退出时关闭。"""
    state = {
        "lock": threading.Lock(),
        "truncate_after": truncate_after,
        "truncations_left": truncate_count,
        "ignore_range": ignore_range,
        "request_log": request_log,
    }
    with serve_with_handler(_make_handler(Path(path).resolve(), state)) as base_url:
        yield base_url


@contextlib.contextmanager
def serve_with_handler(handler):
    """在后台线程里用给定的请求处理类提供服务（127.0.0.1 的随机端口），yield 基础 URL，退出时关闭。"""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def unused_port_url() -> str:
    """一个此刻没人监听的本地端口的 URL（模拟服务器宕机 / 离线）。"""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"
