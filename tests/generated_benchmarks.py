"""What every procedural benchmark promises, whatever its media: the seed alone decides its files, and one
split does not depend on the size of another."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from conftest import file_bytes, read_split


def assert_the_seed_decides_the_files(tmp_path: Path, make: Callable[[Path, int], object], files: int,
                                      medium: str) -> None:
    """``make(folder, seed)`` writes ``files`` files, byte-identical for one seed; another seed writes files of
    the same names but another ``medium`` and other training questions."""
    first, again, other = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for folder, seed in ((first, 1), (again, 1), (other, 2)):
        make(folder, seed)
    written, different = file_bytes(first), file_bytes(other)
    assert len(written) == files
    assert written == file_bytes(again)
    assert written.keys() == different.keys()
    assert written[Path(medium)] != different[Path(medium)]
    assert read_split(first, "questions", "train") != read_split(other, "questions", "train")


def assert_a_split_ignores_the_training_size(tmp_path: Path, make: Callable[[Path, int], object],
                                            train_sizes: tuple[int, int], split: str, plans: str) -> None:
    """``make(folder, n_train)`` writes the same ``split`` (captions, questions and plans) for both sizes."""
    small, large = tmp_path / "small", tmp_path / "large"
    make(small, train_sizes[0])
    make(large, train_sizes[1])
    for kind in ("captions", "questions", plans):
        assert read_split(small, kind, split) == read_split(large, kind, split)
