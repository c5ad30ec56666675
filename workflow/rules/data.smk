# Rules of the 'data' stage (see README, 'Workflow'): one Zarr store per entry of config['datasets'].


wildcard_constraints:
    dataset="[A-Za-z0-9]+",
    schedule="VE|VP|subVP|EDM",


rule make_data:
    output:
        directory(f"{RESULTS}/data/{{dataset}}.zarr"),
    log:
        f"{RESULTS}/logs/data/{{dataset}}.log",
    conda:
        "../envs/dfcore.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        spec=dataset_spec,
    script:
        "../scripts/make_data.py"


TARGETS.extend(f"{RESULTS}/data/{name}.zarr" for name in config["datasets"])
