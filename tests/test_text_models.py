"""Text models: causality, generation, padding invariance and that they can learn."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from torchsmith.data.text import CharWindows
from torchsmith.errors import UsageError
from torchsmith.models.text import CharGPT, CharLSTM, generate
from torchsmith.models.text_classifiers import BagOfWords, BiLSTMClassifier, TextCNN, TokenEmbedding

VOCAB = 23


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread, and the test machine's cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def char_models() -> list[torch.nn.Module]:
    torch.manual_seed(0)
    return [
        CharGPT(VOCAB, block_size=32, num_layers=2, num_heads=2, embed_dim=32),
        CharLSTM(VOCAB, embed_dim=16, hidden_dim=32, num_layers=2, dropout=0.0),
        CharGPT(VOCAB, block_size=32, num_layers=2, num_heads=2, embed_dim=32, positions="rotary"),
    ]


@pytest.mark.parametrize("index", [0, 1, 2], ids=["CharGPT", "CharLSTM", "CharGPT-rotary"])
def test_changing_a_later_token_never_changes_earlier_logits(index: int) -> None:
    model = char_models()[index].eval()
    ids = torch.randint(0, VOCAB, (3, 32), generator=torch.Generator().manual_seed(1))
    logits = model(ids)
    assert logits.shape == (3, 32, VOCAB)
    for position in (0, 7, 31):
        changed = ids.clone()
        changed[:, position] = (changed[:, position] + 1) % VOCAB
        new_logits = model(changed)
        torch.testing.assert_close(new_logits[:, :position], logits[:, :position], atol=1e-6, rtol=0)
        # ... and the changed position itself does see its own token.
        assert (new_logits[:, position] - logits[:, position]).abs().max() > 1e-4


def test_gpt_starts_near_uniform_and_ties_head_to_embedding() -> None:
    model = char_models()[0]
    assert model.head.weight is model.token_embedding.weight
    generator = torch.Generator().manual_seed(2)
    ids = torch.randint(0, VOCAB, (8, 32), generator=generator)
    # Targets unrelated to the inputs: with a tied head, a token's own logit starts high.
    targets = torch.randint(0, VOCAB, (8 * 32,), generator=generator)
    loss = F.cross_entropy(model(ids).view(-1, VOCAB), targets)
    assert abs(loss.item() - math.log(VOCAB)) < 0.05
    with pytest.raises(UsageError, match="block_size is 32"):
        model(torch.zeros(1, 33, dtype=torch.long))
    with pytest.raises(UsageError, match="multiple of num_heads"):
        CharGPT(VOCAB, block_size=8, num_layers=1, num_heads=3, embed_dim=32)


@pytest.mark.parametrize("index", [0, 1], ids=["CharGPT", "CharLSTM"])
def test_generation_is_deterministic_for_a_seed(index: int) -> None:
    model = char_models()[index]
    model.train()
    prompt = torch.tensor([1, 2, 3])
    first = generate(model, prompt, 40, generator=torch.Generator().manual_seed(7))
    again = generate(model, prompt, 40, generator=torch.Generator().manual_seed(7))
    other = generate(model, prompt, 40, generator=torch.Generator().manual_seed(8))
    assert first.shape == (43,) and torch.equal(first[:3], prompt)
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert model.training  # the model's mode is restored
    top1 = generate(model, prompt.view(1, -1), 5, top_k=1, generator=torch.Generator())
    greedy = generate(model, prompt.view(1, -1), 5, temperature=0)
    assert torch.equal(top1, greedy)


def test_gpt_generation_crops_the_context_to_block_size() -> None:
    model = char_models()[0]
    prompt = torch.randint(0, VOCAB, (2, 50), generator=torch.Generator().manual_seed(3))
    out = generate(model, prompt, 10, top_k=5, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 60) and torch.equal(out[:, :50], prompt)
    with pytest.raises(UsageError, match="temperature"):
        generate(model, prompt, 1, temperature=-1.0)


def classifiers(as_built: bool = False) -> list[torch.nn.Module]:
    torch.manual_seed(0)
    linear = BagOfWords(50, 3, embed_dim=0, pooling="sqrt")
    if not as_built:  # it starts at zero; the padding tests need one whose ids have a say
        torch.nn.init.normal_(linear.embedding.weight)
    return [
        BagOfWords(50, 3, embed_dim=16),
        TextCNN(50, 3, embed_dim=16, num_filters=8, kernel_sizes=(2, 3, 5)),
        BiLSTMClassifier(50, 3, embed_dim=16, hidden_dim=12, num_layers=2),
        linear,
    ]


CLASSIFIERS = {"argvalues": [0, 1, 2, 3], "ids": ["BagOfWords", "TextCNN", "BiLSTM", "linear BagOfWords"]}


def test_sqrt_bag_counts_each_id_once_over_the_root_of_their_number() -> None:
    model = BagOfWords(50, 3, embed_dim=0, pooling="sqrt")
    assert model(torch.tensor([[5, 7, 0]])).abs().max() == 0  # a linear bag starts with no say
    torch.nn.init.normal_(model.embedding.weight)
    with torch.no_grad():
        model.head.bias.copy_(torch.tensor([0.5, -1.0, 2.0]))
    weight, bias = model.embedding.weight.detach(), model.head.bias.detach()
    expected = (weight[5] + weight[7] + weight[9]) / 3**0.5 + bias
    for row in ([5, 7, 9], [9, 5, 7, 5, 5, 0, 0], [[7, 9], [5, 0], [9, 7]]):  # order, repeats, pieces
        torch.testing.assert_close(model(torch.tensor([row])), expected[None], atol=1e-6, rtol=0)
    mean = BagOfWords(50, 3, embed_dim=4)  # the mean counts repeats
    ids = torch.tensor([[5, 5, 5, 7]])
    features = (3 * mean.embedding.weight[5] + mean.embedding.weight[7]) / 4
    torch.testing.assert_close(mean(ids), mean.head(features[None]), atol=1e-6, rtol=0)
    with pytest.raises(UsageError, match="pooling"):
        BagOfWords(50, 3, pooling="max")


@pytest.mark.parametrize("index", **CLASSIFIERS)
def test_extra_padding_does_not_change_classifier_logits(index: int) -> None:
    model = classifiers()[index].eval()
    lengths = torch.tensor([1, 4, 2, 6, 3])
    ids = torch.randint(2, 50, (5, 6), generator=torch.Generator().manual_seed(4))
    ids[torch.arange(6) >= lengths[:, None]] = 0  # pad id 0 after each row's length
    logits = model(ids)
    assert logits.shape == (5, 3)
    padded = torch.cat([ids, torch.zeros(5, 9, dtype=torch.long)], dim=1)
    torch.testing.assert_close(model(padded), logits, atol=1e-6, rtol=0)
    # One row alone gives what it gets in the batch, so other rows' lengths do not leak.
    torch.testing.assert_close(model(ids[1:2, :4]), logits[1:2], atol=1e-6, rtol=0)
    # The tokens do matter.
    changed = ids.clone()
    changed[:, 0] = (changed[:, 0] + 1) % 48 + 2
    assert (model(changed) - logits).abs().max() > 1e-4


@pytest.mark.parametrize("index", **CLASSIFIERS)
def test_classifiers_learn_a_keyword_task(index: int) -> None:
    # Label = whether token 7 occurs anywhere in the row; rows have varied lengths.
    generator = torch.Generator().manual_seed(5)
    ids = torch.randint(8, 50, (512, 12), generator=generator)
    has_key = torch.rand(512, generator=generator) < 0.5
    ids[has_key, torch.randint(0, 6, (int(has_key.sum()),), generator=generator)] = 7
    lengths = torch.randint(6, 13, (512,), generator=generator)
    ids[torch.arange(12) >= lengths[:, None]] = 0
    model = classifiers(as_built=True)[index]
    # The linear bag starts at zero and Adam moves a weight about lr a step: 60 steps need a larger one.
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1 if index == 3 else 2e-2)
    for step in range(60):
        batch = torch.arange(step * 64, step * 64 + 64) % 384
        loss = F.cross_entropy(model(ids[batch]), has_key[batch].long())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.eval()
    accuracy = (model(ids[384:]).argmax(1) == has_key[384:]).float().mean().item()
    assert accuracy > 0.9


def test_char_gpt_learns_a_periodic_text() -> None:
    torch.manual_seed(0)
    tokens = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12] * 200)
    windows = CharWindows(tokens, block_size=16)
    model = CharGPT(13, block_size=16, num_layers=1, num_heads=2, embed_dim=32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for step in range(40):
        x, y = windows.get_batch(torch.arange(32), torch.Generator().manual_seed(step), True)
        loss = F.cross_entropy(model(x).view(-1, 13), y.view(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.5  # from ln 13 = 2.56


def test_gpt_under_bf16_autocast_matches_float32_and_stays_causal() -> None:
    # On the CPU, attention runs in float32 inside bf16 autocast (see CausalSelfAttention).
    model = char_models()[0].eval()
    ids = torch.randint(0, VOCAB, (2, 32), generator=torch.Generator().manual_seed(6))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(ids)
        changed = ids.clone()
        changed[:, 20] = (changed[:, 20] + 1) % VOCAB
        changed_logits = model(changed)
    assert logits.dtype == torch.bfloat16
    torch.testing.assert_close(logits.float(), model(ids), atol=0.05, rtol=0.05)
    torch.testing.assert_close(changed_logits[:, :20], logits[:, :20], atol=0, rtol=0)


def test_rotary_scores_depend_on_the_offset_only() -> None:
    from torchsmith.models.text import rotary_tables, rotate

    generator = torch.Generator().manual_seed(3)
    q, k = torch.randn(1, 1, 1, 16, generator=generator), torch.randn(1, 1, 1, 16, generator=generator)
    rotation = rotary_tables(40, 16, torch.device("cpu"))

    def score(i: int, j: int) -> float:
        return float((rotate(q, rotation[i]) * rotate(k, rotation[j])).sum())

    assert score(3, 1) == pytest.approx(score(30, 28), abs=1e-4)  # same offset, same score
    assert score(3, 1) != pytest.approx(score(3, 2), abs=1e-3)
    assert float(rotate(q, rotation[9]).norm()) == pytest.approx(float(q.norm()), rel=1e-5)  # a rotation
    rotary = CharGPT(VOCAB, block_size=32, num_layers=1, num_heads=2, embed_dim=32, positions="rotary")
    assert rotary.position_embedding is None
    with pytest.raises(UsageError, match="even head size"):
        CharGPT(VOCAB, block_size=8, num_layers=1, num_heads=2, embed_dim=30, positions="rotary")


@pytest.mark.parametrize("index", **CLASSIFIERS)
def test_classifiers_take_subword_pieces_and_ignore_padding(index: int) -> None:
    # Tokens with pieces (B, L, P): the word id, then n-gram ids, 0-padded; padded tokens are all 0.
    model = classifiers()[index].eval()
    generator = torch.Generator().manual_seed(6)
    ids = torch.randint(2, 50, (4, 5, 3), generator=generator)
    ids[:, :, 2][torch.rand(4, 5, generator=generator) < 0.5] = 0  # some tokens have fewer pieces
    lengths = torch.tensor([1, 5, 3, 2])
    ids[torch.arange(5) >= lengths[:, None]] = 0
    logits = model(ids)
    assert logits.shape == (4, 3)
    padded = torch.cat([ids, torch.zeros(4, 7, 3, dtype=torch.long)], dim=1)
    torch.testing.assert_close(model(padded), logits, atol=1e-6, rtol=0)
    wider = torch.cat([ids, torch.zeros(4, 5, 2, dtype=torch.long)], dim=2)  # more piece slots, all padding
    torch.testing.assert_close(model(wider), logits, atol=1e-6, rtol=0)
    changed = ids.clone()
    changed[:, 0, 1] = (changed[:, 0, 1] + 1) % 48 + 2  # one n-gram of the first token
    assert (model(changed) - logits).abs().max() > 1e-4


def test_token_embedding_averages_the_pieces_of_each_token() -> None:
    embedding = TokenEmbedding(10, 4, padding_idx=0)
    ids = torch.tensor([[[3, 7, 0], [5, 0, 0], [0, 0, 0]]])
    out = embedding(ids)
    weight = embedding.weight
    torch.testing.assert_close(out[0, 0], (weight[3] + weight[7]) / 2)
    torch.testing.assert_close(out[0, 1], weight[5])
    assert out[0, 2].abs().max() == 0
    torch.testing.assert_close(embedding(ids[..., 0]), weight[ids[..., 0]])  # plain word ids as nn.Embedding
