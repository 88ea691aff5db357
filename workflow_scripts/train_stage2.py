from kitscascade import config, runlog, stage2

runlog.start(snakemake.log[0])
stage2.train_fold(
    list(snakemake.input),
    config.with_execution(snakemake.params.cfg, snakemake.config, "stage2"),
    int(snakemake.wildcards.fold),
    snakemake.output.model,
    snakemake.output.curve,
    threads=snakemake.threads,
)
