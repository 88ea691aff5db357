# Stage 1: resampling + normalisation, the localizer folds, kidney masks in the original geometry.


rule preprocess_stage1:
    input:
        case=get_case_inputs,
        statistics=res("statistics/dataset.json"),
    output:
        res("stage1/preprocessed/{case}.npz"),
    log:
        log_path("preprocess_stage1/{case}.log"),
    benchmark:
        bench_path("preprocess_stage1/{case}.tsv")
    conda:
        "../envs/imaging.yaml"
    resources:
        mem_mb=mem_mb("imaging"),
        runtime=runtime("imaging"),
    params:
        cfg=config["stage1"],
        data_dir=lambda w, input: data_dir_of(input.case),
    script:
        "../workflow_scripts/preprocess_stage1.py"


rule train_stage1:
    input:
        lambda w: [
            res(f"stage1/preprocessed/{c}.npz") for c in fold_train_cases(w.fold)
        ],
    output:
        model=res("stage1/models/fold_{fold}.pt"),
        curve=res("stage1/models/fold_{fold}_loss.csv"),
    log:
        log_path("train_stage1/fold_{fold}.log"),
    benchmark:
        bench_path("train_stage1/fold_{fold}.tsv")
    conda:
        "../envs/torch.yaml"
    threads: job_threads()
    resources:
        gpu=gpus(),
        mem_mb=mem_mb("network"),
        runtime=runtime("train"),
    params:
        cfg=config["stage1"],
    script:
        "../workflow_scripts/train_stage.py"


rule predict_stage1:
    input:
        case=get_case_inputs,
        npz=res("stage1/preprocessed/{case}.npz"),
        models=get_stage1_models,
    output:
        mask=res("stage1/predictions/{case}.nii.gz"),
        info=res("stage1/predictions/{case}.json"),
    log:
        log_path("predict_stage1/{case}.log"),
    benchmark:
        bench_path("predict_stage1/{case}.tsv")
    conda:
        "../envs/torch.yaml"
    threads: job_threads()
    resources:
        gpu=gpus(),
        mem_mb=mem_mb("network"),
        runtime=runtime("network"),
    params:
        cfg=config["stage1"],
        data_dir=lambda w, input: data_dir_of(input.case),
    script:
        "../workflow_scripts/predict_stage1.py"
