//! A host-facing context shared by the C ABI, Fortran (through the C ABI) and C++ (through cxx): host arrays bound
//! in place, observations, the last QC flags and report, and the B operator (latent, hybrid or static: option
//! `b_operator`) linearised at the bound background.
//!
//! Bound arrays are raw pointers into host memory. They are read at [`HostContext::analyse`] and written only after
//! the whole analysis succeeded, so a failed call leaves them bit-identical.

use crate::coupling::callbacks::HostStep;
use crate::error::{Error, Result, Status};
use crate::model::forecast::StepModel;
use crate::obs::operator::ObsOperator;
use crate::obs::{Observation, QcFlag};
use crate::var::analysis::Analyser;
use crate::var::fourd::ForecastChecks;
use crate::var::options::{BKind, Method, Options};

/// Memory order of a bound host array (the `order` argument of `lda_bind_field_f32`/`_f64`, an `int32_t`).
///
/// Both describe the same memory (longitude fastest, then latitude north to south, then level top to bottom); only
/// the way the shape is written differs.
///
/// cbindgen:prefix-with-name
/// cbindgen:rename-all=ScreamingSnakeCase
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// C (row-major): shape (nlev, nlat, nlon) for upper-air fields, (nlat, nlon) for surface fields.
    C = 0,
    /// Fortran (column-major): shape (nlon, nlat, nlev) or (nlon, nlat), in Fortran terms.
    Fortran = 1,
}

impl Order {
    /// The order with numeric value `order` (as passed through the C ABI), or `None` for any other number.
    pub fn from_code(order: i32) -> Option<Order> {
        [Order::C, Order::Fortran].into_iter().find(|o| *o as i32 == order)
    }
}

/// A host array (pointer to its first element); its length is fixed by the bound variable's shape.
#[derive(Debug, Clone, Copy)]
pub enum HostData {
    /// Single precision.
    F32(*mut f32),
    /// Double precision.
    F64(*mut f64),
}

impl HostData {
    /// Address of the first element and element size in bytes.
    fn addr(self) -> (usize, usize) {
        match self {
            HostData::F32(p) => (p as usize, 4),
            HostData::F64(p) => (p as usize, 8),
        }
    }

    /// Whether `n` elements here and `m` elements at `other` share any byte.
    pub fn overlaps(self, n: usize, other: HostData, m: usize) -> bool {
        let ((a, sa), (b, sb)) = (self.addr(), other.addr());
        let a1 = a.saturating_add(n.saturating_mul(sa));
        let b1 = b.saturating_add(m.saturating_mul(sb));
        n > 0 && m > 0 && a < b1 && b < a1
    }
}

/// Everything a host model keeps between calls.
pub struct HostContext {
    /// The analyser (bundle, sessions, options).
    pub analyser: Analyser,
    fields: Vec<Option<HostData>>,
    obs: Vec<Observation>,
    /// Withheld observations (`set_withheld`): compared with the background and the analysis in the report, never
    /// assimilated.
    withheld: Vec<Observation>,
    qc: Option<Vec<QcFlag>>,
    report: Option<String>,
    /// The host B operator's kind and latent linearisation point (none for the static B), once linearised.
    b_point: Option<(BKind, Option<Vec<f32>>)>,
    /// The host's own step model for method l4dvar (`lda_set_step_model`).
    step_model: Option<HostStep>,
    /// H of the observations set and their geometric QC flags, built at the first H service call after `set_obs`.
    obs_op: Option<(ObsOperator, Vec<QcFlag>)>,
}

/// One variable's place in the state vector (the layout of `lda_bsqrt`'s x and of every state-layout buffer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VarLayout {
    /// Variable name.
    pub name: String,
    /// Units.
    pub units: String,
    /// Number of levels; 0 for a surface variable (which has one channel).
    pub nlev: usize,
    /// Offset of its first element in the state vector (0-based): the variable is x[offset .. offset + length].
    pub offset: usize,
    /// Number of elements: max(nlev, 1) * nlat * nlon.
    pub length: usize,
}

// SAFETY: the raw pointers are only dereferenced inside calls on the context, which the host serialises (documented:
// one thread at a time per context); the host guarantees the arrays stay valid while bound.
unsafe impl Send for HostContext {}

fn not_ready(msg: impl Into<String>) -> Error {
    Error::new(Status::NotReady, msg)
}

