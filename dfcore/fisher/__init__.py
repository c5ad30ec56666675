r"""Interchangeable estimators of the diffusion Fisher :math:`F_t(x) = -\nabla^2_x \log q_t(x)` (Wang et al.,
2025). Each estimator is an object that holds its own dependencies (a mixture, a denoiser, a trace model ...);
two small abstract bases state the contracts, and two registries map the config word to the class.

:class:`~dfcore.fisher.trace.TraceEstimator`, ``est(x, t)`` -> :math:`\operatorname{tr}F_t(x)`, shape (B,),
float64 (:mod:`dfcore.fisher.trace`; ``TRACE_ESTIMATORS``):

* ``analytic`` — :class:`AnalyticTrace` ``(mixture, schedule)``: exact trace of a mixture (Dirac mixture: Prop. 5).
* ``dftm`` — :class:`DFTMTrace` ``(denoiser, trace_model)``: DF-TM, Eq. 17,
  :math:`d/\sigma^2 - (\alpha^2/\sigma^4)(d\,t_\theta - \|\bar y_\theta\|^2)` with the trace model :math:`t_\theta`
  of Alg. 1 (its bracket from ``TraceModel.posterior_variance``).
* ``vjp`` — :class:`VJPTrace` ``(denoiser, chunk_size)``: exact trace of the network Jacobian
  :math:`\partial\varepsilon_\theta/\partial x\,/\sigma`, d VJPs.
* ``hutchinson`` — :class:`HutchinsonTrace` ``(denoiser, num_probes, generator, chunk_size)``: Skilling–Hutchinson
  estimate of the same trace with Rademacher probes (``frozen(x)`` keeps one draw along an ODE solve).

:class:`~dfcore.fisher.vp.FisherVectorProduct`, ``est(x, t, v, ybar=None)`` -> :math:`F_t(x)^\top v`, shape of
``v`` (:mod:`dfcore.fisher.vp`; ``FVP_ESTIMATORS``):

* ``analytic`` — :class:`AnalyticFVP` ``(mixture, schedule)``: exact, through the mixture's closed form
  (Prop. 5 / Prop. 3).
* ``dfea`` — :class:`DFEA` ``(x0, schedule)``: DF-EA, Eq. 20, the posterior second moment replaced by
  :math:`x_0 x_0^\top` of the trajectory endpoint ``x0``, with the cached posterior mean ``ybar``; no network call.
* ``dfea_centered`` — :class:`DFEACentered` ``(x0, schedule)``: the same one-sample idea on the posterior
  covariance, :math:`(x_0 - \bar y_\theta)(x_0 - \bar y_\theta)^\top` (positive semi-definite; not in the paper).
* ``vjp`` — :class:`VJPFVP` ``(denoiser)``: :math:`v^\top \partial\varepsilon_\theta/\partial x\,/\sigma` through
  the network.

``schedule`` defaults to the denoiser's wherever an estimator has one. ``fisher_trace(method, x, t, **deps)`` and
``fisher_vp(method, x, t, v, **deps)`` build the named estimator from the keywords it takes and call it once; a
keyword it does not take is a TypeError.
"""

from dfcore.fisher.trace import *  # noqa: F401,F403
from dfcore.fisher.vp import *  # noqa: F401,F403
