from kitscascade import fingerprint, runlog

runlog.start(snakemake.log[0])
fingerprint.dataset_statistics(
    snakemake.params.cases,
    snakemake.input.splits,
    snakemake.params.cfg,
    snakemake.params.labels,
    snakemake.output.json,
    snakemake.output.csv,
)
