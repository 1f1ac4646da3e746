"""The hybrid's mix chosen online from withheld observations, inside a cycle (`latentda-cycle run --choose-mix`).

`latentda-crossval` chooses the latent : static mix per variable and band class from withheld observations over a
set of matrix cases. A host that cycles can do the same with its own observations, without truth, every cycle:

1. split this cycle's observation columns at random into two halves;
2. for every candidate mix (a latent share L: alpha = L S, beta = (1 - L) S per variable and band class, S the
   run's alpha + beta, so the Desroziers sizing in force applies unchanged), analyse the background with one half
   and verify on the other (`lda_set_withheld`), then the other way round, so that every observation is withheld
   once;
3. over the last `window` cycles, per variable and band class (extratropics, tropics), choose the share with the
   lowest mean d = mean(((O-A)^2 - (O-B)^2) / sigma_o^2) (crossval.choose: a variable without withheld observations
   follows its group's pooled evidence, z that of t and ps, else all variables');
4. analyse with all observations and the chosen weights (the run's own analysis; nothing is withheld from it).

Mode "forecast" (`--choose-by forecast`) scores the candidates on what the cycle carries instead: every candidate
analyses the background with all the observations, its analysis is forecast 6 h by the host's model, and at the next
cycle each forecast is compared with that cycle's observations (independent of it: new times, new errors), as
d = ((O - F_k)^2 - (O - B)^2) / sigma_o^2 with B the run's own background; the window and the choice are as above.
Nothing is withheld, and the evidence includes what one analysis does to the next background (its balance, its
spin-up), which an analysis-time check cannot see. The cost is K extra analyses and K 6 h forecasts per cycle. The
forecasts are checkpointed with the cycle they belong to (`save_pending` / `load_pending`), so a resumed run scores
them as an uninterrupted one would.

The candidate analyses run in contexts of their own. With the library's adaptive sizing (option `adaptive_state`)
each candidate reads a copy of the run's state file, taken before the run's analysis, so that it runs with the
multipliers in force; the run's state is never written by a candidate. The cost is 2 K extra analyses per cycle for
K candidates, each with half the observations.

Mode "persistence" (`--choose-by persistence`) is mode "forecast" without the K forecasts: each candidate's 6 h
forecast is taken as the run's own next background plus the candidate's analysis minus the run's analysis,
F_k = B + (A_k - A), i.e. the difference between the analyses is assumed to persist over 6 h. It is what a host
can afford that cannot run its model K extra times, and it is the test of whether the model's handling of the
increment (what mode "forecast" sees) is what makes the forecast-scored choice better than the withheld one.
"""

from __future__ import annotations

import os
import shutil

import numpy as np

from . import crossval as CV

CLASSES = tuple(CV.CLASSES)   # extratropics, tropics
MIX_WINDOW = 12               # cycles (3 days) of withheld evidence behind each choice
MODES = ("withheld", "forecast", "persistence")
NEXT_CYCLE_MODES = ("forecast", "persistence")   # scored on the next cycle's observations, with pending fields
BAND_EDGE = 20.0              # as src/var/desroziers.rs: nh lat > 20, sh lat < -20, tropics the rest


def share_name(share: float) -> str:
    """The candidate's name in records and choices: "L0.7" for latent share 0.7."""
    return f"L{share:g}"


