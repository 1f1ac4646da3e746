"""Prior-draw balance as a differentiable training term (issue 20, item 4).

The error-pair loss teaches the decoder's tangent to span unbalanced short-lead errors, and in doing so lowers the
geostrophic balance of the latent B's prior draws below the gate (0.6 per hemisphere). This term measures that
balance during training, the way `latentda_train.stats` measures it after export: draws dx = D'(z_b)(s * xi) of the
decoder's tangent-linear at a background, xi ~ N(0, I), s the latent standard deviation of encoded NMC differences
E(N(x48)) - E(N(x24)); the balance is the correlation of the draws' wind with their geostrophic wind over
|lat| > 20 (the same sums as `balance.sums`, linearised about the background). The loss is a hinge,
sum over hemispheres of max(0, target - balance): it only pulls while a hemisphere is below the target, so the
decoder keeps the freedom to span unbalanced errors as long as its typical draw stays balanced."""
from __future__ import annotations

import numpy as np
import torch

from . import data as D
from .balance import R_DRY, grid_factors


class DrawBalance:
    """Differentiable prior-draw balance of an autoencoder's latent B at given backgrounds.

    `lat`, `lon`: the grid (lat north to south); `mean`, `std`: the per-channel normalisation of the states;
    `f48n`, `f24n`: normalised NMC pairs [n, 41, lat, lon] whose encoded differences give the latent spread."""

    def __init__(self, lat, lon, mean, std, f48n, f24n):
        self.f48n, self.f24n = f48n, f24n
        lat = np.asarray(lat, np.float64)
        self.std = torch.tensor(np.asarray(std, np.float64))[None, :, None, None]
        self.mean = torch.tensor(np.asarray(mean, np.float64))[None, :, None, None]
        self.f, self.dy, self.dx = (torch.tensor(a) for a in grid_factors(lat, lon))
        inner = lat[1:-1]
        self.masks = {"N": torch.tensor((np.abs(inner) > 20) & (inner > 0))[:, None],
                      "S": torch.tensor((np.abs(inner) > 20) & (inner < 0))[:, None]}
        self.s = None

    def refresh(self, ae, bs=16):
        """(Re)compute the latent standard deviation per element from the encoded NMC differences (eval mode)."""
        was = ae.training
        ae.eval()
        with torch.no_grad():
            d = torch.cat([ae.encode(self.f48n[i:i + bs]) - ae.encode(self.f24n[i:i + bs])
                           for i in range(0, len(self.f48n), bs)])
        ae.train(was)
        self.s = d.double().var(dim=0).clamp_min(1e-12).sqrt().float()

    def geostrophic_increment(self, xb, dx):
        """Linearised geostrophic wind (du_g, dv_g) [n, 8, nlat - 2, nlon] of increments dx at backgrounds xb
        (both physical units, [n, 41, nlat, nlon], float64)."""
        ex = lambda a: torch.roll(a, -1, dims=-1) - torch.roll(a, 1, dims=-1)
        ey = lambda a: a[..., :-2, :] - a[..., 2:, :]
        z, t, dz, dt = (a[:, D.VAR_SLICES[v]] for a in (xb, dx) for v in ("z", "t"))
        lnps = torch.log(xb[:, 40:41].clamp_min(1.0))
        dlnps = dx[:, 40:41] / xb[:, 40:41].clamp_min(1.0)
        inner = lambda a: a[..., 1:-1, :]
        gx = (ex(dz) + R_DRY * (dt * ex(lnps) + t * ex(dlnps)))[..., 1:-1, :] / self.dx
        gy = (ey(dz) + R_DRY * (inner(dt) * ey(lnps) + inner(t) * ey(dlnps))) / self.dy
        return -gy / self.f, gx / self.f

    def sums(self, xb, dx):
        """Per hemisphere: (wind.wind, geo.geo, wind.geo) of increments dx at backgrounds xb (physical units)."""
        dug, dvg = self.geostrophic_increment(xb, dx)
        du = dx[:, D.VAR_SLICES["u"], 1:-1]
        dv = dx[:, D.VAR_SLICES["v"], 1:-1]
        out = {}
        for h, m in self.masks.items():
            out[h] = torch.stack([((du ** 2 + dv ** 2) * m).sum(), ((dug ** 2 + dvg ** 2) * m).sum(),
                                  ((du * dug + dv * dvg) * m).sum()])
        return out

    def balance(self, ae, xbn, n_draws=1, generator=None):
        """Prior-draw balance per hemisphere (differentiable in the decoder's weights) at normalised backgrounds
        xbn [n, 41, lat, lon]: `n_draws` draws at each."""
        if self.s is None:
            raise RuntimeError("DrawBalance: refresh first")
        with torch.no_grad():
            z = ae.encode(xbn)
        z = z.repeat_interleave(n_draws, dim=0)
        xi = torch.randn(z.shape, generator=generator) * self.s
        dx = ae.decode_tl(z, xi).double() * self.std
        xb = (xbn.double() * self.std + self.mean).repeat_interleave(n_draws, dim=0)
        s = self.sums(xb, dx)
        return {h: v[2] / torch.sqrt(v[0] * v[1]).clamp_min(1e-30) for h, v in s.items()}

    def loss(self, ae, xbn, target, n_draws=1, generator=None):
        """Hinge sum_h max(0, target - balance_h), and the balances (floats) for the log."""
        b = self.balance(ae, xbn, n_draws, generator)
        return sum(torch.relu(target - v) for v in b.values()), {h: float(v.detach()) for h, v in b.items()}
