# Inference only: scans of another folder (config predict_dir) through both stages with
# every fold model, and challenge-named copies (prediction_XXXXX.nii.gz).


use rule preprocess_stage1 as preprocess_stage1_external with:
    input:
        case=get_external_case_inputs,
        statistics=res("statistics/dataset.json"),
    output:
        res("external/stage1/preprocessed/{case}.npz"),
    log:
        log_path("external/preprocess_stage1/{case}.log"),
    benchmark:
        bench_path("external/preprocess_stage1/{case}.tsv")


use rule predict_stage1 as predict_stage1_external with:
    input:
        case=get_external_case_inputs,
        npz=res("external/stage1/preprocessed/{case}.npz"),
        models=get_all_stage1_models,
    output:
        mask=res("external/stage1/predictions/{case}.nii.gz"),
        info=res("external/stage1/predictions/{case}.json"),
    log:
        log_path("external/predict_stage1/{case}.log"),
    benchmark:
        bench_path("external/predict_stage1/{case}.tsv")


use rule crop_rois as crop_rois_external with:
    input:
        case=get_external_case_inputs,
        mask=res("external/stage1/predictions/{case}.nii.gz"),
        statistics=res("statistics/dataset.json"),
    output:
        npz=res("external/stage2/rois/{case}.npz"),
        info=res("external/stage2/rois/{case}.json"),
    log:
        log_path("external/crop_rois/{case}.log"),
    benchmark:
        bench_path("external/crop_rois/{case}.tsv")


use rule predict_stage2 as predict_stage2_external with:
    input:
        rois=res("external/stage2/rois/{case}.npz"),
        info=res("external/stage2/rois/{case}.json"),
        imaging=lambda w: f"{PREDICT_DIR}/{w.case}/imaging.nii.gz",
        models=get_stage2_models,
    output:
        res("external/predictions/{case}.nii.gz"),
    log:
        log_path("external/predict_stage2/{case}.log"),
    benchmark:
        bench_path("external/predict_stage2/{case}.tsv")


rule submission_file:
    input:
        res("predictions/case_{number}.nii.gz"),
    output:
        res("submission/prediction_{number}.nii.gz"),
    log:
        log_path("submission_file/prediction_{number}.log"),
    conda:
        "../envs/imaging.yaml"
    script:
        "../workflow_scripts/submission_file.py"


use rule submission_file as submission_file_external with:
    input:
        res("external/predictions/case_{number}.nii.gz"),
    output:
        res("external/submission/prediction_{number}.nii.gz"),
    log:
        log_path("external/submission_file/prediction_{number}.log"),


rule predict:
    input:
        get_predict_targets(),


rule submission:
    input:
        get_submission_targets(),
