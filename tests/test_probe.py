"""The linear probe learns what is linearly decodable: on features that separate the classes by construction its
top-1 reaches 1, on features that carry no label it stays near chance."""
import torch
from torch.utils.data import Dataset

from taming.probe import train_linear_probe


class Coloured(Dataset):
    """Class k: images whose channel k % 3 is bright (+ noise); or, with `informative=False`, labels unrelated to the
    images."""

    def __init__(self, n: int, seed: int, informative: bool = True):
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.randint(0, 3, (n,), generator=g)
        self.images = torch.rand(n, 3, 8, 8, generator=g) * 0.2 - 0.1
        if informative:
            self.images[torch.arange(n), self.labels] += 0.8
        else:
            self.labels = torch.randint(0, 3, (n,), generator=g)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"image": self.images[i], "class_label": int(self.labels[i])}


def mean_colour(images: torch.Tensor) -> torch.Tensor:
    return images.mean((2, 3))


def probe(informative: bool) -> float:
    train, val = Coloured(192, 0, informative), Coloured(96, 1, informative)
    result = train_linear_probe(mean_colour, 3, train, val, 3, epochs=20, warmup_epochs=2, batch_size=32,
                                optimizer="sgd", blr=4.0, eval_every=20, num_workers=0)
    return result["top1"]


def test_probe_reaches_full_accuracy_on_separable_features(capsys):
    assert probe(True) == 1.0


def test_probe_stays_near_chance_without_information(capsys):
    assert probe(False) < 0.55
