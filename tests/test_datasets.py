"""Readers, embedded default data sets, vocabulary and classification/translation metrics."""

import datetime as dt
import gzip

import numpy as np
import pytest

from rnnkit.datasets import (
    DataError,
    Vocabulary,
    dates,
    names_by_language,
    read_classification,
    read_pairs,
    read_parallel,
    read_series,
    read_ts,
)
from rnnkit.metrics import accuracy, confusion_matrix, corpus_bleu, macro_f1


def test_label_tab_csv_tsv_and_folders(tmp_path):
    (tmp_path / "a.txt").write_text("pos\tgood film\nneg\tbad film\n\n")
    d = read_classification(tmp_path / "a.txt")
    assert d.kind == "text" and d.texts == ["good film", "bad film"] and d.labels == ["pos", "neg"]
    (tmp_path / "b.csv").write_text('y,review\npos,"good, really"\nneg,bad\n')
    d = read_classification(tmp_path / "b.csv", text_col="review", label_col="y")
    assert d.texts == ["good, really", "bad"] and d.labels == ["pos", "neg"]
    (tmp_path / "c.tsv").write_text("label\ttext\nx\tone\n")
    assert read_classification(tmp_path / "c.tsv").texts == ["one"]
    (tmp_path / "n.csv").write_text("label,t0,t1,t2\nA,1,2,3\nB,4,5,6\n")
    d = read_classification(tmp_path / "n.csv")
    assert d.kind == "series" and d.series[1].shape == (3, 1) and d.series[1][:, 0].tolist() == [4, 5, 6]
    files = tmp_path / "files"
    files.mkdir()
    (files / "rt-polarity.pos").write_text("nice\ngreat\n")
    (files / "rt-polarity.neg").write_text("awful\n")
    (files / "SOURCE.md").write_text("# not a class\n")
    d = read_classification(files)
    assert sorted(zip(d.labels, d.texts)) == [("neg", "awful"), ("pos", "great"), ("pos", "nice")]
    sub = tmp_path / "sub"
    (sub / "spam").mkdir(parents=True)
    (sub / "ham").mkdir()
    (sub / "spam" / "1.txt").write_text("buy now")
    (sub / "ham" / "1.txt").write_text("hello")
    d = read_classification(sub)
    assert sorted(zip(d.labels, d.texts)) == [("ham", "hello"), ("spam", "buy now")]


@pytest.mark.parametrize(
    "name, content, kwargs, message",
    [
        ("a.txt", "pos good film\n", {}, "line 1: expected 'label<TAB>text'"),
        ("b.csv", "label,text\npos,good\n", {"text_col": "review"}, "unknown column 'review'"),
        ("c.csv", "label,t0\nA,1\nB,x\n", {}, "row 3, column 't0': 'x' is not a number"),
        ("d.csv", "label,text\npos\n", {}, "row 2 has 1 fields"),
        ("e.txt", "", {}, "no examples"),
        ("f.ts", "@problemName X\n1,2:1\n", {}, "line 2: malformed .ts header"),
        ("g.ts", "@problemName X\n@classLabel true 1 2\n", {}, "no @data line"),
        ("h.ts", "@classLabel false\n@data\n1,2:1\n", {}, "expected '@classLabel true"),
        ("i.ts", "@classLabel true 1 2\n@data\n1,2:3\n", {}, "label '3' is not declared"),
        (
            "j.ts",
            "@classLabel true 1\n@seriesLength 3\n@equalLength true\n@data\n1,2:1\n",
            {},
            "@seriesLength says 3",
        ),
    ],
)
def test_reader_errors_are_one_line(tmp_path, name, content, kwargs, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(DataError, match="^[^\n]*$") as err:
        read_classification(tmp_path / name, **kwargs)
    assert message in str(err.value) and name in str(err.value)


def test_binary_and_missing_files(tmp_path):
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(DataError, match="not UTF-8"):
        read_classification(tmp_path / "bin.txt")
    with pytest.raises(DataError, match="no such file"):
        read_classification(tmp_path / "nope.txt")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "a.txt").write_text("x\n")
    (empty / "b.txt").write_text("\n\n")
    with pytest.raises(DataError, match="class 'b' has no examples"):
        read_classification(empty)


