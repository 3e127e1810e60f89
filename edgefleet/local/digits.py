"""Small real models for demos, tests and benches: an MLP and a CNN on scikit-learn's bundled digits
(no download)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

__all__ = ["DigitsCNN", "DigitsData", "load_digits_data", "train_digits_cnn", "train_digits_mlp"]


@dataclass
class DigitsData:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def load_digits_data(seed: int = 0) -> DigitsData:
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=seed, stratify=y)
    return DigitsData(x_train, y_train, x_test, y_test)


def _fit_classifier(
    model: torch.nn.Module, data: DigitsData, *, epochs: int, learning_rate: float, seed: int
) -> tuple[torch.nn.Module, float]:
    """Adam on cross-entropy in shuffled batches of 64; return the model and its held-out accuracy."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    x = torch.from_numpy(data.x_train)
    y = torch.from_numpy(data.y_train)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), 64):
            idx = order[start : start + 64]
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        predicted = model(torch.from_numpy(data.x_test)).argmax(dim=1).numpy()
    return model, float((predicted == data.y_test).mean())


def train_digits_mlp(
    data: DigitsData, *, hidden: int = 64, epochs: int = 30, seed: int = 0
) -> tuple[torch.nn.Module, float]:
    """Train a 64-hidden-10 MLP; return the model and its accuracy on the held-out digits."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(64, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 10))
    return _fit_classifier(model, data, epochs=epochs, learning_rate=1e-2, seed=seed)


class DigitsCNN(torch.nn.Module):
    """Two 3x3 convolutions on the 8x8 image (given flat, 64 pixels), then a linear classifier."""

    def __init__(self, channels: int = 16) -> None:
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(1, channels, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.Conv2d(channels, 2 * channels, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.MaxPool2d(2),
        )
        self.classifier = torch.nn.Linear(2 * channels * 16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x.reshape(-1, 1, 8, 8)).flatten(1))


def train_digits_cnn(
    data: DigitsData, *, channels: int = 16, epochs: int = 8, seed: int = 0
) -> tuple[torch.nn.Module, float]:
    """Train a ``DigitsCNN``; return the model and its accuracy on the held-out digits."""
    torch.manual_seed(seed)
    return _fit_classifier(DigitsCNN(channels), data, epochs=epochs, learning_rate=3e-3, seed=seed)
