"""The windows (uniform sequence) against the formulas of the schedules module docstring, written
here independently: every shape, several sub-shapes (cfact > 2), full and half windows, flat tops,
floors, and every window unit."""
import itertools
import math

import pytest

from hyperopt.schedules import Window


def ref_shape(rcm, f, n, M):
    if rcm == 2:
        return (1 - f) ** n
    if rcm == 5:
        S = lambda v: sum(1 / (1 + 2 ** (2 * M * n * (v - (j + 0.5) / M))) for j in range(M))
        return (S(f) - S(1)) / (S(0) - S(1))
    i = max(1, math.ceil(M * f))
    r = M * f - i + 1
    if rcm == 1:
        z = math.cos(math.pi * r / 2) ** n
    elif rcm == 3:
        z = (n ** r - n) / (1 - n)
    elif rcm == 4:
        z = (1 - r ** n) ** 2
    else:
        s = lambda v: 1 / (1 + 2 ** (2 * n * (v - 7 / 8)))
        z = (s(r) - 1 / (1 + 2 ** n)) / (1 / (1 + 2 ** -n) - 1 / (1 + 2 ** n))
    return (M - i + z) / M


def ref_window(t, rcm, x, n, m, tau, spe, cfact, e):
    k = (t - 1) // spe + 1
    u = k if cfact == 0 else t
    L = tau if cfact == 0 else spe if cfact == 2 else tau * spe
    M = cfact if cfact > 2 else 1
    tc = (u - 1) % L
    f = tc / L
    if m == 0:
        f = abs(2 * f - 1)
    if f < e or e == 1:
        return 1.0
    f = (f - e) / (1 - e)
    return ref_shape(rcm, f, n, M) * (1 - x) + x


N_OF = {1: 2, 2: 2, 3: 0.3, 4: 2, 5: 3, 6: 4}
CASES = [(rcm, cfact, m, e, x) for rcm, cfact, m, e, x in itertools.product(
    range(1, 7), (0, 1, 2, 3, 5), (0, 1), (0.0, 0.25), (0.0, 0.1))]


@pytest.mark.parametrize("rcm, cfact, m, e, x", CASES)
def test_window_matches_the_documented_formula(rcm, cfact, m, e, x):
    tau, spe = 4, 7
    n = N_OF[rcm]
    w = Window(rcm, x=x, n=n, m=m, tau=tau, spe=spe, cfact=cfact, e=e)
    for t in range(1, 2 * tau * spe + 3):          # past the end: the frames repeat
        assert w(t) == pytest.approx(ref_window(t, rcm, x, n, m, tau, spe, cfact, e), rel=1e-12, abs=1e-12), t
