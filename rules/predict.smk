# Inference only: scans of another folder (config predict_dir) through both stages with an
# experiment's fold ensemble (inference.folds), and challenge-named copies (prediction_XXXXX.nii.gz).


use rule check_dataset as check_external with:
    input:
        [f for files in external_files().values() for f in files if f],
    output:
        "results/{experiment}/external/check.csv",
    log:
        log_path("{experiment}/external/check_dataset.log"),
    benchmark:
        bench_path("{experiment}/external/check_dataset.tsv")
    params:
        cases=external_files(),
        labels=SETTINGS["labels"],


use rule preprocess_stage1 as preprocess_stage1_external with:
    input:
        unpack(get_external_case_inputs),
        statistics=f"{DATA}/statistics/dataset.json",
        check="results/{experiment}/external/check.csv",
    output:
        "results/{experiment}/external/stage1/preprocessed/{case}.npz",
    log:
        log_path("{experiment}/external/preprocess_stage1/{case}.log"),
    benchmark:
        bench_path("{experiment}/external/preprocess_stage1/{case}.tsv")
    params:
        cfg=lambda w: resampling_settings(EXPERIMENTS[w.experiment]),
        labels=SETTINGS["labels"],


use rule predict_stage1 as predict_stage1_external with:
    input:
        unpack(get_external_case_inputs),
        npz="results/{experiment}/external/stage1/preprocessed/{case}.npz",
        models=get_experiment_stage1_ensemble,
    output:
        mask="results/{experiment}/external/stage1/predictions/{case}.nii.gz",
        labels="results/{experiment}/external/stage1/labels/{case}.nii.gz",
        info="results/{experiment}/external/stage1/predictions/{case}.json",
    log:
        log_path("{experiment}/external/predict_stage1/{case}.log"),
    benchmark:
        bench_path("{experiment}/external/predict_stage1/{case}.tsv")
    params:
        cfg=experiment_stage1_settings,
        labels=SETTINGS["labels"],


use rule crop_rois as crop_rois_external with:
    input:
        unpack(get_external_case_inputs),
        mask="results/{experiment}/external/stage1/predictions/{case}.nii.gz",
        statistics=f"{DATA}/statistics/dataset.json",
    output:
        npz="results/{experiment}/external/stage2/rois/{case}.npz",
        info="results/{experiment}/external/stage2/rois/{case}.json",
    log:
        log_path("{experiment}/external/crop_rois/{case}.log"),
    benchmark:
        bench_path("{experiment}/external/crop_rois/{case}.tsv")
    params:
        cfg=lambda w: cropping_settings(EXPERIMENTS[w.experiment]),
        labels=SETTINGS["labels"],


use rule predict_stage2 as predict_stage2_external with:
    input:
        rois="results/{experiment}/external/stage2/rois/{case}.npz",
        info="results/{experiment}/external/stage2/rois/{case}.json",
        imaging=lambda w: get_external_case_inputs(w)["imaging"],
        models=get_stage2_ensemble,
        mask="results/{experiment}/external/stage1/predictions/{case}.nii.gz",
        statistics=f"{DATA}/statistics/dataset.json",
    output:
        "results/{experiment}/external/predictions/{case}.nii.gz",
    log:
        log_path("{experiment}/external/predict_stage2/{case}.log"),
    benchmark:
        bench_path("{experiment}/external/predict_stage2/{case}.tsv")


rule submission_file:
    input:
        "results/{experiment}/predictions/case_{number}.nii.gz",
    output:
        "results/{experiment}/submission/prediction_{number}.nii.gz",
    log:
        log_path("{experiment}/submission_file/prediction_{number}.log"),
    conda:
        "../envs/imaging.yaml"
    script:
        "../workflow_scripts/submission_file.py"


use rule submission_file as submission_file_external with:
    input:
        "results/{experiment}/external/predictions/case_{number}.nii.gz",
    output:
        "results/{experiment}/external/submission/prediction_{number}.nii.gz",
    log:
        log_path("{experiment}/external/submission_file/prediction_{number}.log"),


rule export_model_zip:
    input:
        stage1=get_experiment_stage1_models,
        stage2=get_stage2_models,
        statistics=f"{DATA}/statistics/dataset.json",
        provenance="results/{experiment}/provenance.json",
    output:
        "results/{experiment}/model.zip",
    log:
        log_path("{experiment}/export_model.log"),
    conda:
        "../envs/imaging.yaml"
    params:
        config=lambda w: EXPERIMENTS[w.experiment].config,
    script:
        "../workflow_scripts/export_model.py"


rule export_model:
    input:
        f"results/{EXP}/model.zip",


if MODEL:

    rule import_model:
        input:
            MODEL,
        output:
            directory(f"{IMPORTED}/model"),
        log:
            log_path(f"{IMPORTED.removeprefix('results/')}/import_model.log"),
        localrule: True
        conda:
            "../envs/imaging.yaml"
        script:
            "../workflow_scripts/import_model.py"

    rule predict_with_model:
        input:
            imaging=lambda w: PREDICT_SCANS[w.case],
            model=f"{IMPORTED}/model",
        output:
            f"{IMPORTED}/predictions/{{case}}.nii.gz",
        log:
            log_path(f"{IMPORTED.removeprefix('results/')}/predict/{{case}}.log"),
        benchmark:
            bench_path(f"{IMPORTED.removeprefix('results/')}/predict/{{case}}.tsv")
        conda:
            "../envs/torch.yaml"
        threads: job_threads()
        resources:
            gpu=gpus(),
            mem_mb=mem_mb("network"),
            runtime=runtime("network"),
        params:
            execution=execution_settings(),
        script:
            "../workflow_scripts/predict_with_model.py"


rule predict:
    input:
        get_predict_targets(),


rule submission:
    input:
        lambda w: get_submission_targets(),
