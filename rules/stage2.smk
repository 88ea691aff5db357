# Stage 2: ROI crops with the spatial prior (shared), the experiment's fold models and
# ensemble predictions in the scan's geometry.


rule crop_rois:
    input:
        case=get_case_inputs,
        mask=get_roi_stage1_mask,
        statistics=f"{DATA}/statistics/dataset.json",
    output:
        npz=ROI_NPZ,
        info=ROI_INFO,
    log:
        log_path("shared/rois-{roi_key}/{case}.log"),
    benchmark:
        bench_path("shared/rois-{roi_key}/{case}.tsv")
    conda:
        "../envs/imaging.yaml"
    resources:
        mem_mb=mem_mb("imaging"),
        runtime=runtime("imaging"),
    params:
        cfg=roi_settings,
        data_dir=lambda w, input: data_dir_of(input.case),
        code=source_hash("roi", "normalize", "io", "steps"),
    script:
        "../workflow_scripts/crop_rois.py"


rule train_stage2:
    input:
        get_stage2_training_inputs,
    output:
        model="results/{experiment}/stage2/models/fold_{fold}.pt",
        curve="results/{experiment}/stage2/models/fold_{fold}_loss.csv",
    log:
        log_path("{experiment}/train_stage2/fold_{fold}.log"),
    benchmark:
        bench_path("{experiment}/train_stage2/fold_{fold}.tsv")
    conda:
        "../envs/torch.yaml"
    threads: job_threads()
    resources:
        gpu=gpus(),
        mem_mb=mem_mb("network"),
        runtime=runtime("train"),
    params:
        cfg=stage2_settings,
        stage=2,
        code=source_hash("data", "train", "losses", "networks", "steps"),
    script:
        "../workflow_scripts/train_stage.py"


rule predict_stage2:
    input:
        unpack(get_rois),
        imaging=lambda w: imaging(w.case),
        models=get_stage2_models,
    output:
        "results/{experiment}/predictions/{case}.nii.gz",
    log:
        log_path("{experiment}/predict_stage2/{case}.log"),
    benchmark:
        bench_path("{experiment}/predict_stage2/{case}.tsv")
    conda:
        "../envs/torch.yaml"
    threads: job_threads()
    resources:
        gpu=gpus(),
        mem_mb=mem_mb("network"),
        runtime=runtime("network"),
    params:
        cfg=stage2_settings,
        code=source_hash("infer", "networks", "train", "roi", "steps"),
    script:
        "../workflow_scripts/predict_stage2.py"
