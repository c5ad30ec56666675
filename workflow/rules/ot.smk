# Rules of the 'ot' stage (see README, 'Workflow' and 'Optimal-transport test').
# Table 3 of Wang et al. (2025): is the PF-ODE map an optimal-transport map? Alg. 2 with the exact
# mixture Fisher, confirmed by the autograd Jacobian of the same solver and by exact discrete OT (POT).
# One thread per job: the work is many tiny (B, d, d) operations, where extra torch threads only spin.


rule ot_table3:
    output:
        csv=report(
            f"{RESULTS}/ot/table3.csv",
            caption="../report/ot_table3.rst",
            category="Optimal transport",
        ),
        markdown=report(
            f"{RESULTS}/ot/table3.md",
            caption="../report/ot_table3.rst",
            category="Optimal transport",
        ),
        heatmap=report(
            f"{RESULTS}/ot/table3_heatmap.png",
            caption="../report/ot_heatmap.rst",
            category="Optimal transport",
        ),
        fundamental=directory(f"{RESULTS}/ot/fundamental.zarr"),
        paths=directory(f"{RESULTS}/ot/paths.zarr"),
    log:
        f"{RESULTS}/logs/ot/table3.log",
    conda:
        "../envs/dfcore.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        ot=ot_table3_params(),
        schedules=schedules_of(config["ot"]["schedules"]),
        seed=config["seed"],
        device=config["device"],
    script:
        "../scripts/ot_table3.py"


rule ot_convergence:
    output:
        csv=f"{RESULTS}/ot/convergence.csv",
        plot=report(
            f"{RESULTS}/ot/convergence.png",
            caption="../report/ot_convergence.rst",
            category="Optimal transport",
        ),
    log:
        f"{RESULTS}/logs/ot/convergence.log",
    conda:
        "../envs/dfcore.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        ot=ot_convergence_params(),
        schedules=schedules_of(config["ot"]["schedules"]),
        seed=config["seed"],
        device=config["device"],
    script:
        "../scripts/ot_convergence.py"


rule ot_protocols:
    output:
        csv=report(
            f"{RESULTS}/ot/protocols.csv",
            caption="../report/ot_protocols.rst",
            category="Optimal transport",
        ),
        plot=report(
            f"{RESULTS}/ot/protocols.png",
            caption="../report/ot_protocols.rst",
            category="Optimal transport",
        ),
    log:
        f"{RESULTS}/logs/ot/protocols.log",
    conda:
        "../envs/dfcore.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=20,
    params:
        ot=ot_protocols_params(),
        schedules=schedules_of(config["ot"]["schedules"]),
        seed=config["seed"],
        device=config["device"],
    script:
        "../scripts/ot_protocols.py"


TARGETS.extend(
    [
        f"{RESULTS}/ot/table3.csv",
        f"{RESULTS}/ot/table3.md",
        f"{RESULTS}/ot/table3_heatmap.png",
        f"{RESULTS}/ot/fundamental.zarr",
        f"{RESULTS}/ot/paths.zarr",
        f"{RESULTS}/ot/convergence.csv",
        f"{RESULTS}/ot/convergence.png",
        f"{RESULTS}/ot/protocols.csv",
        f"{RESULTS}/ot/protocols.png",
    ]
)
