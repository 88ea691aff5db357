# Evaluation of the validation cases with the official KiTS19 metric, and a summary.


rule evaluate_case:
    input:
        case=get_case_inputs,
        prediction=res("predictions/{case}.nii.gz"),
        stage1=res("stage1/predictions/{case}.json"),
        rois=res("stage2/rois/{case}.json"),
    output:
        res("evaluation/cases/{case}.csv"),
    log:
        log_path("evaluate_case/{case}.log"),
    conda:
        "../envs/imaging.yaml"
    resources:
        mem_mb=mem_mb("imaging"),
        runtime=runtime("imaging"),
    params:
        cfg=config["evaluation"],
        data_dir=lambda w, input: data_dir_of(input.case),
    script:
        "../workflow_scripts/evaluate_case.py"


rule aggregate_evaluation:
    input:
        [res(f"evaluation/cases/{c}.csv") for c in EVAL_CASES],
    output:
        per_case=report(
            res("evaluation/per_case.csv"),
            caption="../report/per_case.rst",
            category="Evaluation",
        ),
        summary=report(
            res("evaluation/summary.csv"),
            caption="../report/summary.rst",
            category="Evaluation",
        ),
    log:
        log_path("aggregate_evaluation.log"),
    conda:
        "../envs/imaging.yaml"
    script:
        "../workflow_scripts/aggregate_evaluation.py"


rule plot_evaluation:
    input:
        res("evaluation/per_case.csv"),
    output:
        report(
            res("evaluation/plots/dice.png"),
            caption="../report/dice.rst",
            category="Evaluation",
        ),
    log:
        log_path("plot_evaluation.log"),
    conda:
        "../envs/imaging.yaml"
    script:
        "../workflow_scripts/plot_evaluation.py"


rule plot_training_curve:
    input:
        res("stage{stage}/models/fold_{fold}_loss.csv"),
    output:
        report(
            res("plots/training/stage{stage}_fold_{fold}.png"),
            caption="../report/training_curve.rst",
            category="Training",
        ),
    log:
        log_path("plot_training_curve/stage{stage}_fold_{fold}.log"),
    conda:
        "../envs/imaging.yaml"
    script:
        "../workflow_scripts/plot_training_curve.py"


rule plot_case:
    input:
        case=get_case_inputs,
        prediction=res("predictions/{case}.nii.gz"),
    output:
        report(
            res("evaluation/overlays/{case}.png"),
            caption="../report/overlay.rst",
            category="Cases",
        ),
    log:
        log_path("plot_case/{case}.log"),
    conda:
        "../envs/imaging.yaml"
    params:
        data_dir=lambda w, input: data_dir_of(input.case),
    script:
        "../workflow_scripts/plot_case.py"


rule collect_benchmarks:
    input:
        get_benchmark_files,
    output:
        report(
            res("evaluation/benchmarks.csv"),
            caption="../report/benchmarks.rst",
            category="Benchmarks",
        ),
    log:
        log_path("collect_benchmarks.log"),
    conda:
        "../envs/imaging.yaml"
    params:
        benchmarks_root=bench_path(""),
    script:
        "../workflow_scripts/collect_benchmarks.py"