impl HostContext {
    /// Opens the bundle with options given as TOML text (`None` or empty for defaults).
    pub fn open(bundle_dir: &str, options_toml: Option<&str>) -> Result<HostContext> {
        let opts = match options_toml {
            Some(t) if !t.trim().is_empty() => Options::from_toml(t)?,
            _ => Options::default(),
        };
        let analyser = Analyser::open(bundle_dir, opts)?;
        let nvar = analyser.bundle.layout.variables.len();
        Ok(HostContext {
            analyser,
            fields: vec![None; nvar],
            obs: Vec::new(),
            withheld: Vec::new(),
            qc: None,
            report: None,
            b_point: None,
            step_model: None,
            obs_op: None,
        })
    }

    /// Identifier of a variable for `set_obs` (0-based position in the bundle).
    pub fn var_index(&self, name: &str) -> Result<usize> {
        let lay = &self.analyser.bundle.layout;
        lay.var_index(name).ok_or_else(|| {
            let names: Vec<&str> = lay.variables.iter().map(|v| v.name.as_str()).collect();
            Error::arg(format!("variable '{name}' is not in the bundle (variables: {})", names.join(", ")))
        })
    }

    /// Checks `shape`/`order` for variable `name` and binds `data` to it.
    ///
    /// # Safety
    /// `data` must point to an array of the bound shape that stays valid (not freed or moved) while bound, and is
    /// not accessed by the host during calls on this context.
    pub unsafe fn bind(&mut self, name: &str, data: HostData, shape: &[i64], order: i32) -> Result<()> {
        let v = self.var_index(name).map_err(|e| e.context("bind_field"))?;
        let lay = &self.analyser.bundle.layout;
        let var = &lay.variables[v];
        let (nlat, nlon) = (lay.grid.nlat() as i64, lay.grid.nlon() as i64);
        let Some(order) = Order::from_code(order) else {
            return Err(Error::arg(format!("bind_field '{name}': order = {order} (use 0 for C, 1 for Fortran)")));
        };
        let want_ndim = if var.is_surface() { 2 } else { 3 };
        if shape.len() != want_ndim {
            return Err(Error::arg(format!(
                "bind_field '{name}': ndim = {}, but '{name}' is {} and needs ndim = {want_ndim}",
                shape.len(),
                if var.is_surface() { "a surface field" } else { "an upper-air field" }
            )));
        }
        let mut want = if var.is_surface() { vec![nlat, nlon] } else { vec![var.nlev as i64, nlat, nlon] };
        if order == Order::Fortran {
            want.reverse();
        }
        if shape != want.as_slice() {
            return Err(Error::arg(format!(
                "bind_field '{name}': shape {shape:?} does not match the bundle grid; expected {want:?} in {} order",
                if order == Order::C { "C (lev, lat, lon)" } else { "Fortran (lon, lat, lev)" }
            )));
        }
        let is_null = match data {
            HostData::F32(p) => p.is_null(),
            HostData::F64(p) => p.is_null(),
        };
        if is_null {
            return Err(Error::new(Status::NullPointer, format!("bind_field '{name}': data is NULL")));
        }
        // Two variables in one array would read each other's background and overwrite each other's analysis.
        let n = var.nchan() * lay.grid.npoints();
        for (w, other) in self.fields.iter().enumerate() {
            let Some(o) = *other else { continue };
            let m = lay.variables[w].nchan() * lay.grid.npoints();
            if w != v && data.overlaps(n, o, m) {
                return Err(Error::arg(format!(
                    "bind_field '{name}': the array overlaps the array bound to '{}'; every variable needs its own memory",
                    lay.variables[w].name
                )));
            }
        }
        // C (lev, lat, lon) and Fortran (lon, lat, lev) describe the same memory: longitude fastest.
        self.fields[v] = Some(data);
        self.b_point = None;
        Ok(())
    }

    /// An empty observation list with room for `n` observations, or an error naming the call `what` (e.g.
    /// "set_withheld") if memory for them cannot be had (a host count too large for memory must not abort the
    /// process).
    pub fn obs_buffer(what: &str, n: usize) -> Result<Vec<Observation>> {
        let mut v = Vec::new();
        v.try_reserve_exact(n).map_err(|_| {
            Error::arg(format!(
                "{what}: cannot allocate memory for n = {n} observations ({} bytes)",
                (n as u128) * std::mem::size_of::<Observation>() as u128
            ))
        })?;
        Ok(v)
    }

