//! The observation operator H: bilinear in latitude/longitude (periodic longitude, non-uniform latitudes, zero-
//! gradient polar caps) and linear in ln(level) between model levels.
//!
//! H is linear in the state for fixed observation positions, so it is stored once per analysis as a sparse matrix
//! with a fixed stride of 8 entries per row (4 horizontal x 2 vertical; surface rows pad with zero weights).
//! `apply` computes y = H x and `adjoint` accumulates dx += H^T dy, its exact transpose.
//!
//! For 4D-Var ([`ObsOperator::try_build_in_window`]) the state is the trajectory [x_0, x_1, ..., x_K] of the time
//! slots, concatenated: an observation of slot k reads x_k, so H stays one sparse matrix with an exact transpose.

use crate::bundle::grid::Layout;
use crate::error::{Error, Result};
use crate::obs::{Observation, QcFlag};

/// Entries per row.
pub const STRIDE: usize = 8;

/// Sparse H for the observations that passed the geometric checks.
#[derive(Debug, Clone)]
pub struct ObsOperator {
    /// Observation index (into the caller's list) of each row.
    pub rows: Vec<usize>,
    // State indices as usize: a grid of more than 2^32 state values must not wrap around.
    idx: Vec<usize>,
    w: Vec<f64>,
    state_len: usize,
}

/// Geometric QC of one observation and its row of H, or the flag explaining why it has none.
pub fn locate(layout: &Layout, o: &Observation) -> std::result::Result<([usize; STRIDE], [f64; STRIDE]), QcFlag> {
    if o.malformed.is_some() {
        return Err(QcFlag::Invalid);
    }
    let Some(v) = o.var else { return Err(QcFlag::UnknownVariable) };
    if !o.value.is_finite() || !o.sigma.is_finite() || o.sigma <= 0.0 || !o.lat.is_finite() || !o.lon.is_finite() {
        return Err(QcFlag::Invalid);
    }
    if o.lat.abs() > 90.0 {
        return Err(QcFlag::Invalid);
    }
    let var = &layout.variables[v];
    let Some(h) = layout.grid.bilinear(o.lat, o.lon) else { return Err(QcFlag::OutsideDomain) };
    let np = layout.grid.npoints();
    let mut idx = [0usize; STRIDE];
    let mut w = [0.0; STRIDE];
    if var.is_surface() {
        for (k, (p, wt)) in h.iter().enumerate() {
            idx[k] = var.first_channel * np + p;
            w[k] = *wt;
        }
    } else {
        let Some(level) = o.level else { return Err(QcFlag::OutsideVertical) };
        if !level.is_finite() {
            return Err(QcFlag::Invalid);
        }
        let Some(vw) = layout.vertical.interpolate(level) else { return Err(QcFlag::OutsideVertical) };
        for (a, (k, wk)) in vw.iter().enumerate() {
            for (b, (p, wt)) in h.iter().enumerate() {
                idx[a * 4 + b] = (var.first_channel + k) * np + p;
                w[a * 4 + b] = wk * wt;
            }
        }
    }
    Ok((idx, w))
}

/// A vector with room for `n` elements, or an error naming `what` (observation-sized buffers must not abort the
/// host when memory runs out).
fn try_with_capacity<T>(n: usize, what: &str) -> Result<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| Error::arg(format!("cannot allocate memory for {what} ({n} elements)")))?;
    Ok(v)
}

impl ObsOperator {
    /// Builds H for `obs`, writing the geometric QC flag of every observation into `flags` (`Used` for those with a
    /// row). No error-sd floor; see [`ObsOperator::try_build`].
    ///
    /// # Panics
    /// If memory for the operator cannot be allocated (hosts go through [`ObsOperator::try_build`]).
    pub fn build(layout: &Layout, obs: &[Observation], flags: &mut [QcFlag]) -> ObsOperator {
        Self::try_build(layout, obs, flags, &[]).expect("memory for the observation operator")
    }

    /// Builds H for `obs`, writing the QC flag of every observation into `flags` (`Used` for those with a row). An
    /// observation whose error sd is below `sigma_floor[v]` for its variable `v` is flagged `Invalid` (see
    /// [`crate::obs::sigma_floors`]); an empty `sigma_floor` means no floor. Memory is reserved fallibly: too many
    /// observations is an error, not an abort.
    pub fn try_build(
        layout: &Layout,
        obs: &[Observation],
        flags: &mut [QcFlag],
        sigma_floor: &[f64],
    ) -> Result<ObsOperator> {
        Self::try_build_in_window(layout, obs, &[], 1, flags, sigma_floor)
    }

