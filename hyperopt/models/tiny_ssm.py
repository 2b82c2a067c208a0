"""TinySSM: a linear state-space model with a tanh readout, in the form Hamiltonian Learning expects.

.. code-block:: text

    h_0 = h_init;   h_{k+1} = h_k A^T + u_k B^T          (h: 1 x H, u: 1 x U)
    dh  = (h_{k+1} - h_k) / delta                        the state's time derivative
    y_k = tanh(h_k) C^T                                  (1 x Y)
    L   = mean((y_k - y*_k)^2)                           the potential
    H   = gamma * L + <dh, p_xi>                         the Hamiltonian, p_xi the neuron costate

Closed-form gradients of H at the current step (``dL/dy = 2 (y - y*) / numel(y)``):

.. code-block:: text

    dH/dh = gamma * (dL/dy C) * (1 - tanh(h)^2) + p_xi (A - I) / delta
    dH/dA = p_xi^T h / delta      dH/dB = p_xi^T u / delta      dH/dC = gamma * (dL/dy)^T tanh(h)

This is the "local" form: the state h_k is a leaf (no gradient flows to earlier steps), so everything
above is exact for one step.  ``A``, ``B`` and ``C`` are float32 arrays updated in place by the
optimizer; ``named_parameters()`` exposes them by name.
"""
from __future__ import annotations

import numpy as np


class TinySSM:
    """The model of the HL reference trajectories: ``TinySSM(h_dim=4, u_dim=2, y_dim=1, delta=0.1, seed=7)``
    draws A, B, C (``0.3 * N(0, 1)``) and h_init (``0.5 * N(0, 1)``) from ``default_rng(seed)`` in
    that order."""

    def __init__(self, h_dim=4, u_dim=2, y_dim=1, delta=0.1, seed=7, dtype=np.float32):
        rng = np.random.default_rng(seed)
        self.A = (0.3 * rng.standard_normal((h_dim, h_dim))).astype(dtype)
        self.B = (0.3 * rng.standard_normal((h_dim, u_dim))).astype(dtype)
        self.C = (0.3 * rng.standard_normal((y_dim, h_dim))).astype(dtype)
        self.h_init = (0.5 * rng.standard_normal((1, h_dim))).astype(dtype)
        self.delta = float(delta)
        self.reset()

    @classmethod
    def from_arrays(cls, A, B, C, h_init, delta=0.1):
        """A model with the given weights (copied) and initial state."""
        m = cls.__new__(cls)
        m.A, m.B, m.C = (np.array(a, dtype=np.float32) for a in (A, B, C))
        m.h_init = np.array(h_init, dtype=np.float32).reshape(1, -1)
        m.delta = float(delta)
        m.reset()
        return m

    def named_parameters(self):
        return [("A", self.A), ("B", self.B), ("C", self.C)]

    def reset(self):
        """Start again from h_init at the next ``forward``."""
        self._next = None
        self.h = self.h_init.copy()
        self.dh = np.zeros_like(self.h_init)
        self.u = None
        self.y = None

    def forward(self, u):
        """One step with input ``u`` (1 x U): sets ``h`` (the state used), ``dh`` and ``y``; returns y."""
        h = self.h_init.copy() if self._next is None else self._next
        u = np.asarray(u, dtype=self.A.dtype).reshape(1, -1)
        h_new = h @ self.A.T + u @ self.B.T
        self.h, self.u = h, u
        self.dh = (h_new - h) / self.A.dtype.type(self.delta)
        self.y = np.tanh(h) @ self.C.T
        self._next = h_new
        return self.y

    __call__ = forward

    def loss(self, target) -> float:
        """Mean squared error of the last output."""
        return float(np.mean((self.y - np.asarray(target, self.y.dtype).reshape(self.y.shape)) ** 2))

    def hamiltonian_grads(self, target, p_xi, gamma=1.0):
        """``(dH/dh, {"A": dH/dA, "B": dH/dB, "C": dH/dC})`` at the last ``forward``, for the
        neuron costate ``p_xi`` used in H (the one before the optimizer's step)."""
        dt = self.A.dtype.type
        y = self.y
        target = np.asarray(target, y.dtype).reshape(y.shape)
        p = np.asarray(p_xi, y.dtype).reshape(self.h.shape)
        delta = dt(self.delta)
        dL_dy = dt(2.0) * (y - target) / dt(y.size)
        th = np.tanh(self.h)
        eye = np.eye(self.A.shape[0], dtype=self.A.dtype)
        dH_dh = dt(gamma) * (dL_dy @ self.C) * (dt(1.0) - th * th) + (p @ (self.A - eye)) / delta
        grads = {"A": (p.T @ self.h) / delta, "B": (p.T @ self.u) / delta, "C": dt(gamma) * (dL_dy.T @ th)}
        return dH_dh, grads
