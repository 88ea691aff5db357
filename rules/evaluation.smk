# Evaluation of the validation cases (official KiTS19 metric), figures, tables, provenance.


rule evaluate_case:
    input:
        unpack(get_case_inputs),
        prediction="results/{experiment}/predictions/{case}.nii.gz",
        stage1=get_stage1_info,
        rois=lambda w: get_rois(w)["info"],
    output:
        "results/{experiment}/evaluation/cases/{case}.csv",
    log:
        log_path("{experiment}/evaluate_case/{case}.log"),
    conda:
        "../envs/imaging.yaml"
    resources:
        mem_mb=mem_mb("imaging"),
        runtime=runtime("imaging"),
    params:
        labels=SETTINGS["labels"],
        cfg=SETTINGS["evaluation"],
    script:
        "../workflow_scripts/evaluate_case.py"


rule aggregate_evaluation:
    input:
        cases=expand(
            "results/{experiment}/evaluation/cases/{case}.csv",
            case=EVAL_CASES,
            allow_missing=True,
        ),
        stage1=get_stage1_evaluations,
    output:
        per_case=report(
            "results/{experiment}/evaluation/per_case.csv",
            caption="../report/per_case.rst",
            category="Evaluation",
        ),
        summary=report(
            "results/{experiment}/evaluation/summary.csv",
            caption="../report/summary.rst",
            category="Evaluation",
        ),
        stage1_per_case="results/{experiment}/evaluation/stage1_per_case.csv",
        comparison=report(
            "results/{experiment}/evaluation/stage1_vs_cascade.csv",
            caption="../report/comparison.rst",
            category="Evaluation",
        ),
    log:
        log_path("{experiment}/aggregate_evaluation.log"),
    conda:
        "../envs/imaging.yaml"
    script:
        "../workflow_scripts/aggregate_evaluation.py"


rule plot_evaluation:
    input:
        "results/{experiment}/evaluation/per_case.csv",
    output:
        report(
            "results/{experiment}/evaluation/plots/dice.png",
            caption="../report/dice.rst",
            category="Evaluation",
        ),
    log:
        log_path("{experiment}/plot_evaluation.log"),
    conda:
        "../envs/imaging.yaml"
    script:
        "../workflow_scripts/plot_evaluation.py"


rule plot_training_curve:
    input:
        get_training_curve,
    output:
        report(
            "results/{experiment}/plots/training/stage{stage}_fold_{fold}.png",
            caption="../report/training_curve.rst",
            category="Training",
        ),
    log:
        log_path("{experiment}/plot_training_curve/stage{stage}_fold_{fold}.log"),
    conda:
        "../envs/imaging.yaml"
    script:
        "../workflow_scripts/plot_training_curve.py"


rule plot_case:
    input:
        unpack(get_case_inputs),
        prediction="results/{experiment}/predictions/{case}.nii.gz",
    output:
        report(
            "results/{experiment}/evaluation/overlays/{case}.png",
            caption="../report/overlay.rst",
            category="Cases",
        ),
    log:
        log_path("{experiment}/plot_case/{case}.log"),
    conda:
        "../envs/imaging.yaml"
    params:
        labels=SETTINGS["labels"],
    script:
        "../workflow_scripts/plot_case.py"


rule collect_benchmarks:
    input:
        lambda w: experiment_results(w.experiment),
    output:
        report(
            "results/{experiment}/evaluation/benchmarks.csv",
            caption="../report/benchmarks.rst",
            category="Benchmarks",
        ),
    log:
        log_path("{experiment}/collect_benchmarks.log"),
    conda:
        "../envs/imaging.yaml"
    params:
        folders=benchmark_folders,
        benchmarks_root=bench_path(""),
        cases=CASES,
        folds=FOLDS,
        exclude=lambda w: [bench_path(f"{w.experiment}/external")],
    script:
        "../workflow_scripts/collect_benchmarks.py"


rule provenance:
    output:
        "results/{experiment}/provenance.json",
    log:
        log_path("{experiment}/provenance.log"),
    conda:
        "../envs/imaging.yaml"
    params:
        config=lambda w: EXPERIMENTS[w.experiment].config,
        shared=lambda w: {
            kind: f"{SHARED}/{folder}"
            for kind, folder in EXPERIMENTS[w.experiment].folders.items()
        },
    script:
        "../workflow_scripts/provenance.py"
