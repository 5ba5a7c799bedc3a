"""Linear probe: how linearly separable a frozen backbone makes a stream's classes.

All experiences of the stream are joined; a logistic regression (scikit-learn, on
standardised features) is fitted on the frozen features of the training images and scored
on the test images. Used by ``clplat probe`` and ``clplat pretrain --probe`` to report a
backbone's features on the downstream streams.
"""
from __future__ import annotations

import numpy as np
import torch

from clplatform.backbones import Backbone
from clplatform.data import experience_images


def stream_features(backbone: Backbone, stream, batch_size: int = 512
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Frozen features [N, D] and labels [N] of every experience of ``stream`` joined.

    Images are read through the stream's eval transforms, training images too (no random
    augmentation: the usual linear probe), and held as uint8
    (:func:`clplatform.data.experience_images`)."""
    backbone.eval()
    feats, labels = [], []
    with torch.inference_mode():
        for exp in stream:
            x, y = experience_images(exp.dataset.eval())
            feats += [backbone(x[i:i + batch_size]).float() for i in range(0, len(x), batch_size)]
            labels.append(y)
    return torch.cat(feats).numpy(), torch.cat(labels).numpy()


def linear_probe(backbone: Backbone, benchmark, max_iter: int = 1000) -> float:
    """Test accuracy of a logistic regression on ``backbone``'s frozen features of
    ``benchmark`` (train on its train stream, score on its test stream)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    x_train, y_train = stream_features(backbone, benchmark.train_stream)
    x_test, y_test = stream_features(backbone, benchmark.test_stream)
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter))
    probe.fit(x_train, y_train)
    return float(probe.score(x_test, y_test))
