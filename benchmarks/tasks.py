"""Small NumPy training tasks shared by the tests and the benchmark scripts.

``two_moons`` and ``digits`` give (X_train, y_train, X_test, y_test); ``MLP`` is a tanh multi-layer
perceptron with softmax cross-entropy and hand-written backprop; ``train`` runs an optimizer on it.
"""
from __future__ import annotations

import numpy as np


def two_moons(n=1000, noise=0.1, seed=0, test_fraction=0.3):
    """The two interleaving half circles (as scikit-learn's make_moons draws them), split train/test."""
    rng = np.random.default_rng(seed)
    n_out = n // 2
    n_in = n - n_out
    t_out = np.linspace(0, np.pi, n_out)
    t_in = np.linspace(0, np.pi, n_in)
    X = np.vstack([np.c_[np.cos(t_out), np.sin(t_out)],
                   np.c_[1 - np.cos(t_in), 1 - np.sin(t_in) - 0.5]])
    y = np.r_[np.zeros(n_out, np.int64), np.ones(n_in, np.int64)]
    X = X + rng.normal(scale=noise, size=X.shape)
    return _split(X.astype(np.float32), y, rng, test_fraction)


def digits(seed=0, test_fraction=0.3):
    """scikit-learn's bundled 8x8 digits (1797 images, no download), scaled to [0, 1]."""
    from sklearn.datasets import load_digits
    d = load_digits()
    return _split((d.data / 16.0).astype(np.float32), d.target.astype(np.int64),
                  np.random.default_rng(seed), test_fraction)


def _split(X, y, rng, test_fraction):
    order = rng.permutation(len(X))
    n_test = int(len(X) * test_fraction)
    test, train = order[:n_test], order[n_test:]
    return X[train], y[train], X[test], y[test]


def softmax_cross_entropy(logits, y):
    """Mean cross-entropy of softmax(logits) against integer labels, and its gradient in the logits."""
    z = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    n = len(y)
    loss = float(-np.log(p[np.arange(n), y] + 1e-12).mean())
    p[np.arange(n), y] -= 1
    return loss, p / n


class MLP:
    """tanh MLP, e.g. MLP([2, 16, 16, 2]); ``params`` is [W1, b1, W2, b2, ...] (float32 arrays)."""

    def __init__(self, sizes, seed=0):
        rng = np.random.default_rng(seed)
        self.params = []
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            self.params.append((rng.standard_normal((fan_in, fan_out)) / np.sqrt(fan_in)).astype(np.float32))
            self.params.append(np.zeros(fan_out, np.float32))

    def logits(self, X):
        h = X
        for k in range(0, len(self.params) - 2, 2):
            h = np.tanh(h @ self.params[k] + self.params[k + 1])
        return h @ self.params[-2] + self.params[-1]

    def loss_and_grads(self, X, y):
        """Mean softmax cross-entropy and its gradient for every parameter (same order as params)."""
        acts = [X]
        for k in range(0, len(self.params) - 2, 2):
            acts.append(np.tanh(acts[-1] @ self.params[k] + self.params[k + 1]))
        loss, delta = softmax_cross_entropy(acts[-1] @ self.params[-2] + self.params[-1], y)
        grads = [None] * len(self.params)
        for layer in range(len(self.params) // 2 - 1, -1, -1):
            a = acts[layer]
            grads[2 * layer] = (a.T @ delta).astype(np.float32)
            grads[2 * layer + 1] = delta.sum(axis=0).astype(np.float32)
            if layer > 0:
                delta = (delta @ self.params[2 * layer].T) * (1 - a * a)
        return loss, grads

    def accuracy(self, X, y):
        return float((self.logits(X).argmax(axis=1) == y).mean())


def train(model, opt, X, y, *, epochs, batch_size=64, seed=0, on_step=None, step_kwargs=None):
    """Minibatch training; returns the list of per-step losses.  ``on_step(loss, step's return value)``
    is called after each step; ``step_kwargs(X_batch)`` adds keyword arguments to ``opt.step``."""
    rng = np.random.default_rng(seed)
    losses = []
    for _ in range(epochs):
        order = rng.permutation(len(X))
        for s in range(0, len(X), batch_size):
            idx = order[s:s + batch_size]
            loss, grads = model.loss_and_grads(X[idx], y[idx])
            out = opt.step(gradients=grads, **(step_kwargs(X[idx]) if step_kwargs else {}))
            losses.append(loss)
            if on_step is not None:
                on_step(loss, out)
    return losses
