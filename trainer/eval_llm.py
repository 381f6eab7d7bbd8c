"""和训练好的模型对话：流式输出（经 KV cache 逐 token 生成），或用 --prompt 只回答一次。

    python trainer/eval_llm.py --quick --prompt "中国的首都是哪里？"     # --quick 训练出的 SFT 小模型
    python trainer/eval_llm.py --weight full_sft                         # out/full_sft_512.pth，交互式
    python trainer/eval_llm.py --weights MiniMind2.pth --tokenizer path/to/minimind_tokenizer

--weights 可以是 MiniMind 官方发布的 .pth（同目录没有 .json 配置时，按 --hidden_size 等参数建模型）。
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from model.checkpoint import CheckpointError, load_pretrained  # noqa: E402
from model.model_minimind import MiniMindConfig  # noqa: E402
from model.tokenization import TokenizerError, find_structure_literal, load_tokenizer  # noqa: E402
from modules.common.device import get_device  # noqa: E402
from trainer.trainer_utils import QUICK_OVERRIDES, REPO_ROOT, fail  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="与 MiniMind 对话（流式输出）", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--quick", action="store_true", help="加载 --quick 训练出的小模型（hidden_size=128）")
    p.add_argument("--weights", type=Path, default=None, help="权重 .pth 路径（优先于 --weight）")
    p.add_argument("--weight", default="full_sft", help="<save_dir> 里的权重名前缀：pretrain / full_sft / dpo …")
    p.add_argument("--save_dir", type=Path, default=REPO_ROOT / "out")
    p.add_argument("--tokenizer", type=Path, default=None, help="分词器目录（默认 model/tokenizer/）")
    p.add_argument("--family", choices=["minimind2", "minimind3"], default="minimind2")
    p.add_argument("--hidden_size", type=int, default=512)
    p.add_argument("--num_hidden_layers", type=int, default=8)
    p.add_argument("--use_moe", type=int, choices=[0, 1], default=0)
    p.add_argument("--prompt", default=None, help="只回答这一句然后退出；不给则进入交互模式")
    p.add_argument("--system", default=None, help="可选的系统提示")
    p.add_argument("--max_new_tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.85, help="<=0 表示贪心解码")
    p.add_argument("--top_p", type=float, default=0.85)
    p.add_argument("--repetition_penalty", type=float, default=1.0)
    p.add_argument("--raw", action="store_true", help="不套对话模板，直接续写（适合只做过预训练的模型）")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.quick and args.hidden_size == p.get_default("hidden_size"):
        args.hidden_size, args.num_hidden_layers = QUICK_OVERRIDES["hidden_size"], QUICK_OVERRIDES["num_hidden_layers"]
    if args.max_new_tokens <= 0:
        p.error(f"--max_new_tokens 必须是正整数，收到 {args.max_new_tokens}")
    return args


def load_model(args, tokenizer):
    path = args.weights or args.save_dir / f"{args.weight}_{args.hidden_size}{'_moe' if args.use_moe else ''}.pth"
    config_file = path.with_suffix(".json")
    if config_file.is_file():
        config = MiniMindConfig.load(config_file)
    else:
        config = MiniMindConfig(family=args.family, hidden_size=args.hidden_size,
                                num_hidden_layers=args.num_hidden_layers, use_moe=bool(args.use_moe),
                                vocab_size=tokenizer.vocab_size)
    if config.vocab_size != tokenizer.vocab_size:
        fail(f"权重 {path} 的词表大小是 {config.vocab_size}，分词器 {tokenizer.source} 是 {tokenizer.vocab_size}："
             "请用训练这份权重时的分词器（--tokenizer）")
    try:
        return load_pretrained(path, config)
    except CheckpointError as e:
        fail(str(e))


def stream_reply(model, tokenizer, prompt_ids, args) -> str:
    """逐 token 生成并打印；多字节字符（如中文）可能跨 token，凑齐了再打印。"""
    new_ids, printed = [], ""

    def on_token(token):  # token: (1,)
        nonlocal printed
        new_ids.append(token.item())
        text = tokenizer.decode(new_ids)
        if not text.endswith("\ufffd"):  # 还差字节的半个字符先不打印
            print(text[len(printed):], end="", flush=True)
            printed = text

    sample = args.temperature > 0
    model.generate(torch.tensor([prompt_ids], device=next(model.parameters()).device),
                   max_new_tokens=args.max_new_tokens, do_sample=sample,
                   temperature=args.temperature if sample else 1.0, top_p=args.top_p if sample else None,
                   repetition_penalty=args.repetition_penalty, eos_token_id=tokenizer.eos_token_id,
                   streamer=on_token)
    print()
    return tokenizer.decode(new_ids)


def main(argv=None):
    args = parse_args(argv)
    try:
        tokenizer = load_tokenizer(args.tokenizer)
        device = get_device(args.device)
    except (TokenizerError, ValueError) as e:
        fail(str(e))
    model = load_model(args, tokenizer).to(device).eval()
    torch.manual_seed(args.seed)
    history = [{"role": "system", "content": args.system}] if args.system else []
    prompts = [args.prompt] if args.prompt is not None else None
    if prompts is None:
        print("输入问题后回车；空行或 Ctrl-D 退出。")
    while True:
        if prompts is not None:
            if not prompts:
                break
            question = prompts.pop()
            print(f"用户：{question}")
        else:
            try:
                question = input("用户：").strip()
            except EOFError:
                break
            if not question:
                break
        literal = find_structure_literal(question)
        if literal is not None and not args.raw:  # 否则它会被编码成真正的结构 token，提前结束用户回合
            message = f"输入里有特殊 token 的字面量 {literal}：它会被当成对话结构（模板注入）。请去掉后再问"
            if prompts is not None:
                fail(message)
            print(message)
            continue
        if args.raw:
            prompt_ids = [tokenizer.bos_token_id] + tokenizer.encode(question)
        else:
            messages = history + [{"role": "user", "content": question}]
            prompt_ids = tokenizer.encode(tokenizer.apply_chat_template(messages, add_generation_prompt=True))
        print("MiniMind：", end="", flush=True)
        reply = stream_reply(model, tokenizer, prompt_ids, args)
        if not args.raw and prompts is None:  # 交互模式保留多轮上下文
            history += [{"role": "user", "content": question}, {"role": "assistant", "content": reply}]


if __name__ == "__main__":
    main()
