"""Classical classifiers on a dataset's split: the yardstick a trained network must beat
(chapter 05). A network that loses to logistic regression on raw pixels is under-trained, and a
comparison of regularizers on it says little."""

from __future__ import annotations

from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from locolib.data import load_dataset

__all__ = ["classical_errors"]


def classical_errors(dataset: str, seed: int = 0, root: str = "data") -> dict[str, float]:
    """Test errors (fractions) of logistic regression and an RBF support-vector machine trained on
    the raw pixels of ``dataset``'s training split (``seed``: the split, as RunConfig's
    ``data_seed``), evaluated on its test split. Deterministic. (Chapter 05)"""
    data = load_dataset(dataset, root=root, seed=seed)
    x_train = data.x_train.flatten(1).numpy() / 255.0
    x_test = data.x_test.flatten(1).numpy() / 255.0
    y_train, y_test = data.y_train.numpy(), data.y_test.numpy()
    models = {
        "logistic regression": make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000)),
        "RBF SVM": SVC(C=10.0, gamma="scale"),
    }
    return {name: float((m.fit(x_train, y_train).predict(x_test) != y_test).mean())
            for name, m in models.items()}
