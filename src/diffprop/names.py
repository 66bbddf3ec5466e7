"""diffusers' names for what diffprop calls otherwise, in one place: configs accept them as aliases,
``--diffusers`` reads them, ``diffprop export`` writes them.

- ``diffusion.parameterization`` ``eps`` / ``x0`` / ``v``: ``prediction_type`` ``epsilon`` / ``sample`` /
  ``v_prediction``;
- ``diffusion.var_type`` ``beta_tilde`` / ``beta``: ``variance_type`` ``fixed_small`` / ``fixed_large``;
- ``diffusion.schedule`` ``cosine``: ``beta_schedule`` ``squaredcos_cap_v2``; ``sigmoid_abar`` (Jabri et al. 2022's
  sigmoid on abar, the EPDM and SMD public code's "sigmoid") has no diffusers name and is exported as
  ``trained_betas``;
- ``sample.spacing`` ``linspace`` / ``leading`` / ``trailing``: ``timestep_spacing`` of the same names (diffprop's own
  ``even`` besides).

diffusers' ``sigmoid`` beta schedule (``betas = sigmoid(linspace(-6, 6, T))`` scaled into
``[beta_start, beta_end]``) is another schedule than Jabri et al.'s, so diffprop's, once called ``sigmoid``,
is ``sigmoid_abar`` and ``sigmoid`` names nothing in a new config (:data:`RENAMED`); a run folder's saved
``config.toml`` that says ``sigmoid`` was written before the rename and reads as ``sigmoid_abar``.
"""
from __future__ import annotations

PREDICTION_TYPES = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}  # diffusers -> diffprop
VARIANCE_TYPES = {"fixed_small": "beta_tilde", "fixed_small_log": "beta_tilde", "fixed_large": "beta"}
BETA_SCHEDULES = {"linear": "linear", "squaredcos_cap_v2": "cosine"}
SPACINGS = ("even", "linspace", "leading", "trailing")  # diffprop's own, then diffusers' timestep_spacing

# config aliases: key -> {diffusers' name: diffprop's}
ALIASES = {"diffusion.parameterization": PREDICTION_TYPES,
           "diffusion.var_type": {"fixed_small": "beta_tilde", "fixed_large": "beta"},
           "diffusion.schedule": {"squaredcos_cap_v2": "cosine"}}
# names diffprop gave up because diffusers means something else by them: key -> {old name: (new name, why)}
RENAMED = {"diffusion.schedule": {"sigmoid": ("sigmoid_abar", "diffprop's sigmoid schedule (Jabri et al. 2022, a "
                                              "sigmoid in abar, as in the EPDM and SMD public code) is now "
                                              "'sigmoid_abar'; diffusers' 'sigmoid' (sigmoid-shaped betas) is "
                                              "another schedule, not implemented")}}


def to_diffusers(table: dict, ours: str) -> str:
    """diffusers' name for diffprop's ``ours`` in ``table`` (the first that maps to it)."""
    return next(k for k, v in table.items() if v == ours)
