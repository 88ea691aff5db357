# Stage 1: resampling + normalisation, the localizer folds, kidney masks in the original geometry.
# All of it is shared by the experiments with the same stage-1 settings.


rule preprocess_stage1:
    input:
        unpack(get_case_inputs),
        statistics=f"{DATA}/statistics/dataset.json",
    output:
        PRE_NPZ,
    log:
        log_path("shared/{pre}/{case}.log"),
    benchmark:
        bench_path("shared/{pre}/{case}.tsv")
    conda:
        "../envs/imaging.yaml"
    resources:
        mem_mb=mem_mb("imaging"),
        runtime=runtime("imaging"),
    params:
        labels=SETTINGS["labels"],
        cfg=pre_settings,
    script:
        "../workflow_scripts/preprocess_stage1.py"


rule train_stage1:
    input:
        get_stage1_training_inputs,
    output:
        model=S1_MODEL,
        curve=S1_CURVE,
    log:
        log_path("shared/{stage1}/train/fold_{fold}.log"),
    benchmark:
        bench_path("shared/{stage1}/train/fold_{fold}.tsv")
    conda:
        "../envs/torch.yaml"
    threads: job_threads()
    resources:
        gpu=gpus(),
        mem_mb=mem_mb("network"),
        runtime=runtime("train"),
    params:
        cfg=stage1_training_settings,
    script:
        "../workflow_scripts/train_stage1.py"


rule predict_stage1:
    input:
        unpack(get_case_inputs),
        npz=get_stage1_npz,
        models=get_stage1_models,
    output:
        mask=S1_MASK,
        labels=S1_LABELS,
        info=S1_INFO,
    log:
        log_path("shared/{stage1}/predict/{case}.log"),
    benchmark:
        bench_path("shared/{stage1}/predict/{case}.tsv")
    conda:
        "../envs/torch.yaml"
    threads: job_threads()
    resources:
        gpu=gpus(),
        mem_mb=mem_mb("network"),
        runtime=runtime("network"),
    params:
        labels=SETTINGS["labels"],
        cfg=stage1_prediction_settings,
    script:
        "../workflow_scripts/predict_stage1.py"


# The training cases' masks, out-of-fold: one job per fold, named predict_stage1_fold_<k>, whose
# model predicts the cases it did not train on, loaded once (a job per case spent about half its
# time starting: importing torch and the package, loading the model). predict_stage1 predicts
# the other cases (validation, unlabeled) with the ensemble.
for _fold in FOLDS:

    rule:
        name:
            f"predict_stage1_fold_{_fold}"
        input:
            unpack(held_out_inputs(_fold)),
        output:
            mask=expand(S1_MASK, case=held_out_cases(_fold), allow_missing=True),
            labels=expand(S1_LABELS, case=held_out_cases(_fold), allow_missing=True),
            info=expand(S1_INFO, case=held_out_cases(_fold), allow_missing=True),
        log:
            log_path(f"shared/{{stage1}}/predict/fold_{_fold}.log"),
        benchmark:
            bench_path(f"shared/{{stage1}}/predict/fold_{_fold}.tsv")
        conda:
            "../envs/torch.yaml"
        threads: job_threads()
        resources:
            gpu=gpus(),
            mem_mb=mem_mb("network"),
            runtime=held_out_runtime(_fold),
        params:
            labels=SETTINGS["labels"],
            cfg=stage1_held_out_settings,
            cases=held_out_cases(_fold),
        script:
            "../workflow_scripts/predict_stage1_held_out.py"

    workflow.ruleorder(f"predict_stage1_fold_{_fold}", "predict_stage1")


rule evaluate_stage1_case:
    input:
        unpack(get_case_inputs),
        stage1_labels=S1_LABELS,
    output:
        S1_EVAL,
    log:
        log_path("shared/{stage1}/evaluate/{case}.log"),
    conda:
        "../envs/imaging.yaml"
    resources:
        mem_mb=mem_mb("imaging"),
        runtime=runtime("imaging"),
    params:
        cfg=SETTINGS["evaluation"],
        labels=SETTINGS["labels"],
        classes=lambda w: STAGE1[w.stage1].config["stage1"]["classes"],
    script:
        "../workflow_scripts/evaluate_stage1_case.py"