    /// Sets the observations (copied). All slices must have the same, non-zero length; `level` is ignored for surface
    /// variables; unknown variable ids and invalid values are flagged at the analysis, not rejected here.
    pub fn set_obs(
        &mut self,
        var: &[i32],
        lat: &[f64],
        lon: &[f64],
        level: &[f64],
        value: &[f64],
        sigma: &[f64],
    ) -> Result<()> {
        let buf = Self::obs_buffer("set_obs", var.len())?;
        self.set_obs_in(buf, var, lat, lon, level, value, sigma)
    }

    /// [`Self::set_obs`] into a buffer from [`Self::obs_buffer`].
    #[allow(clippy::too_many_arguments)]
    pub fn set_obs_in(
        &mut self,
        mut buf: Vec<Observation>,
        var: &[i32],
        lat: &[f64],
        lon: &[f64],
        level: &[f64],
        value: &[f64],
        sigma: &[f64],
    ) -> Result<()> {
        if var.is_empty() {
            return Err(Error::arg("set_obs: n = 0 (zero-length observation arrays); pass at least one observation"));
        }
        self.fill_obs("set_obs", &mut buf, var, lat, lon, level, value, sigma)?;
        self.obs = buf;
        self.qc = None;
        self.obs_op = None;
        Ok(())
    }

    /// Sets the withheld observations of the next analyses (arrays as for [`Self::set_obs`]; none clears them).
    /// They never enter an analysis: each report compares them with the background and the analysis
    /// ([`crate::var::withheld`], report section `withheld`), a check of the analysis without truth.
    pub fn set_withheld(
        &mut self,
        var: &[i32],
        lat: &[f64],
        lon: &[f64],
        level: &[f64],
        value: &[f64],
        sigma: &[f64],
    ) -> Result<()> {
        let buf = Self::obs_buffer("set_withheld", var.len())?;
        self.set_withheld_in(buf, var, lat, lon, level, value, sigma)
    }

    /// [`Self::set_withheld`] into a buffer from [`Self::obs_buffer`].
    #[allow(clippy::too_many_arguments)]
    pub fn set_withheld_in(
        &mut self,
        mut buf: Vec<Observation>,
        var: &[i32],
        lat: &[f64],
        lon: &[f64],
        level: &[f64],
        value: &[f64],
        sigma: &[f64],
    ) -> Result<()> {
        self.fill_obs("set_withheld", &mut buf, var, lat, lon, level, value, sigma)?;
        self.withheld = buf;
        Ok(())
    }

    /// Checks the arrays' lengths and fills `buf` with their observations (`what` names the call in errors).
    #[allow(clippy::too_many_arguments)]
    fn fill_obs(
        &self,
        what: &str,
        buf: &mut Vec<Observation>,
        var: &[i32],
        lat: &[f64],
        lon: &[f64],
        level: &[f64],
        value: &[f64],
        sigma: &[f64],
    ) -> Result<()> {
        let n = var.len();
        let lens = [
            ("lat", lat.len()),
            ("lon", lon.len()),
            ("level", level.len()),
            ("value", value.len()),
            ("sigma", sigma.len()),
        ];
        if let Some((name, l)) = lens.iter().find(|(_, l)| *l != n) {
            return Err(Error::arg(format!(
                "{what}: '{name}' has {l} values but 'var' has {n}; all arrays need equal length"
            )));
        }
        let lay = &self.analyser.bundle.layout;
        let nvar = lay.variables.len();
        buf.clear();
        buf.try_reserve_exact(n)
            .map_err(|_| Error::arg(format!("{what}: cannot allocate memory for n = {n} observations")))?;
        buf.extend((0..n).map(|i| {
            let v = (var[i] >= 0 && (var[i] as usize) < nvar).then_some(var[i] as usize);
            // No name: the host identifies variables by index (and one allocation per observation would make
            // a large set fail outside the fallible reservation above).
            Observation {
                var: v,
                var_name: String::new(),
                lat: lat[i],
                lon: lon[i],
                level: Some(level[i]).filter(|_| v.is_some_and(|v| !lay.variables[v].is_surface())),
                value: value[i],
                sigma: sigma[i],
                time: 0.0,
                line: None,
                malformed: None,
            }
        }));
        Ok(())
    }

