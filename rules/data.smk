# Input data (phantoms when no data_dir is given), the check of every case (which every other
# step waits for), splits and dataset statistics.


if USE_PHANTOMS:

    rule make_phantoms:
        output:
            dataset_file_list(),
            metadata=f"{DATA}/phantoms/kits.json",
        log:
            log_path(f"shared/{PLAN.experiment.folders['data']}/make_phantoms.log"),
        benchmark:
            bench_path(f"shared/{PLAN.experiment.folders['data']}/make_phantoms.tsv")
        conda:
            "../envs/imaging.yaml"
        params:
            cfg=SETTINGS["phantoms"],
            cases=dataset_files(),
        script:
            "../workflow_scripts/make_phantoms.py"


rule check_dataset:
    input:
        dataset_file_list(),
    output:
        f"{DATA}/check.csv",
    log:
        log_path(f"shared/{PLAN.experiment.folders['data']}/check_dataset.log"),
    benchmark:
        bench_path(f"shared/{PLAN.experiment.folders['data']}/check_dataset.tsv")
    conda:
        "../envs/imaging.yaml"
    resources:
        mem_mb=mem_mb("imaging"),
        runtime=runtime("imaging"),
    params:
        cases=dataset_files(),
        labels=SETTINGS["labels"],
    script:
        "../workflow_scripts/check_dataset.py"


rule make_splits:
    input:
        f"{DATA}/check.csv",
    output:
        f"{DATA}/splits.json",
    log:
        log_path(f"shared/{PLAN.experiment.folders['data']}/make_splits.log"),
    conda:
        "../envs/imaging.yaml"
    params:
        splits=PLAN.splits,
    script:
        "../workflow_scripts/make_splits.py"


rule dataset_statistics:
    input:
        cases=dataset_file_list(),
        splits=f"{DATA}/splits.json",
    output:
        json=f"{DATA}/statistics/dataset.json",
        csv=f"{DATA}/statistics/cases.csv",
    log:
        log_path(f"shared/{PLAN.experiment.folders['data']}/dataset_statistics.log"),
    benchmark:
        bench_path(f"shared/{PLAN.experiment.folders['data']}/dataset_statistics.tsv")
    conda:
        "../envs/imaging.yaml"
    resources:
        mem_mb=mem_mb("imaging"),
        runtime=runtime("imaging"),
    params:
        cfg=SETTINGS["statistics"],
        cases=dataset_files(),
        labels=SETTINGS["labels"],
    script:
        "../workflow_scripts/dataset_statistics.py"


rule shared_settings:
    output:
        "results/shared/{folder}/settings.yaml",
    log:
        log_path("shared/{folder}/shared_settings.log"),
    conda:
        "../envs/imaging.yaml"
    params:
        settings=lambda w: SHARED_SETTINGS[w.folder],
    script:
        "../workflow_scripts/shared_settings.py"