def test_multivariate_ts(tmp_path):
    (tmp_path / "m.ts").write_text("#c\n@classLabel true a b\n@data\n1,2,3:4,5,6:a\n7,8,9:1,2,3:b\n")
    d = read_ts(tmp_path / "m.ts")
    assert d.series[0].shape == (3, 2) and d.series[0][:, 1].tolist() == [4, 5, 6] and d.labels == ["a", "b"]


def test_parallel_pairs_and_series(tmp_path):
    with gzip.open(tmp_path / "s.gz", "wt") as f:
        f.write("eins\nzwei\n\ndrei\n")
    (tmp_path / "t.txt").write_text("one\ntwo\n\nthree\n")
    assert read_parallel(tmp_path / "s.gz", tmp_path / "t.txt") == (
        ["eins", "zwei", "drei"],
        ["one", "two", "three"],
    )
    (tmp_path / "t2.txt").write_text("one\ntwo\n")
    with pytest.raises(DataError, match="differ in line count.*has 4.*has 2"):
        read_parallel(tmp_path / "s.gz", tmp_path / "t2.txt")
    (tmp_path / "p.tsv").write_text("a\tb\nc d\n")
    with pytest.raises(DataError, match="line 2: expected 'source<TAB>target'"):
        read_pairs(tmp_path / "p.tsv")
    (tmp_path / "y.csv").write_text("date,y,x\n2000-01,1.5,3\n2000-02,2.5,4\n")
    s = read_series(tmp_path / "y.csv", "y", ["x"])
    assert (
        s.target.tolist() == [1.5, 2.5]
        and s.covariates.shape == (2, 1)
        and s.stamps == ["2000-01", "2000-02"]
    )
    assert read_series(tmp_path / "y.csv").target_name == "x"


def test_names_by_language_is_a_clean_deterministic_task():
    d = names_by_language(max_per_language=200)
    assert d.texts == names_by_language(max_per_language=200).texts
    assert len(set(d.labels)) == 13 and max(d.labels.count(x) for x in set(d.labels)) == 200
    owners = {}
    for name, label in zip(d.texts, d.labels):
        owners.setdefault(name, set()).add(label)
    assert all(len(v) == 1 for v in owners.values())  # no name is in two languages


def test_dates_targets_are_the_iso_dates_written_in_the_sources():
    src, tgt = dates(300, seed=1)
    assert (src, tgt) == dates(300, seed=1)
    assert len(set(src)) > 250
    for s, t in zip(src, tgt):
        day = dt.date.fromisoformat(t)
        assert 1950 <= day.year <= 2049
        assert str(day.day) in s  # the day number is written out in every format
    assert any(not s.isascii() for s in src)  # more than English: accents from other locales


def test_vocabulary_round_trip():
    v = Vocabulary.build(["ab ba", "abc"], "char")
    ids = v.encode("abz", bos=True, eos=True)
    assert ids[0] == v.bos_id and ids[-1] == v.eos_id and ids[-2] == v.unk_id
    assert v.decode(v.encode("ab ba")) == "ab ba"
    w = Vocabulary.from_dict(Vocabulary.build(["the cat", "the dog"], "word", min_freq=2).to_dict())
    assert w.decode(w.encode("the cat")) == "the <unk>"


def test_classification_metrics_by_hand():
    pred, gold = [0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 2, 0]
    assert accuracy(pred, gold) == pytest.approx(4 / 6)
    m = confusion_matrix(pred, gold, 3)
    assert m.tolist() == [[1, 0, 1], [1, 1, 0], [0, 0, 2]]
    f1 = [2 * 1 / (2 * 1 + 1 + 1), 2 * 1 / (2 + 0 + 1), 2 * 2 / (4 + 1 + 0)]
    assert macro_f1(pred, gold, 3) == pytest.approx(np.mean(f1))
    assert corpus_bleu(["the cat sat on the mat"], ["the cat sat on the mat"]) == pytest.approx(100.0)
    assert corpus_bleu(["a b c d"], ["w x y z"]) == pytest.approx(0.0)