    /// Number of observations set.
    pub fn n_obs(&self) -> usize {
        self.obs.len()
    }

    /// The bundle's layout (grid, vertical coordinate, variables in state order).
    pub fn layout(&self) -> &crate::bundle::grid::Layout {
        &self.analyser.bundle.layout
    }

    /// Place of variable `v` (0-based identifier, as for `set_obs`) in the state vector.
    pub fn var_layout(&self, v: usize) -> Result<VarLayout> {
        let lay = self.layout();
        let var = lay.variables.get(v).ok_or_else(|| {
            Error::arg(format!(
                "variable identifier {v} is out of range: the bundle has {} variables (0-based)",
                lay.variables.len()
            ))
        })?;
        let r = lay.var_range(v);
        Ok(VarLayout {
            name: var.name.clone(),
            units: var.units.clone(),
            nlev: var.nlev,
            offset: r.start,
            length: r.len(),
        })
    }

    /// H of the observations set and their geometric QC flags (used, invalid, outside the domain or the vertical
    /// range, unknown variable): exactly the operator and flags an analysis of these observations builds before its
    /// background check (same weights, same error-sd floor). Built once per observation set.
    fn obs_operator(&mut self) -> Result<&(ObsOperator, Vec<QcFlag>)> {
        if self.obs.is_empty() {
            return Err(not_ready("no observations: call set_obs before using the observation operator"));
        }
        if self.obs_op.is_none() {
            let b = &self.analyser.bundle;
            let mut qc = vec![QcFlag::Used; self.obs.len()];
            let floors = crate::obs::sigma_floors(&b.layout, &b.std);
            let h = ObsOperator::try_build(&b.layout, &self.obs, &mut qc, &floors)?;
            self.obs_op = Some((h, qc));
        }
        Ok(self.obs_op.as_ref().expect("built above"))
    }

    /// Geometric QC flags of the observations set (see [`Self::obs_h`]).
    pub fn obs_geometric_qc(&mut self) -> Result<Vec<QcFlag>> {
        Ok(self.obs_operator()?.1.clone())
    }

    /// H x for every observation set, in their order, from `x` (state layout) or, when `None`, from the bound
    /// arrays, with the geometric QC flag of each; observations without a row of H (flag other than `Used`) get NaN.
    /// The values are bit-identical to the H x_b of an analysis of the same observations on the same background.
    pub fn obs_h(&mut self, x: Option<&[f64]>) -> Result<(Vec<f64>, Vec<QcFlag>)> {
        let gathered;
        let xs = match x {
            Some(x) => x,
            None => {
                gathered = self.gather()?;
                &gathered
            }
        };
        self.analyser.check_state(xs, "obs_h: state x")?;
        let (h, qc) = self.obs_operator()?;
        let mut rows = vec![0.0; h.nrows()];
        h.apply(xs, &mut rows);
        let mut hx = vec![f64::NAN; qc.len()];
        for (r, &i) in h.rows.iter().enumerate() {
            hx[i] = rows[r];
        }
        Ok((hx, qc.clone()))
    }

    /// x = H^T y (state layout) for `y`, one value per observation set, in their order; values of observations
    /// without a row of H are ignored (they may be NaN). The exact transpose of [`Self::obs_h`].
    pub fn obs_h_ad(&mut self, y: &[f64]) -> Result<Vec<f64>> {
        let n = self.obs.len();
        let state_len = self.state_size();
        if y.len() != n && n > 0 {
            return Err(Error::arg(format!("obs_h_ad: y has {} values but {n} observations are set", y.len())));
        }
        let (h, _) = self.obs_operator()?;
        let rows: Vec<f64> = h.rows.iter().map(|&i| y[i]).collect();
        if let Some(r) = rows.iter().position(|v| !v.is_finite()) {
            return Err(Error::data(format!(
                "obs_h_ad: y[{}] = {} is not finite (observation {} passed the geometric checks)",
                h.rows[r], rows[r], h.rows[r]
            )));
        }
        let mut x = vec![0.0; state_len];
        h.adjoint(&rows, &mut x);
        Ok(x)
    }

