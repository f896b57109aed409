"""Grouping text batches by length: the Trainer on SST-2's training phrases with
`group_by_length=True` against the same Trainer with shuffled batches, interleaved; the
ratio is the median of the per-round ratios.

The job is `sst2-fast`'s model and data (BiLSTM, embeddings 128, hidden 192, words and
their subword n-grams, batch 64), `--steps` optimizer steps per run. From the project root:

    python benchmarks/length_groups.py --data-dir ../shared/data/sst2 --repeats 5
"""

from __future__ import annotations

import argparse

import torch
from common import DEFAULT_DATA, interleaved, median, paired_ratio

from torchsmith import Trainer
from torchsmith.data.order import BatchOrder
from torchsmith.data.text import Subwords, WordTokenizer, load_sst2
from torchsmith.models.text_classifiers import BiLSTMClassifier


def padding_share(lengths: torch.Tensor, order: BatchOrder) -> float:
    """Padded positions / all positions over one epoch's batches."""
    real = padded = 0
    for batch in order.epoch_batches(0):
        real += int(lengths[batch].sum())
        padded += len(batch) * int(lengths[batch].max())
    return 1 - real / padded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA / "sst2"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    data = load_sst2(args.data_dir, subwords=Subwords(buckets=20000))
    tokenizer = WordTokenizer.from_state_dict(data.info.preprocessing["tokenizer"])

    def run(grouped: bool) -> float:
        torch.manual_seed(0)
        model = BiLSTMClassifier(tokenizer.num_embeddings, 2, embed_dim=128, hidden_dim=192, dropout=0.4)
        trainer = Trainer(
            model,
            loss="cross_entropy",
            optimizer=torch.optim.AdamW(model.parameters(), lr=3e-3, fused=True),
            max_steps=args.steps,
            batch_size=64,
            group_by_length=grouped,
            progress="none",
        )
        trainer.fit(data.train)
        return trainer.state.last_loss

    times = interleaved({"grouped": lambda: run(True), "shuffled": lambda: run(False)}, args.repeats)
    lengths = data.train.lengths
    orders = {"grouped": BatchOrder(len(lengths), 64, lengths=lengths), "shuffled": BatchOrder(len(lengths), 64)}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {args.repeats} repeats")
    for name in ("grouped", "shuffled"):
        share = padding_share(lengths, orders[name])
        print(f"{name}: {median(times[name]):.2f} s for {args.steps} steps, {share:.0%} of positions padding")
    speedup = 1 / paired_ratio(times, "grouped", "shuffled")
    print(f"speed-up of grouping by length (shuffled / grouped) = {speedup:.2f}x")


if __name__ == "__main__":
    main()
