"""奖励模型：MiniMind 主干 + 标量头，在成对偏好数据上用 Bradley–Terry 损失训练（InstructGPT 的 RM，Ouyang et al. 2022）。

    python trainer/train_reward.py --quick        # dataset/samples/rm_pairs.jsonl 的任务偏好对 → out/reward_128.pth
    python trainer/train_reward.py               # 默认数据 dataset/samples/dpo.jsonl（换成 MiniMind 的 dpo.jsonl 即可）
    python trainer/train_grpo.py --quick --reward_model_path reward --correct_weight 0   # 用它给 RL 打分

Bradley–Terry：P(chosen ≻ rejected) = σ(s_c − s_r)，损失 −log σ(s_c − s_r)；分数 s 取对话最后一个 token 处标量头的输出。
数据与 DPO 相同（{"chosen": [...], "rejected": [...]}）；每 --holdout_every 对留一对不训练，作为留出集，
开始时与每 --eval_interval 步记留出集的成对准确率（s_c > s_r 的比例，eval_pair_accuracy）——随机猜是 0.5。
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils.data import Subset  # noqa: E402

from dataset.lm_dataset import DPODataset  # noqa: E402
from trainer.rl.value_head import ScalarHeadModel  # noqa: E402
from trainer.trainer_utils import (  # noqa: E402
    SAMPLES_DIR, Runtime, build_model, build_parser, load_tokenizer_or_exit, parse_args, run_main, save_weights,
    seed_everything, train,
)

# --quick：从随机初始化开始（不依赖别的阶段），用可验证任务的偏好对（chosen 答对、rejected 是典型错误；
# dataset/make_rl_samples.py 生成）：对错由程序定义，留出对的准确率有意义，960 对训练、240 对留出
QUICK = dict(from_weight="none", data_path=SAMPLES_DIR / "rm_pairs.jsonl", max_seq_len=64, batch_size=16, epochs=2,
             learning_rate=1e-3, eval_interval=15)


def pair_scores(model, batch, pad_id: int):
    """一次前向算 chosen 与 rejected 的分数：各 (B,)。"""
    ids = torch.cat([batch["chosen_ids"], batch["rejected_ids"]])  # (2B, T)，右 padding
    return model.sequence_score(ids, (ids != pad_id).long()).chunk(2)


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    return -F.logsigmoid(chosen - rejected).mean()


def make_reward_step(pad_id: int):
    def compute_loss(model, batch):
        ids = torch.cat([batch["chosen_ids"], batch["rejected_ids"]])
        mask = (ids != pad_id).long()
        values = model(ids, mask)  # (2B, T)：经过 DDP 的前向，梯度才会同步
        last = (torch.arange(ids.size(1), device=ids.device) * mask).argmax(dim=1)
        chosen, rejected = values.gather(1, last[:, None]).squeeze(1).chunk(2)
        return bradley_terry_loss(chosen, rejected), {"pair_accuracy": (chosen > rejected).float().mean().item(),
                                                      "margin": (chosen - rejected).mean().item()}
    return compute_loss


def make_pair_evaluator(model, dataset, pad_id: int, batch_size: int = 64):
    @torch.no_grad()
    def evaluate(step: int) -> dict:
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        correct = []
        for start in range(0, len(dataset), batch_size):
            items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
            batch = {k: torch.stack([x[k] for x in items]).to(device) for k in ("chosen_ids", "rejected_ids")}
            chosen, rejected = pair_scores(model, batch, pad_id)
            correct += ((chosen > rejected).float() + 0.5 * (chosen == rejected).float()).tolist()  # 平分算半对
        model.train(was_training)
        return {"eval_pair_accuracy": sum(correct) / len(correct), "eval_n": len(correct)}
    return evaluate


def split(n: int, holdout_every: int):
    held = [i for i in range(n) if i % holdout_every == holdout_every - 1]
    return [i for i in range(n) if i % holdout_every != holdout_every - 1], held


def build(argv=None):
    parser = build_parser("MiniMind 奖励模型（Bradley–Terry）", SAMPLES_DIR / "dpo.jsonl", save_weight="reward",
                          learning_rate=1e-5, epochs=1, batch_size=8, max_seq_len=512, from_weight="full_sft")
    parser.add_argument("--holdout_every", type=int, default=5, help="每几对留 1 对作留出集（不训练）")
    parser.add_argument("--eval_interval", type=int, default=100, help="每多少步评测一次留出集的成对准确率")
    args = parse_args(parser, argv, quick_overrides=QUICK)
    if args.holdout_every < 2 or args.eval_interval <= 0:
        parser.error("需要 --holdout_every >= 2 且 --eval_interval > 0")
    return args


def run(args):
    runtime = Runtime(args)
    seed_everything(args.seed)
    tokenizer = load_tokenizer_or_exit(args)
    pairs = DPODataset(args.data_path, tokenizer, args.max_seq_len, args.skip_bad_lines)
    train_idx, held_idx = split(len(pairs), args.holdout_every)
    model = ScalarHeadModel.from_causal_lm(build_model(args, tokenizer)).to(runtime.device)
    if runtime.is_main:
        print(f"数据 {args.data_path}：训练 {len(train_idx)} 对、留出 {len(held_idx)} 对；主干从 {args.from_weight} 开始")
    pad = tokenizer.pad_token_id
    train(args, runtime, model, Subset(pairs, train_idx), make_reward_step(pad), desc="reward",
          save=save_weights, evaluate=make_pair_evaluator(model, Subset(pairs, held_idx), pad))
    runtime.close()


def main(argv=None):
    run(build(argv))


if __name__ == "__main__":
    run_main(main)
