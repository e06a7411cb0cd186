"""fastmod.data: minibatches, splits and synthetic problems (more data sources live beside these)."""
from fastmod.data.loader import DataLoader, batches, train_test_split
from fastmod.data.synthetic import make_spirals, make_classification
from fastmod.data.datasets import load_digits, load_dataset
from fastmod.data.idx import DataError, DataDtypeError, read_idx, write_idx, read_idx_dir, read_npz

__all__ = ["DataLoader", "batches", "train_test_split", "make_spirals", "make_classification",
           "load_digits", "load_dataset", "DataError", "DataDtypeError", "read_idx", "write_idx", "read_idx_dir",
           "read_npz"]
