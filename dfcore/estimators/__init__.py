"""Interchangeable estimators behind one interface each (see STYLE.md).

- ``fisher_trace(method, ...)``: ``analytic``, ``dftm``, ``vjp``, ``hutchinson`` (trace.py).
- ``fisher_vp(method, ...)``: ``analytic``, ``dfea``, ``vjp`` (vp.py).
"""

from dfcore.estimators.trace import *  # noqa: F401,F403
from dfcore.estimators.vp import *  # noqa: F401,F403
