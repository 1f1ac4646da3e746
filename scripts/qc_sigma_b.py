"""Usage: python3 scripts/qc_sigma_b.py DATA (the robustness matrix's data folder, after latentda-matrix).

QC decisions of the background check: calibrated sigma_b (bundle latent_b_variance) against the flow-dependent
randomised one, on robustness-matrix cases (issue 23, item 9)."""
import glob, sys, json, time, numpy as np, pandas as pd
from latentda_train import cases as CS, data as D
from latentda_train.cycling import Latentda, HostFields
import os
HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("LATENTDA_DATA", "data")
LIB = os.path.join(HERE, "target", "release", "liblatentda.so"); BUNDLE = os.path.join(HERE, "models", "speedy-t31")
ort = "backend = \"auto\"\n"
names = [v[0] for v in D.VARS]
rows = []
tot = {}
for cell in ["a48", "b48", "c6"]:
    for case in sorted(glob.glob(f"{DATA}/matrix/{cell}/case_*"))[:4]:
        x = CS.read_state(case + "/background.nc")
        for net in ["uniform", "sonde"]:
            ob = pd.read_csv(f"{case}/obs_{net}.csv")
            var = np.array([names.index(v) for v in ob["var"]], np.int32)
            for method in ["l3dvar", "hybrid"]:
                flags, nvar, t = {}, {}, {}
                for mode in ["calibrated", "flow"]:
                    lda = Latentda(LIB, BUNDLE, ort + f"bg_check_sigma_b = \"{mode}\"\n")
                    host = HostFields(lda, 48, 96); host.load(x)
                    lda.set_obs(var, ob["lat"], ob["lon"], ob["level"], ob["value"], ob["sigma"])
                    t0 = time.time(); lda.analyse(method); t[mode] = time.time() - t0
                    flags[mode] = lda.obs_qc(len(ob)); r = lda.report()
                    nvar[mode] = r["timings"]["variance_s"]; lda.close()
                changed = int(np.sum(flags["calibrated"] != flags["flow"]))
                rej = {m: int(np.sum(flags[m] == 5)) for m in flags}
                rows.append((cell, case.split("/")[-1], net, method, len(ob), rej["calibrated"], rej["flow"], changed))
                print(*rows[-1], f"t {t['calibrated']:.2f} vs {t['flow']:.2f} s, diag B {nvar['flow']:.2f} s", flush=True)
df = pd.DataFrame(rows, columns=["cell", "case", "network", "method", "n_obs", "rejected_calibrated", "rejected_flow", "decisions_changed"])
print(df.groupby(["method", "network"])[["n_obs", "rejected_calibrated", "rejected_flow", "decisions_changed"]].sum().to_string())
df.to_csv(os.path.join(DATA, "matrix", "qc_sigma_b.csv"), index=False)
