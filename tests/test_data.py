"""Text reading, tokenisation, vocabularies, splits and the contiguous-stream layout."""

from __future__ import annotations

import gzip

import pytest
import torch

from rnnkit.data import (
    EOS,
    UNK,
    LMDataConfig,
    StreamBatches,
    Vocabulary,
    batchify,
    default_corpus,
    load_lm_data,
    read_text,
    tokenize,
)
from rnnkit.errors import RnnkitError

PTB_VALID = "/work/shared/data/ptb/ptb.valid.txt.gz"


def test_read_text_plain_gz_and_folder(tmp_path):
    (tmp_path / "a.txt").write_text("héllo\n", encoding="utf-8")
    with gzip.open(tmp_path / "b.txt.gz", "wt", encoding="utf-8") as f:
        f.write("world\n")
    (tmp_path / ".hidden").write_text("skip me")
    assert read_text(tmp_path / "a.txt") == "héllo\n"
    assert read_text(tmp_path / "b.txt.gz") == "world\n"
    assert read_text(tmp_path) == "héllo\n\nworld\n"  # sorted, joined by a newline, hidden skipped


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "empty"),
        (b"  \n\n", "empty"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "binary"),
        ("caf\xe9 au lait".encode("latin-1"), "not valid UTF-8"),
    ],
)
def test_read_text_rejects_bad_files(tmp_path, content, message):
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    with pytest.raises(RnnkitError, match=message):
        read_text(path)


def test_read_text_missing(tmp_path):
    with pytest.raises(RnnkitError, match="no such file"):
        read_text(tmp_path / "nope.txt")


def test_default_corpus_is_english_text():
    text = default_corpus()
    assert len(text) > 300_000
    assert "statement" in text and text == default_corpus()  # deterministic


def test_tokenize_word_follows_ptb_convention():
    assert tokenize(" the cat\n sat down \n", "word") == ["the", "cat", EOS, "sat", "down", EOS]
    assert tokenize("ab\nc", "char") == ["a", "b", "\n", "c"]


def test_ptb_valid_token_count_matches_source():
    # SOURCE.md: 73,760 tokens including one <eos> per line.
    assert len(tokenize(read_text(PTB_VALID), "word")) == 73_760


def test_vocabulary_word_cap_unk_and_round_trip():
    tokens = tokenize("a a a b b c\nd a b\n", "word")
    vocab = Vocabulary.build(tokens, "word", max_size=4)
    assert vocab.tokens == [EOS, UNK, "a", "b"]  # specials first, then by falling frequency
    assert vocab.encode(["a", "c", "zzz", EOS]) == [2, 1, 1, 0]
    assert vocab.decode([2, 3, 0]) == " a b\n"
    assert Vocabulary.from_dict(vocab.to_dict()).tokens == vocab.tokens


def test_vocabulary_char_rejects_unknown_characters():
    vocab = Vocabulary.build("hello", "char")
    assert vocab.tokens == ["e", "h", "l", "o"]
    assert vocab.decode(vocab.encode(list("hole"))) == "hole"
    with pytest.raises(RnnkitError, match="lacks: 'x'"):
        vocab.encode(list("hox"), what="the prime")


def test_streams_are_contiguous_pieces_and_targets_shift_by_one():
    ids = torch.arange(103)
    B, bptt = 4, 7
    streams = batchify(ids, B)  # (25, 4)
    assert streams.shape == (25, B)
    for b in range(B):
        assert torch.equal(streams[:, b], ids[b * 25 : (b + 1) * 25])
    chunks = list(StreamBatches(ids, B, bptt))
    assert len(chunks) == len(StreamBatches(ids, B, bptt)) == 4  # 24 predictions in chunks of 7
    inputs = torch.cat([x for x, _ in chunks])
    targets = torch.cat([y for _, y in chunks])
    assert torch.equal(inputs, streams[:-1]) and torch.equal(targets, streams[1:])
    assert [x.shape[0] for x, _ in chunks] == [7, 7, 7, 3]


def test_ranks_read_disjoint_columns_that_make_up_the_global_batch():
    ids = torch.arange(200)
    whole = StreamBatches(ids, 4, 5)
    parts = [StreamBatches(ids, 4, 5, rank=r, world_size=2) for r in range(2)]
    for (x, y), (x0, y0), (x1, y1) in zip(whole, *parts):
        assert torch.equal(x, torch.cat([x0, x1], dim=1)) and torch.equal(y, torch.cat([y0, y1], dim=1))
    with pytest.raises(RnnkitError, match="does not divide"):
        StreamBatches(ids, 3, 5, rank=0, world_size=2)


def test_load_lm_data_splits_by_fraction_and_by_file(tmp_path):
    text = "".join(chr(ord("a") + i % 26) for i in range(1000))
    (tmp_path / "t.txt").write_text(text)
    data = load_lm_data(LMDataConfig(text=str(tmp_path / "t.txt"), valid_fraction=0.1, test_fraction=0.2))
    assert (data.train.numel(), data.valid.numel(), data.test.numel()) == (700, 100, 200)
    assert data.vocab.decode(data.test.tolist()) == text[800:]  # test is the very end
    (tmp_path / "v.txt").write_text("abc")
    data = load_lm_data(LMDataConfig(text=str(tmp_path / "t.txt"), valid=str(tmp_path / "v.txt")))
    assert data.vocab.decode(data.valid.tolist()) == "abc"


def test_load_lm_data_too_short_for_one_batch(tmp_path):
    (tmp_path / "t.txt").write_text("tiny text")
    with pytest.raises(RnnkitError, match="too few for --batch-size 32"):
        load_lm_data(LMDataConfig(text=str(tmp_path / "t.txt"), batch_size=32))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"bptt": 0}, "--bptt must be a positive"),
        ({"level": "byte"}, "--level"),
        ({"batch_size": -1}, "--batch"),
    ],
)
def test_data_config_rejects_bad_values(kwargs, message):
    with pytest.raises(RnnkitError, match=message):
        LMDataConfig(**kwargs)