def split_halves(lat: np.ndarray, lon: np.ndarray, seed: int) -> np.ndarray:
    """Boolean mask of the observations in the second half: whole columns (horizontal positions) drawn with `seed`,
    half of them (rounded down)."""
    cols, inv = np.unique(np.stack([lat, lon], axis=1), axis=0, return_inverse=True)
    held = np.random.default_rng(seed).permutation(len(cols))[: len(cols) // 2]
    return np.isin(inv.ravel(), held)


def obs_cells(names: dict, var, lat, lon, d) -> list:
    """Cells of per-observation values `d` in the form of a report's withheld cells (the sums crossval.class_stats
    pools): per variable (`names`: index -> name) and band (nh, tropics, sh), clustered by column; non-finite d
    (an observation H rejects) left out."""
    var, lat, lon, d = (np.asarray(x) for x in (var, lat, lon, d))
    _, col = np.unique(np.stack([lat, lon], axis=1), axis=0, return_inverse=True)
    col = col.ravel()
    band = np.where(np.abs(lat) <= BAND_EDGE, "tropics", np.where(lat > 0, "nh", "sh"))
    cells = []
    for vi, name in names.items():
        for b in ("nh", "tropics", "sh"):
            m = (var == vi) & (band == b) & np.isfinite(d)
            if not m.any():
                continue
            dc, nc = np.bincount(col[m], weights=d[m]), np.bincount(col[m]).astype(float)
            k = nc > 0
            cells.append({"group": name, "band": b, "n": int(m.sum()), "n_columns": int(k.sum()),
                          "sum_d": float(d[m].sum()), "sum_dc2": float(np.sum(dc[k] ** 2)),
                          "sum_dc_nc": float(np.sum(dc[k] * nc[k])), "sum_nc2": float(np.sum(nc[k] ** 2))})
    return cells


def mix_weights(choice: dict, total: float, static: tuple, variables) -> dict:
    """`hybrid_variable_weights` of a choice {var: {class: latent share}}: alpha = L S, beta = (1 - L) S (tropics from
    the tropics class); the static variables get alpha 0 and beta S whatever the choice."""
    w = {}
    for v in variables:
        lx, lt = (0.0, 0.0) if v in static else (choice[v]["extratropics"], choice[v]["tropics"])
        w[v] = {"alpha": lx * total, "beta": (1 - lx) * total,
                "alpha_tropics": lt * total, "beta_tropics": (1 - lt) * total}
    return w


class MixChooser:
    """Candidate contexts, the window of their scores (withheld or forecast), and the choice in force (module doc).

    `open_context(options_dict)` returns (Latentda, HostFields) for a dict of options; `base` is the run's options
    (with `adaptive_state` where the library sizes the B); `state` is what `state()` returned, for a resume."""

    def __init__(self, shares, window, base: dict, total: float, static: tuple, variables, folder: str,
                 open_context, state: dict | None = None, mode: str = "withheld"):
        if mode not in MODES:
            raise SystemExit(f"--choose-by must be one of {MODES}, got {mode!r}")
        self.mode, self.pending = mode, None
        if not shares or len(set(shares)) != len(shares) or any(not 0.0 <= s <= 1.0 for s in shares):
            raise SystemExit(f"--choose-mix: latent shares must be distinct numbers in [0, 1], got {shares}")
        if window < 1:
            raise SystemExit("--choose-window must be at least 1")
        self.shares, self.window, self.base = list(shares), int(window), dict(base)
        self.total, self.static, self.variables = float(total), tuple(static), tuple(variables)
        self.names = [share_name(s) for s in self.shares]
        self.main_state = base.get("adaptive_state")
        self.history = list((state or {}).get("history", []))
        self.choice = (state or {}).get("choice") or {v: {c: self.shares[0] for c in CLASSES} for v in self.variables}
        self.sources = (state or {}).get("sources", {})
        self.candidates = []
        for k, s in enumerate(self.shares):
            o = dict(self.base, hybrid_variable_weights=self.weights_of({v: {c: s for c in CLASSES}
                                                                          for v in self.variables}))
            copy = os.path.join(folder, f"mix_state_{k}.json") if self.main_state else None
            if copy:
                o["adaptive_state"] = copy
            self.candidates.append((open_context(o), copy))

    def weights_of(self, choice: dict) -> dict:
        return mix_weights(choice, self.total, self.static, self.variables)

    def options(self) -> dict:
        """The run's options with the weights of the choice in force."""
        return dict(self.base, hybrid_variable_weights=self.weights_of(self.choice))

    def state(self) -> dict:
        return {"history": self.history, "choice": self.choice, "sources": self.sources}

    def _analyse(self, k: int, x_b, obs, assimilate: np.ndarray):
        """Candidate k's analysis of x_b with the rows `assimilate`, the others withheld: its withheld cells."""
        self._analysed(k, x_b, obs, assimilate)
        (lda, _), _ = self.candidates[k]
        return (lda.report().get("withheld") or {}).get("cells", [])

    def _analysed(self, k: int, x_b, obs, assimilate: np.ndarray) -> np.ndarray:
        """Candidate k's analysis of x_b with the rows `assimilate` (the others withheld, if any): the state."""
        (lda, host), copy = self.candidates[k]
        if copy:   # the multipliers in force: the run's state as it is before its own analysis of this cycle
            if self.main_state and os.path.exists(self.main_state):
                shutil.copyfile(self.main_state, copy)
            elif os.path.exists(copy):
                os.remove(copy)
        host.load(x_b)
        lda.set_obs(*[x[assimilate] for x in obs])
        if (~assimilate).any():
            lda.set_withheld(*[x[~assimilate] for x in obs])
        lda.analyse("hybrid")
        return host.state()

    def evaluate(self, x_b, obs, seed: int) -> dict:
        """Mode "withheld": runs every candidate on both halves of this cycle's observations (obs: the arrays of
        lda_set_obs, the variable index first, then lat and lon), adds their withheld sums to the window and updates
        the choice. Returns the cycle's record: each candidate's mean d per variable and class, and the choice."""
        second = split_halves(obs[1], obs[2], seed)
        cycle = {}
        for k, name in enumerate(self.names):
            acc = {}
            for half in (~second, second):
                CV.add_cells(acc, self._analyse(k, x_b, obs, half))
            cycle[name] = list(acc.values())
        return self._add(cycle)

    def verify(self, x_b, obs, names: dict) -> dict:
        """Mode "forecast": scores the candidates' 6 h forecasts from the last cycle (`propose`) against this cycle's
        observations, relative to the run's background x_b (names: variable index -> name), adds them to the window
        and updates the choice. Without forecasts (the first cycle, a resume) the choice stays."""
        if self.pending is None:
            return {"mean_d": {}, "choice": self._choice_record(), "sources": dict(self.sources)}
        y, sig = obs[4], obs[5]
        if self.mode == "persistence":   # pending holds A_k - A: the forecast is the background plus that
            self.pending = [x_b + dx for dx in self.pending]
        (lda, _), _ = self.candidates[0]
        lda.set_obs(*obs)   # once: H is built once and applied to the background and every forecast
        miss = lambda x: ((y - lda.obs_h(len(y), x)) / sig) ** 2
        o_b = miss(x_b)
        cycle = {name: obs_cells(names, obs[0], obs[1], obs[2], miss(x_f) - o_b)
                 for name, x_f in zip(self.names, self.pending)}
        self.pending = None
        return self._add(cycle)

    def propose(self, x_b, obs, forecast):
        """Mode "forecast": every candidate analyses x_b with all of `obs`; `forecast(x_a)` (the host's model) gives
        its 6 h forecast, kept for the next cycle's `verify`."""
        everything = np.ones(len(obs[0]), bool)
        self.pending = [forecast(self._analysed(k, x_b, obs, everything)) for k in range(len(self.names))]

    def relative_to(self, x_a):
        """Mode "persistence": after the run's own analysis x_a, keeps each candidate's A_k - x_a (`propose` was
        given the identity as the forecast)."""
        if self.mode == "persistence" and self.pending is not None:
            self.pending = [p - x_a for p in self.pending]

    def save_pending(self, path: str, cycle: int):
        """Modes "forecast" and "persistence": writes the candidates' pending fields (forecasts, or A_k - A) made at `cycle` (atomically), or removes the file."""
        if self.pending is None:
            if os.path.exists(path):
                os.remove(path)
            return
        tmp = path + ".partial.npz"
        np.savez(tmp, forecasts=np.stack(self.pending), cycle=cycle)
        os.replace(tmp, path)

    def load_pending(self, path: str, cycle: int):
        """Mode "forecast": the forecasts `save_pending` wrote at `cycle` (the checkpoint's); none if the file is
        missing or belongs to another cycle."""
        self.pending = None
        if os.path.exists(path):
            with np.load(path) as f:
                if int(f["cycle"]) == cycle and len(f["forecasts"]) == len(self.names):
                    self.pending = list(f["forecasts"])

    def _add(self, cycle: dict) -> dict:
        """Adds one cycle's cells per candidate to the window, chooses again, returns the cycle's record."""
        self.history = (self.history + [cycle])[-self.window:]
        pooled = {}
        for name in self.names:
            acc = {}
            for past in self.history:
                CV.add_cells(acc, past[name])
            pooled[name] = CV.class_table(acc.values())
        by_name = dict(zip(self.names, self.shares))
        for v in self.variables:
            if v in self.static:   # the same static B in every candidate: nothing to choose
                continue
            for c in CLASSES:
                best, where = CV.choose(pooled, self.names, v, c)
                self.choice[v][c] = by_name[best]
                self.sources[f"{v}/{c}"] = where
        this = {name: {f"{v}/{c}": CV.class_stats(cells, v, c)[1] for v in CV.VARS for c in CLASSES}
                for name, cells in cycle.items()}
        return {"mean_d": this, "choice": self._choice_record(), "sources": dict(self.sources)}

    def _choice_record(self) -> dict:
        return {v: dict(self.choice[v]) for v in self.variables if v not in self.static}

    def close(self):
        for (lda, _), _ in self.candidates:
            lda.close()
