//! The demo's one table: scores, observation statistics, balance, single-observation responses, minimisation and
//! timings, one column per method next to the background.

use std::fmt::Write;

use super::Demo;
use latentda::var::options::Method;

/// Width of the row-label column and of each value column.
const LABEL: usize = 34;
const COL: usize = 22;

/// A method's name as printed.
pub fn method_label(m: Method) -> &'static str {
    match m {
        Method::Var3d => "3D-Var (static B)",
        Method::L3dvar => "L3DVar (latent B)",
        Method::Hybrid => "hybrid (latent + static B)",
        Method::L4dvar => "L4DVar (latent B, step model)",
    }
}

/// `x` with `sig` significant digits, fixed notation for moderate magnitudes.
pub fn sig(x: f64, sig: usize) -> String {
    if !x.is_finite() {
        return "-".into();
    }
    if x == 0.0 {
        return "0".into();
    }
    let e = x.abs().log10().floor() as i32;
    if !(-2..5).contains(&e) {
        return format!("{:.*e}", sig.saturating_sub(1), x);
    }
    let decimals = (sig as i32 - 1 - e).max(0) as usize;
    format!("{x:.decimals$}")
}

fn row(s: &mut String, label: &str, cells: &[String]) {
    let _ = write!(s, "{label:<LABEL$}");
    for c in cells {
        let _ = write!(s, "{c:>COL$}");
    }
    s.push('\n');
}

fn section(s: &mut String, title: &str) {
    let _ = writeln!(s, "{title}");
}

impl Demo {
    /// The comparison table, as printed by `latentda demo`.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let lay = &self.layout;
        let o = &self.options;
        let _ = writeln!(
            s,
            "latentda demo: bundle {}, case {}, observations {} ({} rows{})",
            self.bundle,
            self.case.display(),
            self.obs_path.display(),
            self.obs.len(),
            if self.input_problems.is_empty() {
                String::new()
            } else {
                format!(", {} malformed", self.input_problems.len())
            }
        );
        let _ = writeln!(s, "backend {}, device {}, {} thread(s)", self.backend, self.device, o.threads);
        let _ = writeln!(
            s,
            "options: {} outer loop(s) x at most {} CG iterations, stop at a {:.0e} gradient reduction; background check k = {}",
            o.outer_loops, o.max_inner, o.gradient_reduction, o.bg_check
        );
        if let Some((path, n, latest)) = &self.obs4d {
            let _ = writeln!(
                s,
                "l4dvar: the {n} observations of {} over a {latest} h window; the 3D methods: the analysis-time ones",
                path.display()
            );
        }
        for (m, why) in &self.skipped {
            let _ = writeln!(s, "not run: {} ({why})", method_label(*m));
        }
        s.push('\n');
        let mut head = vec!["background".to_string()];
        head.extend(self.runs.iter().map(|r| r.method.name().to_string()));
        row(&mut s, "", &head);

        section(&mut s, "RMSE against truth (cos-lat weighted, all levels; change vs background, * best)");
        for (v, var) in lay.variables.iter().enumerate() {
            let rb = self.rmse_background[v];
            let best = self.runs.iter().map(|r| r.rmse[v]).fold(f64::INFINITY, f64::min);
            let mut cells = vec![sig(rb, 4)];
            for r in &self.runs {
                let ra = r.rmse[v];
                let star = if ra == best && self.runs.len() > 1 { "*" } else { " " };
                cells.push(format!("{} {:+6.1}%{star}", sig(ra, 4), 100.0 * (ra / rb - 1.0)));
            }
            row(&mut s, &format!("  {} ({})", var.name, self.units[v]), &cells);
        }

        section(&mut s, "observations: given | used / rejected by QC");
        for (v, var) in lay.variables.iter().enumerate() {
            let given = self
                .runs
                .iter()
                .find(|r| r.method != Method::L4dvar)
                .map_or(0, |r| r.analysis.report.variables[v].n_total);
            let mut cells = vec![given.to_string()];
            for r in &self.runs {
                let st = &r.analysis.report.variables[v];
                cells.push(format!("{} / {}", st.n_used, st.n_rejected));
            }
            row(&mut s, &format!("  {}", var.name), &cells);
        }
        section(&mut s, "O-B rms -> O-A rms over the used observations");
        for (v, var) in lay.variables.iter().enumerate() {
            if self.runs.iter().all(|r| r.analysis.report.variables[v].n_used == 0) {
                continue;
            }
            let mut cells = vec![String::new()];
            for r in &self.runs {
                let st = &r.analysis.report.variables[v];
                cells.push(format!("{} -> {}", sig(st.omb_rms, 3), sig(st.oma_rms, 3)));
            }
            row(&mut s, &format!("  {} ({})", var.name, self.units[v]), &cells);
        }

        section(&mut s, "geostrophic balance, |lat| > 20 (corr of wind with geostrophic wind; background column: truth - background)");
        let bal = |b: &Option<latentda::var::report::BalanceStats>| {
            b.as_ref().map_or("-".to_string(), |b| format!("{:.3}", b.correlation))
        };
        let mut cells = vec![bal(&self.truth_balance)];
        cells.extend(self.runs.iter().map(|r| bal(&r.analysis.report.balance)));
        row(&mut s, "  of the increment", &cells);