    /// The measured float32 noise floor of the host's B operator (option `b_operator`) at its linearisation point:
    /// nonlinearity of U and U^T and the adjoint mismatch ([`crate::coupling::noise`]), worst over `trials` trials.
    pub fn bsqrt_noise(&mut self, seed: u64, trials: usize) -> Result<crate::coupling::noise::NoiseFloor> {
        if !(1..=100).contains(&trials) {
            return Err(Error::arg(format!("bsqrt_noise: trials = {trials} must be in 1..=100")));
        }
        let kind = self.ensure_b()?;
        let b = &self.analyser.bundle;
        let scale = crate::coupling::noise::dual_scale(&b.std, b.layout.grid.npoints());
        self.analyser.with_b_in_force(kind, |op, ae| crate::coupling::noise::noise_floor(op, ae, &scale, seed, trials))
    }

    /// Sets the times (hours from the analysis time) of the observations set last, in their order; `set_obs`
    /// resets every time to 0. Non-finite times are flagged `Invalid` by method l4dvar (other methods ignore times).
    pub fn set_obs_times(&mut self, times: &[f64]) -> Result<()> {
        if times.len() != self.obs.len() {
            return Err(Error::arg(format!(
                "set_obs_times: {} times for {} observations (call set_obs first; one time per observation)",
                times.len(),
                self.obs.len()
            )));
        }
        self.obs.iter_mut().zip(times).for_each(|(o, t)| o.time = *t);
        self.qc = None;
        self.obs_op = None;
        Ok(())
    }

    /// Installs (or, with `None`, removes) the host's step model for method l4dvar.
    pub fn set_step_model(&mut self, m: Option<HostStep>) {
        self.step_model = m;
    }

    /// Adjoint and Taylor tests of the step model (the host's, else the bundle's) and of the chained 4D-Var
    /// transform over `nslots` slots one step apart, at the bound background.
    pub fn l4dvar_check(&mut self, nslots: usize, seed: u64) -> Result<ForecastChecks> {
        let x_b = self.gather()?;
        let eps: Vec<f64> = (-2..6).map(|k| 10f64.powi(-k)).collect();
        let model = self.step_model.as_mut().map(|m| m as &mut dyn StepModel);
        self.analyser.forecast_checks(&x_b, model, nslots, &eps, seed)?.ok_or_else(|| {
            not_ready("no step model: the bundle has no [forecast] table and the host set none (lda_set_step_model)")
        })
    }

    /// Reads all bound arrays into a state vector (error naming the first unbound field).
    pub fn gather(&self) -> Result<Vec<f64>> {
        let lay = &self.analyser.bundle.layout;
        let mut x = vec![0.0; lay.state_len()];
        for (v, var) in lay.variables.iter().enumerate() {
            let b = self.fields[v]
                .ok_or_else(|| not_ready(format!("field '{}' is not bound (bind it before this call)", var.name)))?;
            let r = lay.var_range(v);
            let (off, n) = (r.start, r.len());
            // SAFETY: bound arrays hold n elements and stay valid while bound (contract of `bind`).
            match b {
                HostData::F32(p) => {
                    let s = unsafe { std::slice::from_raw_parts(p, n) };
                    x[off..off + n].iter_mut().zip(s).for_each(|(d, s)| *d = *s as f64);
                }
                HostData::F64(p) => x[off..off + n].copy_from_slice(unsafe { std::slice::from_raw_parts(p, n) }),
            }
        }
        Ok(x)
    }

    /// Writes a state vector into all bound arrays.
    pub(crate) fn scatter(&mut self, x: &[f64]) {
        let lay = &self.analyser.bundle.layout;
        for v in 0..lay.variables.len() {
            let Some(b) = self.fields[v] else { continue };
            let r = lay.var_range(v);
            let (off, n) = (r.start, r.len());
            // SAFETY: as in gather; the host does not touch the arrays during the call (contract of `bind`).
            match b {
                HostData::F32(p) => {
                    let s = unsafe { std::slice::from_raw_parts_mut(p, n) };
                    s.iter_mut().zip(&x[off..off + n]).for_each(|(d, s)| *d = *s as f32);
                }
                HostData::F64(p) => unsafe { std::slice::from_raw_parts_mut(p, n) }.copy_from_slice(&x[off..off + n]),
            }
        }
    }

