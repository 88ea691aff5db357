# Input data (phantoms when no data_dir is given), splits and dataset statistics.


if USE_PHANTOMS:

    rule make_phantoms:
        output:
            [f for c in CASES for f in case_files(c)],
        log:
            log_path(f"shared/data-{DATA_KEY}/make_phantoms.log"),
        benchmark:
            bench_path(f"shared/data-{DATA_KEY}/make_phantoms.tsv")
        conda:
            "../envs/imaging.yaml"
        params:
            cfg=config["phantoms"],
            case_ids=CASES,
            unlabeled=UNLABELED,
            out_dir=lambda w, output: data_dir_of(output),
            code=source_hash("phantoms", "io", "steps"),
        script:
            "../workflow_scripts/make_phantoms.py"


rule make_splits:
    input:
        get_all_case_inputs,
    output:
        f"{DATA}/splits.json",
    log:
        log_path(f"shared/data-{DATA_KEY}/make_splits.log"),
    conda:
        "../envs/imaging.yaml"
    params:
        cfg=config["splits"],
        case_ids=CASES,
        data_dir=lambda w, input: data_dir_of(input),
        code=source_hash("splits", "io", "steps"),
    script:
        "../workflow_scripts/make_splits.py"


rule dataset_statistics:
    input:
        cases=get_all_case_inputs,
        splits=f"{DATA}/splits.json",
    output:
        json=f"{DATA}/statistics/dataset.json",
        csv=f"{DATA}/statistics/cases.csv",
    log:
        log_path(f"shared/data-{DATA_KEY}/dataset_statistics.log"),
    benchmark:
        bench_path(f"shared/data-{DATA_KEY}/dataset_statistics.tsv")
    conda:
        "../envs/imaging.yaml"
    resources:
        mem_mb=mem_mb("imaging"),
        runtime=runtime("imaging"),
    params:
        cfg=config["statistics"],
        case_ids=CASES,
        data_dir=lambda w, input: data_dir_of(input.cases),
        code=source_hash("fingerprint", "io", "steps"),
    script:
        "../workflow_scripts/dataset_statistics.py"
