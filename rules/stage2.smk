# Stage 2: ROI crops with the spatial prior, the fold models, ensemble predictions in the scan's geometry.


rule crop_rois:
    input:
        case=get_case_inputs,
        mask=res("stage1/predictions/{case}.nii.gz"),
        statistics=res("statistics/dataset.json"),
    output:
        npz=res("stage2/rois/{case}.npz"),
        info=res("stage2/rois/{case}.json"),
    log:
        log_path("crop_rois/{case}.log"),
    benchmark:
        bench_path("crop_rois/{case}.tsv")
    conda:
        "../envs/imaging.yaml"
    resources:
        mem_mb=mem_mb("imaging"),
        runtime=runtime("imaging"),
    params:
        cfg=config["stage2"],
        data_dir=lambda w, input: data_dir_of(input.case),
    script:
        "../workflow_scripts/crop_rois.py"


rule train_stage2:
    input:
        lambda w: [res(f"stage2/rois/{c}.npz") for c in fold_train_cases(w.fold)],
    output:
        model=res("stage2/models/fold_{fold}.pt"),
        curve=res("stage2/models/fold_{fold}_loss.csv"),
    log:
        log_path("train_stage2/fold_{fold}.log"),
    benchmark:
        bench_path("train_stage2/fold_{fold}.tsv")
    conda:
        "../envs/torch.yaml"
    threads: job_threads()
    resources:
        gpu=gpus(),
        mem_mb=mem_mb("network"),
        runtime=runtime("train"),
    params:
        cfg=config["stage2"],
    script:
        "../workflow_scripts/train_stage.py"


rule predict_stage2:
    input:
        rois=res("stage2/rois/{case}.npz"),
        info=res("stage2/rois/{case}.json"),
        imaging=lambda w: imaging(w.case),
        models=get_stage2_models,
    output:
        res("predictions/{case}.nii.gz"),
    log:
        log_path("predict_stage2/{case}.log"),
    benchmark:
        bench_path("predict_stage2/{case}.tsv")
    conda:
        "../envs/torch.yaml"
    threads: job_threads()
    resources:
        gpu=gpus(),
        mem_mb=mem_mb("network"),
        runtime=runtime("network"),
    params:
        cfg=config["stage2"],
    script:
        "../workflow_scripts/predict_stage2.py"