        if let Some(e0) = self.single.first() {
            section(
                &mut s,
                &format!(
                    "single t observations (+{} K innovation, {} K error) at {}E, level {}: t increment there, circulation within {} km",
                    super::single_obs::INNOVATION,
                    super::single_obs::SIGMA,
                    super::SINGLE_OBS_LON,
                    lay.vertical.levels[e0.level],
                    super::single_obs::RADIUS_KM
                ),
            );
            for (i, r0) in e0.responses.iter().enumerate() {
                let ns = if r0.lat >= 0.0 { format!("{:.0}N", r0.lat) } else { format!("{:.0}S", -r0.lat) };
                let mut cells = vec![String::new()];
                let mut wind = vec![String::new()];
                let mut corr = vec![String::new()];
                for r in &self.runs {
                    match self.single.iter().find(|e| e.method == r.method).and_then(|e| e.responses.get(i)) {
                        Some(x) => {
                            cells.push(format!("{:+.2} K {}", x.at_obs, x.circulation()));
                            wind.push(format!("{} m/s, {}", sig(x.wind_max, 2), sig(x.vorticity, 2)));
                            corr.push(match &x.balance {
                                Some(b) if b.wind_rms > 0.0 => format!("{:.3}", b.correlation),
                                _ => "- (no wind)".into(),
                            });
                        }
                        None => {
                            cells.push("-".into());
                            wind.push("-".into());
                            corr.push("-".into());
                        }
                    }
                }
                row(&mut s, &format!("  {ns}: t incr, circulation"), &cells);
                row(&mut s, "      max |wind incr|, vorticity s-1", &wind);
                row(&mut s, "      balance within 2500 km", &corr);
            }
        }

        section(&mut s, "minimisation");
        let solver = |f: &dyn Fn(&latentda::var::solver::SolveInfo) -> String| -> Vec<String> {
            let mut c = vec![String::new()];
            c.extend(self.runs.iter().map(|r| r.analysis.report.solver.as_ref().map_or("-".into(), f)));
            c
        };
        row(&mut s, "  J initial -> final", &solver(&|i| format!("{} -> {}", sig(i.j_initial, 3), sig(i.j_final, 3))));
        row(
            &mut s,
            "  |grad J| reduction",
            &solver(&|i| {
                if i.grad_reduction > 0.0 {
                    format!("{:.2e}-fold", 1.0 / i.grad_reduction)
                } else {
                    "exact".into()
                }
            }),
        );
        row(&mut s, "  CG iterations (TL/AD pairs)", &solver(&|i| i.inner_total.to_string()));
        let mut ctrl = vec![String::new()];
        ctrl.extend(self.runs.iter().map(|r| r.analysis.report.control_size.to_string()));
        row(&mut s, "  control vector size", &ctrl);

        section(&mut s, "time, seconds (model runs: count)");
        let t = |f: &dyn Fn(&latentda::var::report::Timings) -> String| -> Vec<String> {
            let mut c = vec![String::new()];
            c.extend(self.runs.iter().map(|r| f(&r.analysis.report.timings)));
            c
        };
        row(&mut s, "  encode", &t(&|t| format!("{:.3} ({})", t.encode_s, t.n_encode)));
        row(&mut s, "  decode", &t(&|t| format!("{:.3} ({})", t.decode_s, t.n_decode)));
        row(&mut s, "  TL", &t(&|t| format!("{:.3} ({})", t.tl_s, t.n_tl)));
        row(&mut s, "  AD", &t(&|t| format!("{:.3} ({})", t.ad_s, t.n_ad)));
        // diag B: the bundle's calibrated latent B variance (no model run, option bg_check_sigma_b), or the flow
        // estimate, computed once per background and then reused (hence 0 TL runs for the hybrid after L3DVar); the
        // static B's exact variance is part of "other".
        let mut diag = vec![String::new()];
        diag.extend(self.runs.iter().map(|r| {
            let t = &r.analysis.report.timings;
            let calibrated = r.analysis.report.background_check.sigma_b.contains("calibrated");
            match (r.method, t.n_variance) {
                (Method::Var3d, _) => "(exact, in other)".to_string(),
                (_, 0) if calibrated => "0 (calibrated)".to_string(),
                (_, 0) => "0 (reused)".to_string(),
                (_, n) => format!("{:.3} ({n} TL)", t.variance_s),
            }
        }));
        row(&mut s, "  diag B for the background check", &diag);
        row(&mut s, "  H and H^T", &t(&|t| format!("{:.4}", t.h_s)));
        row(&mut s, "  other (solver, static B, transforms)", &t(&|t| format!("{:.3}", t.overhead_s - t.h_s)));
        row(&mut s, "  analysis total", &t(&|t| format!("{:.3}", t.total_s)));
        let _ = writeln!(
            s,
            "demo: open bundle {:.2} s, single-observation runs {:.2} s, figures {:.2} s, whole demo {:.2} s",
            self.open_s, self.single_s, self.figures_s, self.total_s
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::sig;

    #[test]
    fn significant_digits() {
        assert_eq!(sig(2.46804, 4), "2.468");
        assert_eq!(sig(296.36, 4), "296.4");
        assert_eq!(sig(2.4398e-4, 3), "2.44e-4");
        assert_eq!(sig(-0.0123, 2), "-0.012");
        assert_eq!(sig(12345.0, 3), "12345");
        assert_eq!(sig(f64::NAN, 3), "-");
        assert_eq!(sig(0.0, 3), "0");
    }
}
