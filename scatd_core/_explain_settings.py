"""Limits of an explanation's settings (light: no science imports, so the command line's parser,
the app's form and :func:`scatd_core.explain.explain` take them from one place)."""

from __future__ import annotations

from scatd_core.errors import InputError

#: Fewest integration steps: the quadrature needs two points.
MIN_STEPS = 2
#: Most integration steps, in the app's form, ``scatd explain --steps`` / ``scatd report --steps``
#: and :func:`scatd_core.explain.explain`. Gauss-Legendre converges fast (the default 50 usually
#: meets the completeness tolerance); every step is one more forward and backward pass per cell,
#: and captum computes the quadrature's points from a steps x steps matrix (8 * steps^2 bytes:
#: 2 MB and 0.1 s at 500, but 7.3 TiB at 1,000,000 steps, which crashed with a MemoryError).
MAX_STEPS = 500
#: What to do instead of more steps than :data:`MAX_STEPS`, for the messages.
STEPS_HINT = (f"Use {MAX_STEPS:,} steps or fewer: the default 50 usually suffice, and more are only needed when "
              "the completeness warning asks for them.")


def check_steps(n_steps) -> int:
    """``n_steps`` as an int, or :class:`InputError` when it is below :data:`MIN_STEPS` or above
    :data:`MAX_STEPS` (said before anything runs)."""
    n = int(n_steps)
    if n < MIN_STEPS:
        raise InputError(f"Integrated gradients need at least {MIN_STEPS} steps, got {n:,}.", "Use n_steps 50 or more.")
    if n > MAX_STEPS:
        raise InputError(f"Integrated gradients take at most {MAX_STEPS:,} steps, got {n:,}.", STEPS_HINT)
    return n
