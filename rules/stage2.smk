# Stage 2: ROI crops with the spatial prior (shared), the experiment's fold models and
# ensemble predictions in the scan's geometry.


rule crop_rois:
    input:
        unpack(get_case_inputs),
        mask=get_roi_stage1_mask,
        statistics=f"{DATA}/statistics/dataset.json",
    output:
        npz=ROI_NPZ,
        info=ROI_INFO,
    log:
        log_path("shared/{rois}/{case}.log"),
    benchmark:
        bench_path("shared/{rois}/{case}.tsv")
    conda:
        "../envs/imaging.yaml"
    resources:
        mem_mb=mem_mb("imaging"),
        runtime=runtime("imaging"),
    params:
        labels=SETTINGS["labels"],
        cfg=roi_settings,
    script:
        "../workflow_scripts/crop_rois.py"


rule train_stage2:
    input:
        get_stage2_training_inputs,
    output:
        model=S2_MODEL,
        curve=S2_CURVE,
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
        cfg=stage2_training_settings,
    script:
        "../workflow_scripts/train_stage2.py"


rule predict_stage2:
    input:
        unpack(get_rois),
        imaging=lambda w: case_inputs(w.case)["imaging"],
        models=get_stage2_ensemble,
        mask=get_prediction_stage1_mask,
        statistics=f"{DATA}/statistics/dataset.json",
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
        labels=SETTINGS["labels"],
        cfg=stage2_settings,
    script:
        "../workflow_scripts/predict_stage2.py"
