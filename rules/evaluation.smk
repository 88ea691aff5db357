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
    params:
        cfg=config["evaluation"],
        data_dir=lambda w, input: data_dir_of(input.case),
    script:
        "../workflow_scripts/evaluate_case.py"


rule aggregate_evaluation:
    input:
        [res(f"evaluation/cases/{c}.csv") for c in EVAL_CASES],
    output:
        per_case=res("evaluation/per_case.csv"),
        summary=res("evaluation/summary.csv"),
    log:
        log_path("aggregate_evaluation.log"),
    conda:
        "../envs/imaging.yaml"
    script:
        "../workflow_scripts/aggregate_evaluation.py"
