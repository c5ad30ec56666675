r"""Interchangeable estimators of the diffusion Fisher :math:`F_t(x) = -\nabla^2_x \log q_t(x)` (Wang et al.,
2025), one call each, the method chosen by a config word. Both families are registries of functions with one
signature each (:class:`~dfcore.fisher.trace.TraceFn`, :class:`~dfcore.fisher.vp.FisherVpFn`), looked up by
name; ``schedule`` defaults to the denoiser's in both.

``fisher_trace(method, x, t, ...)`` -> :math:`\operatorname{tr}F_t(x)`, shape (B,), float64
(:mod:`dfcore.fisher.trace`); the methods, in ``TRACE_METHODS`` (name -> function):

* ``analytic`` — exact trace of a ``mixture`` (:class:`~dfcore.mixtures.Mixture`; Dirac mixture: Prop. 5).
* ``dftm`` — DF-TM, Eq. 17: :math:`d/\sigma^2 - (\alpha^2/\sigma^4)(d\,t_\theta - \|\bar y_\theta\|^2)` from the
  ``denoiser`` and the ``trace_model`` :math:`t_\theta` of Alg. 1 (its bracket from ``TraceModel.posterior_variance``).
* ``vjp`` — exact trace of the network Jacobian :math:`\partial\varepsilon_\theta/\partial x\,/\sigma`, d VJPs.
* ``hutchinson`` — Skilling–Hutchinson estimate of the same trace with Rademacher probes
  (``rademacher(shape, generator, dtype, device)`` draws them).

``fisher_vp(method, x, t, v, ...)`` -> :math:`F_t(x)^\top v`, shape of ``v`` (:mod:`dfcore.fisher.vp`);
the methods, in ``FVP_METHODS`` (name -> function), each also exported on its own:

* ``analytic`` (``fisher_vp_analytic``) — exact, through the mixture's closed form (Prop. 5 / Prop. 3).
* ``dfea`` (``fisher_vp_dfea``) — DF-EA, Eq. 20: the posterior second moment replaced by :math:`x_0 x_0^\top`
  of the trajectory endpoint ``x0``, with the cached posterior mean ``ybar``; no network call.
* ``dfea_centered`` (``fisher_vp_dfea_centered``) — the same one-sample idea on the posterior covariance,
  :math:`(x_0 - \bar y_\theta)(x_0 - \bar y_\theta)^\top` (positive semi-definite; not in the paper).
* ``vjp`` (``fisher_vp_vjp``) — :math:`v^\top \partial\varepsilon_\theta/\partial x\,/\sigma` through the network.
"""

from dfcore.fisher.trace import *  # noqa: F401,F403
from dfcore.fisher.vp import *  # noqa: F401,F403