    /// [`ObsOperator::try_build`] on the concatenated trajectory of `nslots` time slots: observation i reads the
    /// state of slot `slots[i]`, or is flagged with the slot's error (outside the window, invalid time) when it
    /// passed the geometric checks. An empty `slots` puts every observation in slot 0.
    pub fn try_build_in_window(
        layout: &Layout,
        obs: &[Observation],
        slots: &[std::result::Result<usize, QcFlag>],
        nslots: usize,
        flags: &mut [QcFlag],
        sigma_floor: &[f64],
    ) -> Result<ObsOperator> {
        let n = layout.state_len();
        let mut op = ObsOperator {
            rows: try_with_capacity(obs.len(), "the observation operator")?,
            idx: try_with_capacity(obs.len().saturating_mul(STRIDE), "the observation operator")?,
            w: try_with_capacity(obs.len().saturating_mul(STRIDE), "the observation operator")?,
            state_len: n
                .checked_mul(nslots)
                .ok_or_else(|| Error::arg(format!("{nslots} time slots overflow the state length")))?,
        };
        for (i, o) in obs.iter().enumerate() {
            match (locate(layout, o), slots.get(i).copied().unwrap_or(Ok(0))) {
                (Ok(_), _) if o.var.and_then(|v| sigma_floor.get(v)).is_some_and(|&f| o.sigma < f) => {
                    flags[i] = QcFlag::Invalid;
                }
                (Ok(_), Err(f)) => flags[i] = f,
                (Ok(_), Ok(k)) if k >= nslots => {
                    return Err(Error::arg(format!("observation {i}: time slot {k} of {nslots}")));
                }
                (Ok((idx, w)), Ok(k)) => {
                    op.rows.push(i);
                    op.idx.extend(idx.iter().map(|j| j + k * n));
                    op.w.extend_from_slice(&w);
                    flags[i] = QcFlag::Used;
                }
                (Err(f), _) => flags[i] = f,
            }
        }
        op.sort_by_location()?;
        Ok(op)
    }

    /// Orders rows by their first grid index so H and H^T walk the state almost sequentially (cache locality for
    /// large observation counts). Row order is internal: `rows` maps each row back to its observation.
    fn sort_by_location(&mut self) -> Result<()> {
        let n = self.rows.len();
        let mut order: Vec<usize> = try_with_capacity(n, "the observation operator")?;
        order.extend(0..n);
        order.sort_by_key(|&r| (self.idx[r * STRIDE], r));
        let mut rows = try_with_capacity(n, "the observation operator")?;
        let mut idx = try_with_capacity(n * STRIDE, "the observation operator")?;
        let mut w = try_with_capacity(n * STRIDE, "the observation operator")?;
        for &r in &order {
            rows.push(self.rows[r]);
            idx.extend_from_slice(&self.idx[r * STRIDE..(r + 1) * STRIDE]);
            w.extend_from_slice(&self.w[r * STRIDE..(r + 1) * STRIDE]);
        }
        self.rows = rows;
        self.idx = idx;
        self.w = w;
        Ok(())
    }

    /// Number of rows.
    pub fn nrows(&self) -> usize {
        self.rows.len()
    }

    /// State length the operator applies to.
    pub fn state_len(&self) -> usize {
        self.state_len
    }

    /// Keeps only the rows for which `keep(row)` is true.
    pub fn retain(&mut self, keep: impl Fn(usize) -> bool) {
        let mut out = 0;
        for r in 0..self.rows.len() {
            if keep(r) {
                self.rows[out] = self.rows[r];
                self.idx.copy_within(r * STRIDE..(r + 1) * STRIDE, out * STRIDE);
                self.w.copy_within(r * STRIDE..(r + 1) * STRIDE, out * STRIDE);
                out += 1;
            }
        }
        self.rows.truncate(out);
        self.idx.truncate(out * STRIDE);
        self.w.truncate(out * STRIDE);
    }

    /// y = H x.
    pub fn apply(&self, x: &[f64], y: &mut [f64]) {
        assert_eq!(x.len(), self.state_len, "H: state length");
        assert_eq!(y.len(), self.rows.len(), "H: observation count");
        for (r, yr) in y.iter_mut().enumerate() {
            let idx = &self.idx[r * STRIDE..(r + 1) * STRIDE];
            let w = &self.w[r * STRIDE..(r + 1) * STRIDE];
            let mut s = 0.0;
            for k in 0..STRIDE {
                s += w[k] * x[idx[k]];
            }
            *yr = s;
        }
    }

    /// dx += H^T dy.
    pub fn adjoint(&self, dy: &[f64], dx: &mut [f64]) {
        assert_eq!(dx.len(), self.state_len, "H^T: state length");
        assert_eq!(dy.len(), self.rows.len(), "H^T: observation count");
        for (r, &d) in dy.iter().enumerate() {
            let idx = &self.idx[r * STRIDE..(r + 1) * STRIDE];
            let w = &self.w[r * STRIDE..(r + 1) * STRIDE];
            for k in 0..STRIDE {
                dx[idx[k]] += w[k] * d;
            }
        }
    }
}