    /// Runs an analysis on the bound background and writes the result back only on success.
    pub fn analyse(&mut self, method: Option<&str>) -> Result<()> {
        let m = match method {
            Some(m) => Method::parse(m)?,
            None => self.analyser.options.method,
        };
        if self.obs.is_empty() {
            return Err(not_ready("no observations: call set_obs before analyse"));
        }
        self.qc = None;
        self.report = None;
        let x_b = self.gather()?;
        // the host's model: l4dvar's step model, and what forecasts the online mix's candidates (mix_score = "model")
        let model = self.step_model.as_mut().map(|s| s as &mut dyn StepModel);
        // the state files (adaptive_state, mix_state) are written last before the arrays, after every other step
        // that can fail: a failure leaves both the files and the host arrays as they were
        self.analyser.defer_adaptive_commit(true);
        let done = self.analyser.analyse_cycling(&x_b, &self.obs, m, model).and_then(|mut result| {
            if !self.withheld.is_empty() {
                result.report.withheld = Some(self.analyser.verify_withheld(&self.withheld, &x_b, &result.analysis)?);
            }
            self.analyser.commit_adaptive_state()?;
            Ok(result)
        });
        self.analyser.defer_adaptive_commit(false);
        let result = done?;
        self.scatter(&result.output);
        self.qc = Some(result.qc);
        self.report = Some(result.report.to_json());
        Ok(())
    }

    /// QC flags of the last successful analysis.
    pub fn obs_qc(&self) -> Result<&[QcFlag]> {
        self.qc.as_deref().ok_or_else(|| not_ready("no analysis has succeeded since the observations were set"))
    }

    /// JSON report of the last successful analysis.
    pub fn report_json(&self) -> Result<&str> {
        self.report.as_deref().ok_or_else(|| not_ready("no analysis has succeeded yet"))
    }

    /// The kind of B operator served to the host (option `b_operator`).
    pub fn b_kind(&self) -> Result<BKind> {
        Ok(self.analyser.options.b_operator)
    }

    /// Control size of the host's B operator (the latent size for the latent B), with the ensemble part's when
    /// members are set (`Analyser::set_ensemble`).
    pub fn control_size(&self) -> Result<usize> {
        let kind = self.b_kind()?;
        Ok(self.analyser.control_size(kind)? + self.analyser.ensemble_controls(kind))
    }

    /// Full state length.
    pub fn state_size(&self) -> usize {
        self.analyser.bundle.layout.state_len()
    }

    /// (Re)linearises the host's B operator at the bound background.
    pub fn b_linearise(&mut self) -> Result<()> {
        let kind = self.b_kind()?;
        let x_b = self.gather()?;
        let z = match kind {
            BKind::Static => {
                self.analyser.check_state(&x_b, "background")?;
                None
            }
            _ => Some(self.analyser.encode_background(&x_b)?),
        };
        self.analyser.prepare_b(kind, z.as_deref())?;
        self.analyser.prepare_ensemble(kind, z.as_deref())?;
        self.b_point = Some((kind, z));
        Ok(())
    }

    /// Linearises at the first use after a bind; afterwards makes sure the analyser's cached operators are at this
    /// context's point again (an analysis of another background may have moved them).
    fn ensure_b(&mut self) -> Result<BKind> {
        match &self.b_point {
            None => self.b_linearise()?,
            Some((kind, z)) => {
                self.analyser.prepare_b(*kind, z.as_deref())?;
                self.analyser.prepare_ensemble(*kind, z.as_deref())?;
            }
        }
        Ok(self.b_point.as_ref().expect("linearised above").0)
    }

    /// Checks that `n` is the control size of the host's B operator (`what` names the argument).
    pub fn check_control_len(&self, what: &str, n: usize) -> Result<()> {
        let want = self.control_size()?;
        if n != want {
            return Err(Error::arg(format!(
                "{what} has {n} values, but the control size (lda_control_size) is {want}"
            )));
        }
        Ok(())
    }

    /// Checks that `n` is the state size (`what` names the argument).
    pub fn check_state_len(&self, what: &str, n: usize) -> Result<()> {
        let want = self.state_size();
        if n != want {
            return Err(Error::arg(format!("{what} has {n} values, but the state size (lda_state_size) is {want}")));
        }
        Ok(())
    }

    /// Writes a state vector into `out` (length checked by the caller before any model ran) or, when `out` is
    /// `None`, into the bound arrays.
    fn deliver(&mut self, what: &str, x: &[f64], out: Option<&mut [f64]>) -> Result<()> {
        match out {
            Some(out) => {
                self.check_state_len(&format!("{what}: output"), out.len())?;
                out.copy_from_slice(x);
            }
            None => self.scatter(x),
        }
        Ok(())
    }

