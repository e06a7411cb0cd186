"""fastmod.data: minibatches, splits and synthetic problems (more data sources live beside these)."""
from fastmod.data.loader import DataLoader, batches, train_test_split
from fastmod.data.synthetic import make_spirals, make_classification

__all__ = ["DataLoader", "batches", "train_test_split", "make_spirals", "make_classification"]
