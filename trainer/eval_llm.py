"""和训练好的模型对话：流式输出（经 KV cache 逐 token 生成），或用 --prompt 只回答一次。

    python trainer/eval_llm.py --quick --prompt "中国的首都是哪里？"     # --quick 训练出的 SFT 小模型
    python trainer/eval_llm.py --weight full_sft                         # out/full_sft_512.pth，交互式
    python trainer/eval_llm.py --weights MiniMind2.pth --tokenizer path/to/minimind_tokenizer
    python trainer/eval_llm.py --quick --lora_weight out/lora_identity_128.pth    # 基座 + train_lora.py 的适配器
    python trainer/eval_llm.py --weights MiniMind2.pth --hidden_size 768 --num_hidden_layers 16 \
        --draft_weights MiniMind2-Small.pth    # 投机解码：26M 草稿 + 104M 目标，回答后打印接受率 α

--weights 可以是 MiniMind 官方发布的 .pth（同目录没有 .json 配置时，按 --family、--hidden_size 等参数建模型），
也可以是 scripts/convert_model.py 转出的 transformers 文件夹。选模型的参数与 scripts/serve_openai_api.py 相同，
都由 trainer/model_loading.py 提供。
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from model.tokenization import find_structure_literal  # noqa: E402
from trainer.model_loading import (ModelLoadError, add_draft_args, add_model_args, load_chat_model,  # noqa: E402
                                   load_draft_model, resolve_model_args)
from trainer.trainer_utils import fail  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="与 MiniMind 对话（流式输出）", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_model_args(p)  # --quick --weights --weight --save_dir --tokenizer --family ... --lora_weight（与 API 服务共用）
    p.add_argument("--prompt", default=None, help="只回答这一句然后退出；不给则进入交互模式")
    p.add_argument("--system", default=None, help="可选的系统提示")
    p.add_argument("--max_new_tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.85, help="<=0 表示贪心解码")
    p.add_argument("--top_p", type=float, default=0.85)
    p.add_argument("--repetition_penalty", type=float, default=1.0)
    p.add_argument("--raw", action="store_true", help="不套对话模板，直接续写（适合只做过预训练的模型）")
    p.add_argument("--seed", type=int, default=0)
    add_draft_args(p)  # --draft_weights 等：投机解码，每次回答后打印接受率 α
    args = p.parse_args(argv)
    if args.max_new_tokens <= 0:
        p.error(f"--max_new_tokens 必须是正整数，收到 {args.max_new_tokens}")
    if args.draft_weights is not None and args.repetition_penalty != 1.0:
        p.error("--draft_weights（投机解码）不支持 --repetition_penalty：请去掉其中一个")
    try:
        return resolve_model_args(args)
    except ModelLoadError as e:
        p.error(str(e))


def stream_reply(model, tokenizer, prompt_ids, args, draft=None) -> str:
    """逐 token 生成并打印；多字节字符（如中文）可能跨 token，凑齐了再打印。
    给了草稿模型时走投机解码，回答之后再打印一行接受率 α 与每次目标前向产出的 token 数。"""
    new_ids, printed = [], ""

    def on_token(token):  # token: (1,)
        nonlocal printed
        new_ids.append(token.item())
        text = tokenizer.decode(new_ids)
        if not text.endswith("\ufffd"):  # 还差字节的半个字符先不打印
            print(text[len(printed):], end="", flush=True)
            printed = text

    sample = args.temperature > 0
    _, stats = model.generate(torch.tensor([prompt_ids], device=next(model.parameters()).device),
                              max_new_tokens=args.max_new_tokens, do_sample=sample,
                              temperature=args.temperature if sample else 1.0, top_p=args.top_p if sample else None,
                              repetition_penalty=args.repetition_penalty, eos_token_id=tokenizer.eos_token_id,
                              streamer=on_token, draft_model=draft, num_draft_tokens=args.num_draft_tokens,
                              return_stats=True)
    print()
    if stats is not None:
        print(f"[{stats.summary()}]")
    return tokenizer.decode(new_ids)


def main(argv=None):
    args = parse_args(argv)
    try:
        model, tokenizer = load_chat_model(args)
        draft = load_draft_model(args, model, tokenizer) if args.draft_weights is not None else None
    except ModelLoadError as e:
        fail(str(e))
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
        reply = stream_reply(model, tokenizer, prompt_ids, args, draft)
        if not args.raw and prompts is None:  # 交互模式保留多轮上下文
            history += [{"role": "user", "content": question}, {"role": "assistant", "content": reply}]


if __name__ == "__main__":
    main()
