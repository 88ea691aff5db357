import pytest

from kitscascade.splits import held_out_fold, make_splits

IDS = [f"case_{i:05d}" for i in range(23)]
LABELED = {c: c not in {"case_00020", "case_00021", "case_00022"} for c in IDS}


def test_splits_disjoint_and_complete():
    s = make_splits(IDS, LABELED, n_validation=5, n_folds=3, seed=1)
    assert len(s["validation"]) == 5 and len(s["training"]) == 15
    assert not set(s["validation"]) & set(s["training"])
    assert set(s["validation"]) | set(s["training"]) == {c for c in IDS if LABELED[c]}
    assert s["unlabeled"] == ["case_00020", "case_00021", "case_00022"]
    vals = [c for f in s["folds"] for c in f["val"]]
    assert sorted(vals) == s["training"]  # every training case held out exactly once
    for f in s["folds"]:
        assert not set(f["train"]) & set(f["val"])
        assert set(f["train"]) | set(f["val"]) == set(s["training"])


def test_unlabeled_never_trained_or_validated():
    s = make_splits(IDS, LABELED, 5, 3, 1)
    used = set(s["validation"]) | {c for f in s["folds"] for c in f["train"] + f["val"]}
    assert not used & set(s["unlabeled"])


def test_deterministic_and_seed_dependent():
    assert make_splits(IDS, LABELED, 5, 3, 7) == make_splits(list(reversed(IDS)), LABELED, 5, 3, 7)
    assert make_splits(IDS, LABELED, 5, 3, 7)["validation"] != make_splits(IDS, LABELED, 5, 3, 8)["validation"]


def test_held_out_fold():
    s = make_splits(IDS, LABELED, 5, 3, 1)
    for k, f in enumerate(s["folds"]):
        for c in f["val"]:
            assert held_out_fold(s, c) == k
    assert held_out_fold(s, s["validation"][0]) is None


@pytest.mark.parametrize("n_val, n_folds, key", [(19, 2, "n_validation=19"), (5, 1, "n_folds=1")])
def test_bad_sizes(n_val, n_folds, key):
    with pytest.raises(ValueError, match=key):
        make_splits(IDS, LABELED, n_val, n_folds, 0)
