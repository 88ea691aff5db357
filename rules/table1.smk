# Table 1 of the paper as one target: every variant of config table1, trained and evaluated,
# sharing what the variants have in common (see kitscascade/experiments.py).


rule table1:
    input:
        [s for row in table1_rows() for s in row["sources"]],
    output:
        csv=f"results/{EXP}/table1.csv",
        md=f"results/{EXP}/table1.md",
    log:
        log_path(f"{EXP}/table1.log"),
    conda:
        "../envs/imaging.yaml"
    params:
        rows=table1_rows(),
        base_experiment=EXP,
    script:
        "../workflow_scripts/table1.py"