    /// x = U v as a new vector (state layout).
    pub fn bsqrt_vec(&mut self, v: &[f64]) -> Result<Vec<f64>> {
        self.check_control_len("control vector v", v.len())?;
        if let Some(i) = v.iter().position(|x| !x.is_finite()) {
            return Err(Error::data(format!("control vector v[{i}] = {} is not finite", v[i])));
        }
        let kind = self.ensure_b()?;
        let mut x = vec![0.0; self.state_size()];
        self.analyser.with_b_in_force(kind, |b, ae| b.sqrt(ae, v, &mut x))?;
        Ok(x)
    }

    /// x = U v into `x_out`, or into the bound arrays when `x_out` is `None`. Lengths are checked before any model
    /// runs; `x_out` is written only on success.
    pub fn bsqrt(&mut self, v: &[f64], x_out: Option<&mut [f64]>) -> Result<()> {
        if let Some(out) = &x_out {
            self.check_state_len("bsqrt: output", out.len())?;
        }
        let x = self.bsqrt_vec(v)?;
        self.deliver("bsqrt", &x, x_out)
    }

    /// v = U^T x as a new vector, from `x` (state layout) or from the bound arrays when `x` is `None`.
    pub fn bsqrt_ad_vec(&mut self, x: Option<&[f64]>) -> Result<Vec<f64>> {
        let gathered;
        let xs = match x {
            Some(x) => x,
            None => {
                gathered = self.gather()?;
                &gathered
            }
        };
        self.check_state_len("state x", xs.len())?;
        if let Some(i) = xs.iter().position(|x| !x.is_finite()) {
            return Err(Error::data(format!("x is not finite at {}", self.analyser.bundle.layout.describe_index(i))));
        }
        let kind = self.ensure_b()?;
        let mut v = vec![0.0; self.control_size()?];
        self.analyser.with_b_in_force(kind, |b, ae| b.sqrt_ad(ae, xs, &mut v))?;
        Ok(v)
    }

    /// v = U^T x from `x` (state layout), or from the bound arrays when `x` is `None`. Lengths are checked before
    /// any model runs; `v_out` is written only on success.
    pub fn bsqrt_ad(&mut self, x: Option<&[f64]>, v_out: &mut [f64]) -> Result<()> {
        self.check_control_len("bsqrt_ad: output", v_out.len())?;
        let v = self.bsqrt_ad_vec(x)?;
        v_out.copy_from_slice(&v);
        Ok(())
    }

    /// diag(U U^T) (the background-error variance per state element) as a new vector. Computed once per
    /// linearisation (and shared with the background check of an analysis of the same background).
    pub fn bvariance_vec(&mut self) -> Result<Vec<f64>> {
        let kind = self.ensure_b()?;
        self.analyser.with_b_in_force(kind, |b, ae| Ok(b.variance(ae)?.to_vec()))
    }

    /// diag(U U^T) into `out`, or into the bound arrays when `out` is `None`. The length is checked before any model
    /// runs; `out` is written only on success.
    pub fn bvariance(&mut self, out: Option<&mut [f64]>) -> Result<()> {
        if let Some(out) = &out {
            self.check_state_len("bvariance: output", out.len())?;
        }
        let var = self.bvariance_vec()?;
        self.deliver("bvariance", &var, out)
    }

    /// A draw x = U xi, xi ~ N(0, I) from `seed`, as a new vector (state layout).
    pub fn brandomize_vec(&mut self, seed: u64) -> Result<Vec<f64>> {
        let kind = self.ensure_b()?;
        let mut x = vec![0.0; self.state_size()];
        self.analyser.with_b_in_force(kind, |b, ae| b.randomize(ae, seed, &mut x))?;
        Ok(x)
    }

    /// A draw x = U xi, xi ~ N(0, I) from `seed`, into `out` or the bound arrays. The length is checked before any
    /// model runs; `out` is written only on success.
    pub fn brandomize(&mut self, seed: u64, out: Option<&mut [f64]>) -> Result<()> {
        if let Some(out) = &out {
            self.check_state_len("brandomize: output", out.len())?;
        }
        let x = self.brandomize_vec(seed)?;
        self.deliver("brandomize", &x, out)
    }
}
