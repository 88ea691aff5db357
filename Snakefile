from pathlib import Path

from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config/config.yaml"


validate(config, "config/config.schema.yaml")


report: "report/workflow.rst"


localrules:
    all,
    predict,
    submission,
    make_splits,
    shared_settings,
    aggregate_evaluation,
    collect_benchmarks,
    provenance,
    table1,
    export_model,
    export_model_zip,
    submission_file,
    submission_file_external,


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/stage1.smk"
include: "rules/stage2.smk"
include: "rules/evaluation.smk"
include: "rules/predict.smk"
include: "rules/table1.smk"


rule all:
    default_target: True
    input:
        experiment_targets(EXP),


# Each rule with a script reruns when the package code its adapter reaches changes.
code_keys(workflow.rules, Path(workflow.main_snakefile).parent / "kitscascade")
