"""Helpers around the jcm SPEEDY T31L8 model (offline configuration of BRIEF section 5)."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np

P0 = 1.0e5  # jcm: normalized_surface_pressure = ps / p0 on sigma coordinates
UPPER = ("u", "v", "t", "q", "z")
JCM_NAMES = {"u": "u_wind", "v": "v_wind", "t": "temperature", "q": "specific_humidity", "z": "geopotential"}
NLEV, NLAT, NLON = 8, 48, 96
NCHAN = 5 * NLEV + 1
LAYOUT = 2  # files written before layout 2 had the levels of each variable in reverse order

# channel permutation that converts a layout-1 array (levels bottom->top) to layout 2 (top->bottom)
LEGACY_PERM = [v * NLEV + (NLEV - 1 - k) for v in range(5) for k in range(NLEV)] + [5 * NLEV]


def jcm_dir() -> str:
    import jcm
    return os.path.dirname(jcm.__file__)


def load_model(time_step: int = 30):
    """Return (model, forcing, run_kwargs) for SPEEDY T31L8 with the packaged T30 boundary files."""
    import jcm.configurations as C
    J = jcm_dir()
    exp = C.load("speedy-t31", **{
        "terrain.file": f"{J}/data/bc/t30/clim/terrain.nc",
        "terrain.interpolate": False,
        "forcing.file": f"{J}/data/bc/t30/clim/forcing.nc",
        "forcing.align": "wrap_year",
        "run.time_step": time_step,
        "run.total_time": 0.25,
        "run.save_interval": 0.25,
    })
    kw = dict(exp.run_kwargs)
    kw["forcing"] = exp.forcing
    return exp.model, exp.forcing, kw


def physics_to_latentda(dyn) -> np.ndarray:
    """jcm PhysicsState with arrays (time, level[top first, as dinosaur stores sigma levels], lon, lat[S->N]) ->
    float32 array (time, 41, 48, 96): u,v,t,q,z on 8 levels top->bottom, then ps [Pa];
    latitudes north->south, longitudes 0..356.25."""
    out = []
    for v in UPPER:
        a = np.asarray(getattr(dyn, JCM_NAMES[v]), dtype=np.float32)
        if a.ndim == 3:
            a = a[None]
        # NB: PhysicsState levels are already top first (only jcm's xarray output is surface first)
        a = a[:, :, :, ::-1].transpose(0, 1, 3, 2)  # (time, lev top->bottom, lat N->S, lon)
        out.append(a)
    ps = np.asarray(dyn.normalized_surface_pressure, dtype=np.float32)
    if ps.ndim == 2:
        ps = ps[None]
    ps = (ps[:, :, ::-1].transpose(0, 2, 1) * P0)[:, None]
    x = np.concatenate(out + [ps], axis=1)
    return np.ascontiguousarray(x)


def grid_info(pred) -> dict:
    """Exact grid from a jcm prediction (converted to latentda order)."""
    ds = pred.to_xarray()
    lat = np.asarray(ds.lat.values, dtype=np.float64)[::-1]
    lon = np.asarray(ds.lon.values, dtype=np.float64)
    lev = np.asarray(ds.level.values, dtype=np.float64)[::-1]
    return {"lat": lat.tolist(), "lon": lon.tolist(), "sigma": lev.tolist()}


def flatten_state(model):
    """Leaves (numpy) of the model's current (dycore_state, physics_carry) and its step."""
    import jax
    rs = model.run_state
    leaves = jax.tree_util.tree_leaves((rs.dynamics, rs.physics))
    return [np.asarray(jax.device_get(l)) for l in leaves], int(jax.device_get(rs.step))


def restore_from_leaves(model, template, leaves, step: int):
    """Restore model state from saved leaves; template = (dycore_state, physics_carry) pytree."""
    import jax
    import jax.numpy as jnp
    import jax_datetime as jdt
    treedef = jax.tree_util.tree_structure(template)
    dyn, phys = jax.tree_util.tree_unflatten(treedef, [jnp.asarray(l) for l in leaves])
    dt_seconds = int(model.dt_si.m)
    days, secs = divmod(step * dt_seconds, 86400)
    time = model.start_time + jdt.Timedelta(days=jnp.int32(days), seconds=jnp.int32(secs))
    model.restore_state(dyn, phys, time=time, step=jnp.int32(step))
    return dyn, phys
